"""Raw data from their publishers: CMU motion capture (ASF/AMC) and the Surrey Face Model.

* ``fetch_cmu``: the CMU Graphics Lab Motion Capture Database from its own site,
  ``http://mocap.cs.cmu.edu/subjects/<NN>/<NN>.asf`` and ``.../<NN>/<NN>_<TT>.amc``,
  into one folder a subject, as the database lays them out. A subject's trials are
  found by asking for ``TT = 01, 02, ...`` until the server answers 404 (after the
  last trial with a known label, ``cmu_labels``). The folder's ``INDEX.tsv`` has the
  columns ``preprocessing.mocap`` reads (subject, trial, file, frames, motion, source):
  frames as parsed, motion labels from ``cmu_labels`` where known. Data: CMU Graphics
  Lab Motion Capture Database, mocap.cs.cmu.edu, created with funding from NSF
  EIA-0196217; free for research and commercial use, the raw data may not be resold.
* ``fetch_sfm``: the low-resolution shape-only Surrey Face Model (3448 vertices), its
  six expression blendshapes and the reference mesh (845 vertices), as the eos project publishes
  them in its repository's ``share/`` folder (github.com/patrikhuber/eos). Licence:
  free for non-commercial use only (see the eos README).

Every file goes through ``download.fetch_file`` (resumable, atomic, validated by our
own parsers: ``acclaim`` for ASF/AMC, ``meshes`` for the face model). Failures of
single files are collected, not raised, so one missing trial does not stop the rest.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from preprocessing.acclaim import parse_amc, parse_asf
from preprocessing.cmu_labels import MOTION_LABELS
from preprocessing.download import DownloadError, NotFoundError, atomic_write_text, fetch_file
from preprocessing.embedded import sha256_file
from preprocessing.errors import MocapFormatError, SourceError
from preprocessing.meshes import read_blendshapes, read_obj, read_sfm
from preprocessing.skeletons import Skeleton

CMU_BASE_URL = "http://mocap.cs.cmu.edu/subjects"
CMU_BASE_URL_ENV = "VHP_CMU_BASE_URL"
CMU_SUBJECTS = tuple(range(1, 145))  # the database numbers its subjects 1..144
MAX_TRIALS = 99  # trial numbers are two digits
INDEX_COLUMNS = ("subject", "trial", "file", "frames", "motion", "source")
UNLABELLED = "unlabelled"
CMU_CREDIT = "CMU Graphics Lab Motion Capture Database (mocap.cs.cmu.edu), NSF EIA-0196217"

SFM_BASE_URL = "https://raw.githubusercontent.com/patrikhuber/eos/master/share"
SFM_BASE_URL_ENV = "VHP_SFM_BASE_URL"
SFM_MODEL = "sfm_shape_3448.bin"
SFM_BLENDSHAPES = "expression_blendshapes_3448.bin"
SFM_REFERENCE = "sfm_reference.obj"
SFM_CREDIT = (
    "Surrey Face Model (Huber et al., VISAPP 2016) from the eos project, github.com/patrikhuber/eos; "
    "free for non-commercial use only"
)

OnFailure = Callable[[DownloadError], None]


@dataclass
class FetchReport:
    """What a fetch did; ``failed`` holds one error a file."""

    out: Path
    downloaded: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    failed: list[DownloadError] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # --all: subjects the server does not have

    def summary(self) -> str:
        parts = [f"{len(self.downloaded)} downloaded", f"{len(self.kept)} already there"]
        if self.absent:
            parts.append(f"{len(self.absent)} subjects not on the server")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"{self.out}: " + ", ".join(parts)


def base_url(override: str | None, env: str, default: str) -> str:
    """The base URL: the argument, else the environment variable ``env``, else ``default``."""
    return (override or os.environ.get(env) or default).rstrip("/")


def _progress_bar(enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True)


def _record(report: FetchReport, on_failure: OnFailure | None, err: DownloadError) -> None:
    report.failed.append(err)
    if on_failure is not None:
        on_failure(err)


# --------------------------------------------------------------------------- CMU


def subject_name(subject: int | str) -> str:
    """CMU's spelling of a subject number: two digits at least (``7`` -> ``07``, ``118``)."""
    try:
        number = int(subject)
    except ValueError:
        raise SourceError(str(subject), "a CMU subject is a number from 1 to 144") from None
    if not 1 <= number <= max(CMU_SUBJECTS):
        raise SourceError(str(subject), f"a CMU subject is a number from 1 to {max(CMU_SUBJECTS)}")
    return f"{number:02d}"


