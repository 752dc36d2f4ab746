"""`dvc plots show` and `dvc plots diff` draw the training curves offline.

A small DVC project in a temporary folder gets this project's top-level
``plots:`` section, its ``.dvc/config`` and ``.dvc/plots`` templates, the page
template the report stage writes (``pipelines.report.vega``) and the curves.tsv files
of two runs: one committed, one in the workspace. The real DVC commands write
the page; headless Chromium, with every host name unresolvable, renders it and
dumps the DOM, which must hold an SVG line mark with points for every curve plot
(and, for the diff, a legend naming both runs). As a control, DVC's default page
(vega from a CDN) renders no plot under the same browser.

Skips where no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# A script loaded from the web; the inlined bundle itself mentions URLs in strings.
WEB_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)
RUNS = {"before": 0, "after": 1}  # committed run, then the workspace's


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def data_plots(plots: list) -> dict[str, list[str]]:
    """Plot id -> the curves.tsv files it reads, for the data plots of a top-level plots section."""
    out = {}
    for entry in plots:
        if isinstance(entry, dict):
            (plot_id, props), = entry.items()
            if isinstance(props, dict) and isinstance(props.get("y"), dict):
                out[plot_id] = list(props["y"])
    return out


def curves_rows(run: int, path: str) -> list[list[float]]:
    """Curves of one made-up run, shaped like training's: C_hat falls to kappa^2, lambda moves by factors."""
    kappa_sq = 0.05 + 0.1 * (len(path) % 3)
    tau = 300.0 * (run + 1) * (1.5 if "iwae" in path else 1.0)
    rows, c_hat, lambda_ = [], 1.0, 1.0
    for step in range(0, 2001, 10):
        c = kappa_sq * (1.0 + 2.0 * math.exp(-step / tau)) + 0.002 * math.sin(step)
        c_hat = 0.9 * c_hat + 0.1 * c
        if step % 100 == 0:
            lambda_ *= (1.1 + 0.1 * run) if c_hat > kappa_sq else 0.9
        nll, regulariser = 50.0 * c, 3.0 + run
        constraint = c - kappa_sq if step >= 200 else 0.0  # kappa: auto is set after a first phase
        rows.append([step, step // 100, 1e-3, nll + regulariser, c, nll, regulariser, lambda_, c_hat,
                     constraint, -(nll + regulariser), float(step > 1000)])
    return rows


def val_rows(run: int, path: str) -> list[list[float]]:
    """val_curves.tsv of one made-up run: the training ELBO keeps rising, the val ELBO turns down (overfitting)."""
    rows = []
    for step in range(200, 20201, 100):
        train = -80.0 + 30.0 * (1.0 - math.exp(-step / 4000.0)) + run
        val = train - 5.0 - 1e-3 * step * (1.5 if "iwae" in path else 1.0)
        rows.append([step, train, val, 0.4 - 1e-5 * step, 0.5 + 1e-6 * step, float(step <= 8000)])
    return rows


def curves_file(run_index: int, path: str) -> str:
    """A made-up file of the kind the path names: the training curves or the train/val curves."""
    from pipelines.train.outputs import curves_tsv
    from pipelines.train.validation import val_tsv

    if Path(path).name == "val_curves.tsv":
        return val_tsv(val_rows(run_index, path))
    return curves_tsv(curves_rows(run_index, path))


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def dvc_plots(project: Path, env: dict[str, str], out: str, *args: str) -> Path:
    """Run ``dvc plots <args>`` writing into ``project/out``; return the page."""
    proc = run([sys.executable, "-m", "dvc", "plots", *args, "-o", out], project, env)
    assert "unexpected error" not in proc.stderr, proc.stderr
    return project / out / "index.html"


def render(browser: str, page: Path, tmp: Path) -> str:
    """The DOM of ``page`` after headless Chromium ran its scripts, with no host name resolving."""
    profile = tmp / "chromium-profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
           "--window-size=1400,2000", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def plot_svg(dom: str, plot_id: str) -> str:
    """The SVG vega-embed drew in the div of one plot ('' if none)."""
    from dvc_render.base import Renderer

    div_id = re.escape(Renderer.remove_special_chars(plot_id))
    match = re.search(rf'<div id="{div_id}"[^>]*>(.*?)</svg>', dom, re.DOTALL)
    return match.group(1) if match else ""


def line_points(svg: str) -> int:
    """Points in the longest path of the SVG's line marks."""
    counts = [0]
    for group in re.findall(r'<g class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', svg, re.DOTALL):
        for d in re.findall(r'<path[^>]*\bd="([^"]*)"', group):
            counts.append(len(re.findall(r"[ML]", d)))
    return max(counts)


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        pytest.skip("no headless Chromium to render the page (Debian: apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, list[str]]]:
    """A git + DVC project with this project's plots set-up and two runs of curves."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    import numpy as np
    from matplotlib.image import imsave

    from pipelines.report.vega import write_html_template

    root = tmp_path_factory.mktemp("plots")
    project = root / "project"
    project.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(root),
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
    run(["git", "init", "-q"], project, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], project, env)
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, allow_unicode=True, sort_keys=False))
    # What the report stage leaves: its PNGs and the page template .dvc/config names.
    (project / "report" / "plots").mkdir(parents=True)
    imsave(project / "report" / "plots" / "curves.png", np.linspace(0, 1, 48).reshape(4, 4, 3))
    write_html_template(project / "report" / "plots_template.html")
    curves = data_plots(plots)
    assert curves, "dvc.yaml declares no data plots"
    files = sorted({f for fs in curves.values() for f in fs})
    for name, run_index in RUNS.items():
        for f in files:
            (project / f).parent.mkdir(parents=True, exist_ok=True)
            (project / f).write_text(curves_file(run_index, f))
        if name == "before":
            run(["git", "add", "-A"], project, env)
            run(["git", "commit", "-q", "-m", "the run before"], project, env)
    return project, env, curves


@pytest.mark.parametrize("args, revs", [(["show"], ["workspace"]), (["diff", "HEAD"], ["workspace", "HEAD"])],
                         ids=["show", "diff"])
def test_dvc_plots_render_offline(browser, project, tmp_path: Path, args: list[str], revs: list[str]) -> None:
    root, env, curves = project
    page = dvc_plots(root, env, f"plots-{args[0]}", *args)
    html = page.read_text(encoding="utf-8")
    assert not WEB_SCRIPT.search(html), f"dvc plots {args[0]}: the page loads a script from the web"
    dom = render(browser, page, tmp_path)
    for plot_id in curves:
        svg = plot_svg(dom, plot_id)
        assert svg, f"dvc plots {args[0]}: nothing drawn for {plot_id}"
        assert line_points(svg) >= 100, f"dvc plots {args[0]}: {plot_id} has no curve"
        for rev in revs:
            assert f">{rev}</text>" in svg, f"dvc plots {args[0]}: {plot_id} does not show run {rev}"
    assert re.search(r'<img src="static/[^"]*curves\.png"', dom), "the report's PNGs left the page"


def test_default_dvc_page_is_blank_offline(browser, project, tmp_path: Path) -> None:
    """The control: the same plots in DVC's own page (vega from a CDN) draw nothing here."""
    from dvc_render.html import PAGE_HTML

    root, env, curves = project
    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML, encoding="utf-8")
    page = dvc_plots(root, env, "plots-default", "show", "--html-template", str(default))
    assert WEB_SCRIPT.search(page.read_text(encoding="utf-8"))
    dom = render(browser, page, tmp_path)
    assert not any(line_points(plot_svg(dom, plot_id)) for plot_id in curves)
