"""The one atomic writer of the project, for files and for folders (bottom of the import
graph: nothing here imports another vhp module but ``preprocessing.errors``).

``atomic_write(path, data)`` writes a temporary file beside ``path`` (``.<name>.<tag>.
<random>.tmp``), flushes and fsyncs it, gives it the mode the umask gives a new file
(``0o666 & ~umask``, as ``open()`` would; ``mkstemp`` alone makes it 0600), renames it
over ``path`` and fsyncs the folder. A reader sees the old complete file or the new one,
never a part. Any ``OSError`` on the way (disk full, quota, read-only file system, no
permission) removes the temporary and is raised as ``WriteError`` naming the target
and the cause, which the command line reports in one line with exit status 2.

``atomic_folder(path)`` is the same for a folder (a zarr group, the report, the embedded
raw data, the production model): the caller fills a staging folder beside ``path``
(``.<name>.<random>.tmp``), which gets the umask's folder mode and is then renamed into
place; an existing folder is replaced only after the new one is complete, and is back in
place if the rename fails. An error in the caller's block leaves ``path`` as it was and no
staging folder behind.

``hook`` (checkpoints use it for fault injection) is called at ``mid-write`` (half the
bytes written), ``after-write``, ``after-fsync`` and ``after-rename``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from preprocessing.errors import WriteError

__all__ = ["atomic_write", "atomic_write_text", "atomic_folder", "fsync_dir", "new_file_mode", "new_folder_mode",
           "WriteError", "PERMANENT_ERRNOS", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"
# Errors of a write that a retry does not fix: disk full, quota, read-only, permission, name too long.
PERMANENT_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM,
                                         errno.ENAMETOOLONG, errno.EFBIG, errno.ENOTDIR, errno.EISDIR) if e is not None)
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, 'w')`` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def new_folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder under the current umask."""
    return 0o777 & ~_umask()


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: Path | str,
    data: bytes | memoryview | Callable[[BinaryIO], None],
    *,
    tag: str = "",
    hook: Callable[[str], None] | None = None,
) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically."""
    path = Path(path)
    point = hook or (lambda _name: None)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{tag + '.' if tag else ''}", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                view = memoryview(data).cast("B")
                fh.write(view[: len(view) // 2])
                fh.flush()
                point("mid-write")
                fh.write(view[len(view) // 2 :])
            fh.flush()
            point("after-write")
            os.fchmod(fh.fileno(), new_file_mode())
            os.fsync(fh.fileno())
        point("after-fsync")
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise WriteError(path, err) from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    point("after-rename")
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path | str, text: str, *, skip_unchanged: bool = False) -> bool:
    """``atomic_write`` of UTF-8 text; with ``skip_unchanged``, False (and no write) when
    the file already holds exactly this text."""
    path = Path(path)
    data = text.encode("utf-8")
    if skip_unchanged:
        try:
            if path.is_file() and path.read_bytes() == data:
                return False
        except OSError:
            pass
    atomic_write(path, data)
    return True


@contextlib.contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; when the block ends without an error, swap it
    in as ``path`` whole. OSErrors of the swap are raised as ``WriteError`` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    except OSError as err:
        raise WriteError(path, err) from err
    try:
        yield staging
        try:
            os.chmod(staging, new_folder_mode())  # mkdtemp makes it private
            retired = None
            if path.exists() or path.is_symlink():
                retired = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(path, retired)
                try:
                    os.replace(staging, path)
                except BaseException:
                    os.replace(retired, path)
                    raise
            else:
                os.replace(staging, path)
            fsync_dir(path.parent)
        except OSError as err:
            raise WriteError(path, err) from err
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