def last_labelled_trial(subject: str) -> int:
    """The highest trial number of ``subject`` with a known label (0 when none)."""
    numbers = [int(t.split("_", 1)[1]) for t in MOTION_LABELS if t.split("_", 1)[0] == subject]
    return max(numbers, default=0)


def _read_index_rows(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing INDEX.tsv keyed by file; unreadable or foreign files give none."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return {row["file"]: row for row in rows if row.get("file") and set(INDEX_COLUMNS) <= set(row)}


def write_index(out: Path, rows: dict[str, dict[str, str]]) -> bool:
    """Write ``out/INDEX.tsv`` for the rows whose files exist; False if nothing changed."""
    present = [row for rel, row in rows.items() if (out / rel).is_file()]
    present.sort(key=lambda r: (len(r["subject"]), r["subject"], r["trial"] != "-", r["trial"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(present)
    return atomic_write_text(out / "INDEX.tsv", buffer.getvalue())


class _Skeletons:
    """The subject's own skeleton for validating its AMC files, else any other one.

    Every CMU subject has the same bones and degrees of freedom, so another subject's
    ASF validates the joint angles of a subject whose ASF is missing.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.parsed: dict[str, Skeleton] = {}

    def for_subject(self, subject: str) -> Skeleton | None:
        if subject in self.parsed:
            return self.parsed[subject]
        if self.parsed:
            return next(iter(self.parsed.values()))
        for asf in sorted(self.out.glob("*/*.asf")):
            try:
                self.parsed[asf.stem] = parse_asf(asf)
            except MocapFormatError:
                continue
            return self.parsed[asf.stem]
        return None


def fetch_cmu(
    out: Path | str,
    subjects: Iterable[int | str] | None,
    *,
    base: str | None = None,
    progress: bool = True,
    on_failure: OnFailure | None = None,
) -> FetchReport:
    """Download the ASF and every AMC trial of ``subjects`` (None: all of CMU's) into ``out``.

    Files already in ``out`` are parsed and kept; an interrupted file resumes from its
    ``.part``. ``out/INDEX.tsv`` lists every file in the folder afterwards (also those of
    earlier runs). A subject that is missing from the server is a failure when asked
    for by number and is skipped quietly under ``subjects=None``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SourceError(out, "is not a folder")
    every = subjects is None
    names = [subject_name(s) for s in (CMU_SUBJECTS if every else subjects)]
    names = list(dict.fromkeys(names))
    if not names:
        raise SourceError(out, "no subjects given (name some, or ask for all)")
    root = base_url(base, CMU_BASE_URL_ENV, CMU_BASE_URL)
    out.mkdir(parents=True, exist_ok=True)
    report = FetchReport(out)
    rows = _read_index_rows(out / "INDEX.tsv")
    skeletons = _Skeletons(out)
    bar = _progress_bar(progress, "cmu")
    try:
        for subject in names:
            _fetch_subject(subject, out, root, every, skeletons, rows, report, on_failure, bar)
    finally:
        if bar is not None:
            bar.close()
        write_index(out, rows)
    return report


def _amc_validator(skeleton: Skeleton | None, subject: str, out: Path) -> Callable[[Path], int]:
    """Parse an AMC against ``skeleton``; returns its frame count."""

    def validate(path: Path) -> int:
        if skeleton is None:
            raise MocapFormatError(path, None, f"no skeleton to check it against ({subject}.asf is missing and no other ASF is in {out})")
        return len(parse_amc(path, skeleton).values)

    return validate


def _fetch_subject(
    subject: str,
    out: Path,
    root: str,
    quiet_if_absent: bool,
    skeletons: _Skeletons,
    rows: dict[str, dict[str, str]],
    report: FetchReport,
    on_failure: OnFailure | None,
    bar: Any,
) -> None:
    folder = out / subject
    url = f"{root}/{subject}/{subject}.asf"
    missing_asf: NotFoundError | None = None  # reported once we know the subject exists at all
    try:
        got = fetch_file(url, folder / f"{subject}.asf", parse_asf, progress=bar)
    except NotFoundError as err:
        missing_asf = err
        if not quiet_if_absent:
            _record(report, on_failure, err)
    except DownloadError as err:
        _record(report, on_failure, err)
    else:
        skeletons.parsed[subject] = got.checked
        (report.downloaded if got.downloaded else report.kept).append(got.path)
        rows[f"{subject}/{subject}.asf"] = {
            "subject": subject, "trial": "-", "file": f"{subject}/{subject}.asf",
            "frames": "-", "motion": "skeleton (ASF)", "source": url,
        }

    last_known = last_labelled_trial(subject)
    for number in range(1, MAX_TRIALS + 1):
        trial = f"{subject}_{number:02d}"
        rel = f"{subject}/{trial}.amc"
        url = f"{root}/{rel}"
        try:
            got = fetch_file(url, out / rel, _amc_validator(skeletons.for_subject(subject), subject, out), progress=bar)
        except NotFoundError as err:
            if number == 1 and missing_asf is not None and quiet_if_absent:
                report.absent.append(subject)  # neither skeleton nor trial: not in the database
                missing_asf = None
                break
            if number == 1 or number <= last_known:
                _record(report, on_failure, err)  # a trial that should be there is not
                continue
            break  # past the last trial
        except DownloadError as err:
            _record(report, on_failure, err)
            continue
        (report.downloaded if got.downloaded else report.kept).append(got.path)
        rows[rel] = {
            "subject": subject, "trial": trial, "file": rel, "frames": str(got.checked),
            "motion": MOTION_LABELS.get(trial, UNLABELLED), "source": url,
        }
    if missing_asf is not None and quiet_if_absent:
        _record(report, on_failure, missing_asf)  # the subject exists, its skeleton does not
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # nothing of this subject arrived


# --------------------------------------------------------------------------- Surrey Face Model


def fetch_sfm(
    out: Path | str,
    *,
    base: str | None = None,
    progress: bool = True,
    on_failure: OnFailure | None = None,
) -> FetchReport:
    """Download the Surrey Face Model shape model, blendshapes and reference mesh into ``out``.

    Each file is checked by our readers: the model by ``read_sfm``, the blendshapes
    by ``read_blendshapes`` against the model's vertex count, the reference mesh (the
    shape the model family was built from, at its lowest resolution) by ``read_obj``.
    ``out/SOURCES.json`` records the URL and sha256 of each file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SourceError(out, "is not a folder")
    root = base_url(base, SFM_BASE_URL_ENV, SFM_BASE_URL)
    out.mkdir(parents=True, exist_ok=True)
    report = FetchReport(out)
    vertices: list[int] = []  # the model's vertex count, once it is known

    def check_model(path: Path) -> int:
        model = read_sfm(path)
        return len(model.mean)

    def check_blendshapes(path: Path) -> int:
        return len(read_blendshapes(path, n_vertices=vertices[0] if vertices else None).names)

    def check_reference(path: Path) -> int:
        return len(read_obj(path).vertices)  # the lowest-resolution level: fewer vertices than the model

    sources: list[dict[str, str]] = []
    bar = _progress_bar(progress, "sfm")
    try:
        for name, check in ((SFM_MODEL, check_model), (SFM_BLENDSHAPES, check_blendshapes), (SFM_REFERENCE, check_reference)):
            url = f"{root}/{name}"
            try:
                got = fetch_file(url, out / name, check, progress=bar)
            except DownloadError as err:
                _record(report, on_failure, err)
                continue
            if name == SFM_MODEL:
                vertices.append(got.checked)
            (report.downloaded if got.downloaded else report.kept).append(got.path)
            sources.append({"file": name, "url": url, "sha256": sha256_file(got.path)})
    finally:
        if bar is not None:
            bar.close()
    if sources:
        record = {"files": sources, "credit": SFM_CREDIT}
        atomic_write_text(out / "SOURCES.json", json.dumps(record, indent=2) + "\n")
    return report
