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
