"""Errors that a user's input or run can cause; the CLI reports each in one line with exit status 2."""

from __future__ import annotations

import io
import os
import sys


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite run, lock held, constraint never met, ...); never worth a retry."""


class NonFiniteTrainingError(TrainingError):
    pass


class RunLockedError(TrainingError):
    pass


class ConstraintNotMetError(TrainingError):
    """``train.require_constraint`` is set and the run ended with the prior never trained."""


class EvaluationError(ValueError):
    """A model and a data set that do not belong together."""


class RetrainError(RuntimeError):
    pass


class SweepError(RuntimeError):
    """The sweep cannot start (a missing data set, a missing extra) or some of its points failed."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, tampered or mismatched."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'bad input or an expected failure', reported in one line without a traceback."""
    from pipelines.params_file import ParamsError
    from preprocessing.errors import PreprocessingError

    # DatasetError, WriteError and the parsers' and downloads' errors are PreprocessingErrors;
    # any other OSError (a read-only folder, a full disk under a writer of a library) is
    # reported by its own message, which names the file.
    return (ParamsError, CheckpointError, FileNotFoundError, PreprocessingError, TrainingError, RetrainError,
            EvaluationError, SweepError, OSError)


def worth_a_retry(err: BaseException) -> bool:
    """Whether running a failed task again could help: not for bad input, a failed run or
    a write that failed for want of space, quota or permission; yes for other hiccups."""
    from pipelines.params_file import ParamsError
    from preprocessing.atomic import PERMANENT_ERRNOS
    from preprocessing.errors import PreprocessingError

    if isinstance(err, (TrainingError, ParamsError, PreprocessingError, CheckpointError, EvaluationError, UnicodeError)):
        return False
    if isinstance(err, OSError):
        return err.errno not in PERMANENT_ERRNOS and not isinstance(err, (FileNotFoundError, PermissionError))
    return True


def say_error(line: str) -> None:
    """Write one line to standard error in a single ``write``, so that lines from processes
    sharing the stream (the ranks under ``torchrun``) never interleave."""
    sys.stderr.flush()
    data = (line.rstrip("\n") + "\n").encode(errors="replace")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # a replaced stream (pytest's capsys)
        sys.stderr.write(data.decode())
        sys.stderr.flush()
        return
    os.write(fd, data)
