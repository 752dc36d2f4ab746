"""CMU motion capture -> ``mocap.zarr``: joint angles per frame, labelled, split by trial.

Based on the CMU Graphics Lab Motion Capture Database in its Acclaim ASF/AMC form
(reader in ``preprocessing.acclaim``) as used for the 2-D latent spaces of motion in
Klushyn et al., "Learning Hierarchical Priors in VAEs" (NeurIPS 2019): every frame is a
vector of joint angles (62 channels for a CMU skeleton: root translation and rotation,
and the rotations of 29 moving bones), here optionally without the root translation
and/or orientation, as standardised degrees or as sin/cos pairs.

Stage ``prepare_mocap``: ``prepare(MocapParams, out)``. The split unit is a trial, or a
segment of ``segment_frames`` frames when trials are cut (the embedded default is one
long trial); no frame of a test unit is in train. Statistics for standardisation come
from the training split only and are stored in the attributes, together with the
skeleton, so ``preprocessing.poses.features_to_positions`` can draw stick figures from the
group alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from preprocessing.acclaim import parse_amc, parse_asf
from preprocessing.embedded import fetch_embedded_mocap, sha256_file
from preprocessing.errors import MocapFormatError
from preprocessing.mocap_sources import (  # noqa: F401  (Trial, UNLABELLED re-exported: the trial record)
    UNLABELLED,
    Trial,
    _resolve,
    detect_format,
    load_other_trials,
    read_labels,
)
from preprocessing.poses import encode
from preprocessing.skeletons import ROTATION_DOFS, TRANSLATION_DOFS, Skeleton
from preprocessing.store import write_dataset

__all__ = [
    "MocapParams",
    "prepare",
    "load_trials",
    "Trial",
]

FORMATS = ("auto", "acclaim", "bvh", "amass")


@dataclass(frozen=True)
class MocapParams:
    """The ``prepare_mocap`` section of params.yaml."""

    source: str  # folder of ASF/AMC, BVH or AMASS .npz files (searched recursively) or 'embedded'
    format: Literal["auto", "acclaim", "bvh", "amass"]  # 'auto': by the files found in source
    embedded_dir: str  # where 'embedded' is fetched to
    index_file: str  # inside source; used when present ('' = none)
    fallback_asf: str  # skeleton for subjects without <subject>.asf (path inside source or absolute)
    subjects: tuple[str, ...]  # keep only these subjects (empty: all)
    motions: tuple[str, ...]  # keep only these motion labels (empty: all)
    drop_root_translation: bool
    keep_root_orientation: bool
    angle_encoding: Literal["degrees", "sincos"]
    frame_step: int  # 120 fps -> 30 fps
    target_fps: float  # 0: keep the source rate (frame_step applies); > 0: resample every trial to this rate
    labels_csv: str  # CSV with columns 'trial' and 'motion' (path inside source or absolute; '' = none)
    segment_frames: int  # 0: whole trials are split units; > 0: segments of this many (subsampled) frames
    test_fraction: float
    val_fraction: float  # share of the remaining (training) units held out as 'val'; 0: none
    seed: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {self.frame_step}")
        if self.segment_frames < 0:
            raise ValueError(f"segment_frames must be >= 0, got {self.segment_frames}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not (self.target_fps == 0 or 0 < self.target_fps <= 1e5) or self.target_fps != self.target_fps:
            raise ValueError(f"target_fps must be 0 (keep the source rate) or a rate in (0, 1e5], got {self.target_fps}")
        if self.target_fps and self.frame_step != 1:
            raise ValueError(f"target_fps = {self.target_fps} resamples every trial: set frame_step to 1 (got {self.frame_step})")
        if self.angle_encoding not in ("degrees", "sincos"):
            raise ValueError(f"angle_encoding must be 'degrees' or 'sincos', got {self.angle_encoding!r}")


# --------------------------------------------------------------------------- sources


def _subject_of(amc: Path) -> str:
    return amc.stem.split("_", 1)[0]


def load_trials(params: MocapParams, progress: bool = False) -> tuple[Path, list[Trial], list[Path]]:
    """Parse every AMC under the source folder with its subject's skeleton.

    Returns the source folder, the trials (sorted by file name), and every file read.
    """
    if params.source == "embedded":
        folder = fetch_embedded_mocap(params.embedded_dir)
    else:
        folder = Path(params.source)
    if not folder.is_dir():
        raise MocapFormatError(folder, None, "source folder does not exist")
    fmt = detect_format(folder, params.format)
    if fmt != "acclaim":
        return load_other_trials(folder, fmt, params, progress)
    amcs = sorted((p for p in folder.rglob("*") if p.suffix.lower() == ".amc" and p.is_file()), key=lambda p: (p.stem, str(p)))
    if not amcs:
        raise MocapFormatError(folder, None, "no AMC files in the folder (searched recursively)")
    asfs: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() == ".asf" and p.is_file():
            asfs.setdefault(p.stem, []).append(p)
    used: list[Path] = []
    index = read_labels(folder, params, used)
    fallback = _resolve(folder, params.fallback_asf) if params.fallback_asf else None

    skeletons: dict[Path, Skeleton] = {}
    trials: list[Trial] = []
    iterator: Any = amcs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(amcs, desc="mocap: parse", unit="file")
    for amc in iterator:
        trial = _read_trial(amc, params, index, folder, asfs, fallback, skeletons, used)
        if trial is not None:
            trials.append(trial)
    if not trials:
        raise MocapFormatError(folder, None, f"no trial left after selecting subjects={list(params.subjects)} motions={list(params.motions)}")
    return folder, trials, used


def _read_trial(
    amc: Path,
    params: MocapParams,
    index: dict[str, dict[str, str]],
    folder: Path,
    asfs: dict[str, list[Path]],
    fallback: Path | None,
    skeletons: dict[Path, Skeleton],
    used: list[Path],
) -> Trial | None:
    """One AMC with its subject's skeleton (parsed once), or None when not selected."""
    subject, trial = _subject_of(amc), amc.stem
    row = index.get(trial, {})
    motion = (row.get("motion") or "").strip() or UNLABELLED
    if params.subjects and subject not in params.subjects:
        return None
    if params.motions and motion not in params.motions:
        return None
    local = amc.parent / f"{subject}.asf"
    if local.is_file():
        asf = local
    elif subject in asfs:
        asf = asfs[subject][0]
    elif fallback is not None:
        asf = fallback
    else:
        raise MocapFormatError(amc, None, f"no skeleton {subject}.asf in {folder} and no fallback_asf set")
    if asf not in skeletons:
        skeletons[asf] = parse_asf(asf)
        used.append(asf)
    motion_data = parse_amc(amc, skeletons[asf])
    used.append(amc)
    expected = (row.get("frames") or "").strip()
    if expected.isdigit() and int(expected) != len(motion_data.values):
        raise MocapFormatError(amc, None, f"{len(motion_data.values)} frames, the index lists {expected} (truncated file?)")
    return Trial(subject, trial, motion, amc, skeletons[asf], motion_data)


