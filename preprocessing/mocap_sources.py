"""Where trials come from, for ``preprocessing.mocap``: the trial record, the labels (index
and CSV), the format of a source folder, and BVH and AMASS folders as trials (the ASF/AMC
path lives in ``preprocessing.mocap``, which imports this module; never the other way).

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

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from preprocessing.errors import MocapFormatError, SourceError

if TYPE_CHECKING:
    from preprocessing.acclaim import Motion

__all__ = ["Trial", "UNLABELLED", "read_labels", "detect_format", "load_other_trials"]

UNLABELLED = "unlabelled"
SOURCE_FPS = 120  # every CMU AMC trial


@dataclass(frozen=True)
class Trial:
    subject: str
    trial: str
    motion: str
    path: Path
    skeleton: Any  # skeletons.Skeleton, skeletons.BvhSkeleton or amass.SmplTree
    motion_data: Motion
    fps: float = SOURCE_FPS


def _resolve(base: Path, name: str) -> Path:
    path = Path(name)
    if path.is_absolute():
        return path
    return base / path if (base / path).exists() else path


def _read_index(path: Path, delimiter: str = "\t") -> dict[str, dict[str, str]]:
    """INDEX.tsv (or labels CSV) rows keyed by trial name (rows without a trial, e.g. skeletons, skipped)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise SourceError(path, f"cannot read index ({err})") from err
    if rows and not {"trial", "motion"} <= set(rows[0]):
        raise SourceError(path, "index needs at least the columns 'trial' and 'motion'")
    out = {}
    for row in rows:
        trial = (row.get("trial") or "").strip()
        if trial and trial != "-":
            out[trial] = row
    return out


def read_labels(folder: Path, params: Any, used: list[Path]) -> dict[str, dict[str, str]]:
    """Rows of ``index_file`` (when present) updated by those of ``labels_csv`` (when set), by trial
    (``params``: a ``mocap.MocapParams``)."""
    index: dict[str, dict[str, str]] = {}
    if params.index_file and (folder / params.index_file).is_file():
        index = _read_index(folder / params.index_file)
        used.append(folder / params.index_file)
    if params.labels_csv:
        path = _resolve(folder, params.labels_csv)
        if not path.is_file():
            raise SourceError(path, "labels_csv does not exist")
        for trial, row in _read_index(path, ",").items():
            index[trial] = {**index.get(trial, {}), **{k: v for k, v in row.items() if k and v}}
        used.append(path)
    return index


def detect_format(folder: Path, wanted: str) -> str:
    """The motion format of a source folder: ``wanted``, or for 'auto' the one kind of file in it."""
    if wanted != "auto":
        return wanted
    found = {fmt: any(p.suffix.lower() == ext for p in folder.rglob("*")) for fmt, ext in (("acclaim", ".amc"), ("bvh", ".bvh"), ("amass", ".npz"))}
    kinds = [k for k, v in found.items() if v]
    if len(kinds) == 1:
        return kinds[0]
    if not kinds:
        raise MocapFormatError(folder, None, "no AMC, BVH or AMASS .npz files in the folder (searched recursively)")
    raise MocapFormatError(folder, None, f"the folder holds {' and '.join(kinds)} files: set prepare_mocap.format to one of them")


def _subject(rel: Path) -> str:
    if len(rel.parts) > 2:
        return "/".join(rel.parts[:-1])
    if len(rel.parts) == 2:
        return rel.parts[0]
    return rel.stem.split("_", 1)[0]


def load_other_trials(folder: Path, fmt: str, params: Any, progress: bool) -> tuple[Path, list[Any], list[Path]]:
    """(folder, trials sorted by file name, every file read) of a BVH or AMASS folder."""
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
