"""Prefect flows, DVC stage entry points and the ``vhp`` command line.

Importing this package applies the offline Prefect settings (no analytics, no
telemetry, a generous start-up time for the ephemeral API server, a project-
local PREFECT_HOME) unless the user has set them: the flows must run on a
machine without internet.
"""

from __future__ import annotations

import os
from pathlib import Path

_OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_UI_ENABLED": "false",
}


def configure_offline_prefect(home: Path | None = None) -> None:
    """Set Prefect's offline defaults in the environment (existing values win)."""
    for key, value in _OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "PREFECT_HOME" not in os.environ:
        os.environ["PREFECT_HOME"] = str((home or Path.cwd()) / ".prefect")


configure_offline_prefect()


class _DropExpectedErrors:
    """A logging filter that drops Prefect's reports of errors the CLI reports itself in one line."""

    def __init__(self, errors: tuple[type[BaseException], ...]) -> None:
        self.errors = errors
        self.names = tuple(e.__name__ for e in errors)

    def filter(self, record) -> bool:  # noqa: ANN001 - logging.LogRecord
        if not record.name.startswith("prefect"):
            return True
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            return False
        if record.levelname in ("ERROR", "WARNING", "CRITICAL"):
            message = record.getMessage()
            return not any(name in message for name in self.names)
        return True


def quiet_expected_errors(errors: tuple[type[BaseException], ...], enabled: bool = True) -> None:
    """Keep Prefect's tracebacks of our expected errors off the terminal.

    They still reach Prefect's run logs (the API handler is left alone); the CLI prints
    its one-line message. ``vhp --debug`` leaves Prefect's console output as it is.
    """
    if not enabled:
        return
    import logging

    from prefect.logging.configuration import setup_logging

    setup_logging()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropExpectedErrors) for f in handler.filters):
            handler.addFilter(_DropExpectedErrors(errors))