# --------------------------------------------------------------------------- features


def feature_channels(dof_names: list[str], params: Mapping[str, Any], root: str = "root") -> list[str]:
    """The channels kept as features, in skeleton order (``root``: the name of the root joint)."""
    out = []
    for name in dof_names:
        bone, dof = name.rsplit(".", 1)
        if bone == root and dof in TRANSLATION_DOFS and params["drop_root_translation"]:
            continue
        if bone == root and dof in ROTATION_DOFS and not params["keep_root_orientation"]:
            continue
        out.append(name)
    return out


def _standardise(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    # Constant channels (e.g. CMU's clavicles, fingers) keep std 1 so they stay invertible.
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, std


def _split_units(units: list[tuple[str, str]], test_fraction: float, seed: int) -> np.ndarray:
    """Test mask over split units, stratified by motion label, seeded.

    ``units`` are (unit id, motion). Each motion contributes round(fraction * count)
    units to test (at least one overall, never all)."""
    rng = np.random.default_rng(seed)
    motions = np.array([m for _, m in units])
    test = np.zeros(len(units), dtype=bool)
    for motion in sorted(set(motions)):
        members = np.flatnonzero(motions == motion)
        k = int(round(test_fraction * len(members)))
        if k:
            test[rng.choice(members, size=k, replace=False)] = True
    if not test.any():
        test[rng.integers(len(units))] = True
    if test.all():
        test[rng.choice(np.flatnonzero(test))] = False
    return test


def prepare(params: MocapParams, out: Path | str, progress: bool = True) -> None:
    """Parse the source, build features and labels, split, standardise and write ``out``."""
    out = Path(out)
    folder, trials, used = load_trials(params, progress=progress)
    reference = trials[0].skeleton
    dof_names = reference.dof_names()
    for t in trials:
        if t.skeleton.dof_names() != dof_names:
            raise MocapFormatError(t.skeleton.source, None, f"degrees of freedom differ from {reference.source}; one data set needs one channel layout")

    p = asdict(params)
    channels = feature_channels(dof_names, p, getattr(reference, "root", "root"))
    col = [dof_names.index(c) for c in channels]
    fps = _output_fps(trials, params)
    picks = [_frame_picks(len(t.motion_data.values), t.fps, params) for t in trials]
    # Split units: (trial index, first frame, last frame) over subsampled frames.
    units: list[tuple[int, int, int]] = []
    frames_per_trial = []
    for ti, t in enumerate(trials):
        n = len(picks[ti])
        frames_per_trial.append(n)
        if params.segment_frames:
            for begin in range(0, n, params.segment_frames):
                units.append((ti, begin, min(begin + params.segment_frames, n)))
        else:
            units.append((ti, 0, n))
    if len(units) < 2:
        raise MocapFormatError(folder, None, f"{len(units)} split unit(s): need at least 2 to split train/test (set segment_frames > 0 to cut trials)")
    test_unit = _split_units([(str(u), trials[u[0]].motion) for u in units], params.test_fraction, params.seed)
    # 'val': whole units of the training side, stratified the same way, for model selection
    val_unit = np.zeros(len(units), dtype=bool)
    train_idx = np.flatnonzero(~test_unit)
    if params.val_fraction > 0:
        if len(train_idx) < 2:
            raise MocapFormatError(folder, None, f"{len(train_idx)} training unit(s): need at least 2 to hold out a val split (set val_fraction: 0 or segment_frames > 0)")
        held = _split_units([(str(units[i]), trials[units[i][0]].motion) for i in train_idx], params.val_fraction, params.seed + 1)
        val_unit[train_idx[held]] = True

    classes = {
        "motion": sorted({t.motion for t in trials}),
        "subject": sorted({t.subject for t in trials}),
        "trial": sorted({t.trial for t in trials}),
    }
    parts: dict[str, dict[str, list[np.ndarray]]] = {s: {k: [] for k in ("x", "motion", "subject", "trial", "frame")} for s in ("train", "test") + (("val",) if val_unit.any() else ())}
    for (ti, begin, end), is_test, is_val in zip(units, test_unit, val_unit):
        t = trials[ti]
        degrees = t.motion_data.in_degrees()[picks[ti][begin:end]][:, col]
        raw, feature_names = encode(degrees, channels, params.angle_encoding)
        split = parts["test" if is_test else "val" if is_val else "train"]
        n = len(raw)
        split["x"].append(raw)
        split["motion"].append(np.full(n, classes["motion"].index(t.motion), dtype=np.int64))
        split["subject"].append(np.full(n, classes["subject"].index(t.subject), dtype=np.int64))
        split["trial"].append(np.full(n, classes["trial"].index(t.trial), dtype=np.int64))
        split["frame"].append(picks[ti][begin:end])
    joined = {s: {k: np.concatenate(v) for k, v in d.items()} for s, d in parts.items()}
    for split, d in joined.items():
        bad = ~np.isfinite(d["x"]).all(axis=1)
        if bad.any():
            raise MocapFormatError(folder, None, f"non-finite feature in {split} sample {int(np.flatnonzero(bad)[0])}")
    mean, std = _standardise(joined["train"]["x"])
    arrays: dict[str, np.ndarray] = {}
    for split, d in joined.items():
        arrays[f"{split}/x"] = ((d["x"] - mean) / std).astype(np.float32)
        for key in ("motion", "subject", "trial", "frame"):
            arrays[f"{split}/{key}"] = d[key]

    sources = [{"path": str(f.relative_to(folder)) if f.is_relative_to(folder) else str(f), "sha256": sha256_file(f)} for f in used]
    test_trials = sorted({trials[u[0]].trial for u, is_test in zip(units, test_unit) if is_test})
    attrs = {
        "dataset": "mocap",
        "likelihood": "gaussian",
        "x_shape": [len(feature_names)],
        "feature_names": feature_names,
        "units": {
            "angles": "degrees" if params.angle_encoding == "degrees" else "sin/cos of the angle",
            "translation": _TRANSLATION_UNIT[_format_of(reference)],
            "frame": f"index of the frame in its trial at the source rate ({_rates(trials)} fps; 0-based)",
            "fps": fps,
        },
        "normalisation": {"kind": "standardise", "mean": mean.tolist(), "std": std.tolist(), "statistics": "train split"},
        "labels": {
            "motion": {"kind": "categorical", "classes": classes["motion"]},
            "subject": {"kind": "categorical", "classes": classes["subject"]},
            "trial": {"kind": "categorical", "classes": classes["trial"]},
            "frame": {"kind": "continuous", "unit": f"frame index in trial ({_rates(trials)} fps, 0-based)"},
        },
        "sources": sources,
        "params": p,
        "stand_in": params.source == "embedded",
        "source": "embedded" if params.source == "embedded" else "folder",
        ("skeleton" if getattr(reference, "drawable", True) else "kinematic_tree"): reference.to_dict(),
        "motion_format": _format_of(reference),
        "channels": channels,
        "angle_encoding": params.angle_encoding,
        "split": {
            "unit": "segment" if params.segment_frames else "trial",
            "n_units": len(units),
            "n_test_units": int(test_unit.sum()),
            "test_trials": test_trials,
            "n_val_units": int(val_unit.sum()),
            "val_trials": sorted({trials[u[0]].trial for u, v in zip(units, val_unit) if v}),
            "val_fraction": params.val_fraction,
        },
        "counts": {
            "trials": len(trials),
            "frames_source": int(sum(len(t.motion_data.values) for t in trials)),
            "frames_written": int(sum(frames_per_trial)),
        },
        "credit": _CREDIT[_format_of(reference)],
    }
    write_dataset(out, arrays, attrs)


_TRANSLATION_UNIT = {"acclaim": "ASF length units", "bvh": "BVH file units", "amass": "metres"}
_CREDIT = {
    "acclaim": "CMU Graphics Lab Motion Capture Database (mocap.cs.cmu.edu), NSF EIA-0196217",
    "bvh": "the BVH files listed in 'sources' (see their licences)",
    "amass": "AMASS (amass.is.tue.mpg.de) and the motion capture data sets it unifies (see their licences)",
}


def _format_of(skeleton: Any) -> str:
    return {"BvhSkeleton": "bvh", "SmplTree": "amass"}.get(type(skeleton).__name__, "acclaim")


def _rates(trials: list[Trial]) -> str:
    return ", ".join(f"{r:g}" for r in sorted({t.fps for t in trials}))


def _output_fps(trials: list[Trial], params: MocapParams) -> float:
    """Frames a second written: ``target_fps``, else the (one) source rate / ``frame_step``."""
    if params.target_fps:
        return float(params.target_fps)
    rates = sorted({t.fps for t in trials})
    if len(rates) > 1:
        slow = min(trials, key=lambda t: t.fps)
        fast = max(trials, key=lambda t: t.fps)
        raise MocapFormatError(slow.path, None, f"{slow.fps:g} fps, but {fast.path} has {fast.fps:g} fps: set prepare_mocap.target_fps (and frame_step: 1) to resample every trial to one rate")
    return rates[0] / params.frame_step


def _frame_picks(n: int, fps: float, params: MocapParams) -> np.ndarray:
    """Source frame indices written for a trial of ``n`` frames at ``fps``: every
    ``frame_step``-th, or with ``target_fps`` the frame nearest to each output time
    (no interpolation: joint angles are not interpolated across wrap-arounds)."""
    if not params.target_fps:
        return np.arange(0, n, params.frame_step, dtype=np.int64)
    times = np.arange(0.0, n / fps, 1.0 / params.target_fps)
    # Slower than the source: distinct frames; faster: a frame repeats.
    return np.minimum(np.rint(times * fps).astype(np.int64), n - 1)
