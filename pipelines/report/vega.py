"""The page template that makes ``dvc plots show`` and ``dvc plots diff`` work offline.

DVC renders data plots (the training curves declared in ``dvc.yaml``) as
Vega-Lite specs inside an HTML page whose default template loads vega,
vega-lite and vega-embed from a CDN, so the page is blank without the web.
DVC fills a custom template instead when ``plots.html_template`` in
``.dvc/config`` names one (dvc-render replaces ``{plot_divs}`` and, if
present, ``{scripts}``). This template has no ``{scripts}``: the three
libraries are inlined, taken from the installed ``vl-convert-python`` package,
which embeds the official Vega builds and bundles them on request
(``vl_convert.javascript_bundle``). Nothing is fetched at any time.

The report stage writes it into ``report/`` so that it exists after
``dvc repro`` and travels with the report through the DVC cache.
"""

from __future__ import annotations

from pathlib import Path

# DVC's built-in and our .dvc/plots templates are Vega-Lite v5 specs: bundle the
# newest v5 that vl-convert ships, so vega-embed compiles them without a version warning.
VEGA_LITE_VERSION = "5.21"

# vega-embed's default menu offers "Open in Vega Editor", a web page: an offline
# page leaves it out and keeps saving as SVG/PNG and viewing the source.
_EMBED_SNIPPET = """
const offlineActions = {export: true, source: true, compiled: true, editor: false};
window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = (el, spec, opts = {}) => vegaEmbed(el, spec, {actions: offlineActions, ...opts});
"""

# dvc-render replaces these placeholders by plain string replacement over the
# whole page, the inlined libraries included.
_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<!-- vega %(vega)s, vega-lite %(vega_lite)s, vega-embed %(vega_embed)s, inlined from vl-convert-python %(vl_convert)s -->
<script>
%(bundle)s
</script>
<style>
body { font-family: sans-serif; margin: 1em; }
body > div { display: inline-block; vertical-align: top; margin: 0 1em 1em 0; }
table { border-spacing: 15px; }
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def javascript_bundle() -> str:
    """vega, vega-lite and vega-embed as one classic script that sets ``window.vegaEmbed``.

    Wrapped in a function so the bundle's top-level names cannot clash with the
    ``var spec`` each of DVC's plot divs declares.
    """
    import vl_convert

    bundle = vl_convert.javascript_bundle(_EMBED_SNIPPET, vl_version=VEGA_LITE_VERSION)
    for forbidden in ("</script", "<!--", *_PLACEHOLDERS):
        if forbidden in bundle.lower():
            raise RuntimeError(f"the vega bundle from vl-convert contains {forbidden!r}: it cannot be inlined")
    return "(function () {\n" + bundle + "\n})();"


def html_template() -> str:
    """The page template: the libraries inline, ``{plot_divs}`` where DVC puts the plots."""
    from importlib.metadata import version

    import vl_convert

    return _PAGE % {
        "vega": vl_convert.get_vega_version(),
        "vega_lite": VEGA_LITE_VERSION,
        "vega_embed": vl_convert.get_vega_embed_version(),
        "vl_convert": version("vl-convert-python"),
        "bundle": javascript_bundle(),
    }


def write_html_template(path: Path) -> Path:
    """Write the template to ``path`` and return the path.

    A plain write: the report stage builds its folder aside and swaps it in whole.
    """
    from preprocessing.atomic import atomic_write_text

    atomic_write_text(path, html_template())
    return Path(path)
