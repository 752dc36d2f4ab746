"""BENCHMARKS.md sections: rendering one leaves every other byte of the file identical."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _benchmarks_md import find_section, render_section, replace_section  # noqa: E402

# Bodies: any text without the comment syntax of markers.
bodies = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), max_size=200)

FILE = (
    "# Benchmarks\n\nintro\n\n"
    "<!-- compare_pythae:begin (rendered by bench/compare_pythae.py from bench/results/compare_pythae.json) -->\n"
    "## pythae\n| a | b |\n<!-- compare_pythae:end -->\n\n"
    "<!-- gpu:begin -->\nGPU figures\n<!-- gpu:end -->\n\ntrailing words\n"
)


def _outside(text: str, name: str) -> tuple[str, str]:
    span = find_section(text, name)
    assert span is not None
    return text[: span[0]], text[span[1]:]


@settings(deadline=None, max_examples=60)
@given(first=bodies, second=bodies, name=st.sampled_from(["claims", "gpu", "compare_pythae"]))
def test_rendering_one_section_leaves_every_other_byte_identical(tmp_path_factory, first: str, second: str,
                                                                  name: str) -> None:
    path = tmp_path_factory.mktemp("md") / "BENCHMARKS.md"
    path.write_bytes(FILE.encode())
    render_section(name, first, path, note="(rendered by a test)")
    once = path.read_bytes().decode()
    if name == "claims":  # a new section goes after everything else
        assert once.startswith(FILE.rstrip("\n"))
    else:
        assert _outside(once, name) == _outside(FILE, name)
    render_section(name, second, path)
    twice = path.read_bytes().decode()
    assert _outside(twice, name) == _outside(once, name)
    start, end = find_section(twice, name)
    assert second.strip("\n") in twice[start:end]
    for other in {"compare_pythae", "gpu"} - {name}:
        s0, e0 = find_section(FILE, other)
        s1, e1 = find_section(twice, other)
        assert twice[s1:e1] == FILE[s0:e0]


def test_a_missing_file_is_created_with_the_header(tmp_path: Path) -> None:
    path = render_section("claims", "table", tmp_path / "B.md")
    text = path.read_text()
    assert text.startswith("# Benchmarks") and "<!-- claims:begin -->\ntable\n<!-- claims:end -->" in text


def test_a_prefix_of_another_name_is_another_section() -> None:
    text = replace_section(FILE, "gp", "x")
    assert find_section(text, "gpu") == find_section(FILE, "gpu")
    assert "<!-- gp:begin -->\nx\n<!-- gp:end -->" in text


def test_bad_names_and_bodies_with_markers_are_refused() -> None:
    with pytest.raises(ValueError):
        replace_section(FILE, "Claims Section", "x")
    with pytest.raises(ValueError):
        replace_section(FILE, "gpu", "<!-- gpu:end -->")
