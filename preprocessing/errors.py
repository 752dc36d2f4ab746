"""Errors of the preprocessing stages: one family, each message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class PreprocessingError(Exception):
    """Base of every error raised on bad input or bad output by ``preprocessing``."""


class DatasetError(PreprocessingError):
    """A processed data set (zarr group) that does not follow the schema."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SourceError(PreprocessingError):
    """Raw input that cannot be used: a missing or empty folder, a failed download."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class _LocatedError(PreprocessingError):
    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class MocapFormatError(_LocatedError):
    """A malformed ASF skeleton or AMC motion (or a folder without any)."""


class MeshFormatError(_LocatedError):
    """An unreadable mesh or face model file."""


class ImageFormatError(_LocatedError):
    """A malformed idx image or label file."""


class WriteError(PreprocessingError, OSError):
    """An output that could not be written (disk full, quota, read-only, permission).

    Also an ``OSError`` with the cause's ``errno``, so callers that sort errors by it
    (e.g. whether a retry can help) still can."""

    def __init__(self, path: Path | str, cause: OSError) -> None:
        OSError.__init__(self, cause.errno, cause.strerror or str(cause))
        self.path = str(path)
        self.problem = f"cannot write ({cause.strerror or cause})"
        if cause.filename and str(cause.filename) != self.path and not Path(str(cause.filename)).name.startswith(f".{Path(self.path).name}"):
            self.problem += f" at {cause.filename}"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def __reduce__(self):  # picklable (Prefect and multiprocessing pass errors between processes)
        return (_rebuild_write_error, (self.path, self.errno, self.strerror, self.problem))


def _rebuild_write_error(path: str, errno_: int | None, strerror: str | None, problem: str) -> WriteError:
    err = WriteError(path, OSError(errno_, strerror))
    err.problem = problem
    return err
