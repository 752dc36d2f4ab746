"""BVH and AMASS folders as trials for ``preprocessing.mocap`` (the ASF/AMC path lives there).

Every ``.bvh`` (or AMASS ``.npz``; a subject's ``shape.npz`` is skipped) under the
source folder is one trial. Labels:

* ``subject``: the first folder below the source (``<subject>/<trial>.bvh``;
  ``<dataset>/<subject>/<trial>.npz`` gives ``<dataset>/<subject>``), or for a file
  directly in the source the part of its name before the first ``_`` (as CMU names
  trials ``<subject>_<nn>``);
* ``trial``: the file name without suffix (the path inside the source, without suffix,
  where two files share a name);
* ``motion``: the row of the trial in ``labels_csv`` (columns ``trial`` and ``motion``;
  ``trial`` is the file name without suffix or the path inside the source without
  suffix), else in ``index_file``, else ``unlabelled``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from preprocessing.errors import MocapFormatError

__all__ = ["load_other_trials"]


def _subject(rel: Path) -> str:
    if len(rel.parts) > 2:
        return "/".join(rel.parts[:-1])
    if len(rel.parts) == 2:
        return rel.parts[0]
    return rel.stem.split("_", 1)[0]


def load_other_trials(folder: Path, fmt: str, params: Any, progress: bool) -> tuple[Path, list[Any], list[Path]]:
    """(folder, trials sorted by file name, every file read) of a BVH or AMASS folder."""
    from preprocessing.mocap import UNLABELLED, Trial, read_labels

    suffix = {"bvh": ".bvh", "amass": ".npz"}[fmt]
    files = [p for p in folder.rglob("*") if p.suffix.lower() == suffix and p.is_file()]
    if fmt == "amass":
        from preprocessing.amass import is_shape_file, read_amass

        files = [p for p in files if not is_shape_file(p)]
    files.sort(key=lambda p: (p.stem, str(p)))
    if not files:
        raise MocapFormatError(folder, None, f"no {suffix} files in the folder (searched recursively)")
    stems = [p.stem for p in files]
    unique = len(set(stems)) == len(stems)
    used: list[Path] = []
    index = read_labels(folder, params, used)
    iterator: Any = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc=f"mocap ({fmt}): parse", unit="file")
    trials = []
    for path in iterator:
        rel = path.relative_to(folder)
        trial = path.stem if unique else rel.with_suffix("").as_posix()
        subject = _subject(rel)
        row = index.get(trial) or index.get(rel.with_suffix("").as_posix()) or index.get(path.stem) or {}
        motion = (row.get("motion") or "").strip() or UNLABELLED
        if params.subjects and subject not in params.subjects:
            continue
        if params.motions and motion not in params.motions:
            continue
        if fmt == "bvh":
            from preprocessing.bvh import parse_bvh

            read = parse_bvh(path)
            skeleton, data, fps = read.skeleton, read.motion, read.fps
        else:
            read_a = read_amass(path)
            skeleton, data, fps = read_a.tree, read_a.motion, read_a.fps
        used.append(path)
        expected = (row.get("frames") or "").strip()
        if expected.isdigit() and int(expected) != len(data.values):
            raise MocapFormatError(path, None, f"{len(data.values)} frames, the index lists {expected} (truncated file?)")
        trials.append(Trial(subject, trial, motion, path, skeleton, data, fps))
    if not trials:
        raise MocapFormatError(folder, None, f"no trial left after selecting subjects={list(params.subjects)} motions={list(params.motions)}")
    return folder, trials, used
