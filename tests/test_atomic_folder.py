"""The one folder writer (``preprocessing.atomic.atomic_folder``), used for zarr groups, the
report, the embedded raw data and the production model: the umask's folder mode, a whole
swap, and nothing changed or left behind when the block fails."""

from __future__ import annotations

import os

import pytest

from preprocessing.atomic import atomic_folder, new_folder_mode


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_the_folder_gets_the_mode_of_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert new_folder_mode() == 0o777 & ~mask
        with atomic_folder(tmp_path / "out") as staging:
            (staging / "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask


def test_an_existing_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_folder(target) as staging:
        assert not (staging / "stale.txt").exists()
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no retired folder


def test_a_failed_block_leaves_the_old_folder_and_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_folder(target) as staging:
            (staging / "half.txt").write_text("new")
            raise RuntimeError("half way")
    assert (target / "kept.txt").read_text() == "old" and not (target / "half.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
