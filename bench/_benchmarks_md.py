"""BENCHMARKS.md as independent sections, each between its own markers and rendered from its JSON.

A section reads

    <!-- NAME:begin (rendered by SCRIPT from JSON) -->
    ...
    <!-- NAME:end -->

`render_section(NAME, body)` replaces exactly the bytes from that section's begin marker to
its end marker, or appends the section when the file has none; every other byte of the
file stays as it was (tests/test_benchmarks_md.py). A script owns its NAME and nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

from preprocessing.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures measured by the scripts in `bench/`; each section is rendered from its JSON.\n"
_NAME = re.compile(r"[a-z0-9_]+")


def markers(name: str, note: str = "") -> tuple[str, str]:
    """(begin, end) marker lines of a section; the note (e.g. what renders it) sits in the begin marker."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a section name is lower-case letters, digits and '_', got {name!r}")
    if "-->" in note:
        raise ValueError("a section note cannot contain '-->'")
    return f"<!-- {name}:begin{' ' + note if note else ''} -->", f"<!-- {name}:end -->"


def find_section(text: str, name: str) -> tuple[int, int] | None:
    """(start, end) offsets of a section's bytes, begin marker to end marker inclusive, or None."""
    markers(name)  # checks the name
    begin = re.search(rf"<!-- {re.escape(name)}:begin(?: [^\n]*?)? -->", text)
    if begin is None:
        return None
    end_mark = f"<!-- {name}:end -->"
    end = text.find(end_mark, begin.end())
    return None if end < 0 else (begin.start(), end + len(end_mark))


def replace_section(text: str, name: str, body: str, note: str = "") -> str:
    """text with section `name` holding `body` (replaced in place, or appended after the rest)."""
    begin, end = markers(name, note)
    if f"<!-- {name}:begin" in body or end in body:
        raise ValueError(f"the body of section {name!r} contains its own markers")
    block = f"{begin}\n{body.strip(chr(10))}\n{end}"
    span = find_section(text, name)
    if span is not None:
        return text[: span[0]] + block + text[span[1]:]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def render_section(name: str, body: str, path: Path = MARKDOWN, note: str = "") -> Path:
    """Write section `name` of the markdown file at `path` (created with a header if missing); atomic."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8") if path.exists() else HEADER  # bytes as they are: no newline translation
    new = replace_section(text, name, body, note)
    atomic_write_text(path, new)  # UTF-8 bytes as they are: no newline translation
    return path
