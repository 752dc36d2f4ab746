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
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",  # a loaded machine starts it slowly
    "PREFECT_UI_ENABLED": "false",
}


def configure_offline_prefect(home: Path | None = None) -> None:
    """Set Prefect's offline defaults in the environment (existing values win)."""
    for key, value in _OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "PREFECT_HOME" not in os.environ:
        os.environ["PREFECT_HOME"] = str((home or Path.cwd()) / ".prefect")


configure_offline_prefect()


class DropExpectedErrors:
    """A logging filter for Prefect's console handler: drops Prefect's reports of the errors that
    the CLI reports itself in one line (their tracebacks stay in Prefect's run logs)."""

    def __init__(self) -> None:
        self.errors: tuple[type[BaseException], ...] | None = None
        self.names: tuple[str, ...] = ()

    def filter(self, record) -> bool:  # noqa: ANN001 - logging.LogRecord
        if not record.name.startswith("prefect"):
            return True
        if self.errors is None:
            from pipelines.errors import user_errors

            self.errors = user_errors()
            classes, todo = set(), list(self.errors)
            while todo:  # the errors and every subclass of them, by name
                cls = todo.pop()
                if cls not in classes:
                    classes.add(cls)
                    todo.extend(cls.__subclasses__())
            self.names = tuple(sorted(c.__name__ for c in classes))
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            return False
        message = record.getMessage()
        return not any(name in message for name in self.names)


def quiet_expected_errors(enabled: bool = True) -> None:
    """Keep Prefect's console reports of our expected errors off the terminal.

    Prefect reads its logging configuration from a YAML file (PREFECT_LOGGING_SETTINGS_PATH);
    this writes a copy of the one in force with ``DropExpectedErrors`` on its console handlers
    and points Prefect at it. Prefect's API handler, and so the run logs, keep everything.
    Call it before Prefect sets up logging (before the first flow runs). ``vhp --debug`` skips it.
    """
    if not enabled:
        return
    import importlib.util
    import tempfile

    import yaml

    source = os.environ.get("PREFECT_LOGGING_SETTINGS_PATH")
    if not source:
        spec = importlib.util.find_spec("prefect")
        if spec is None or spec.origin is None:
            return
        source = str(Path(spec.origin).parent / "logging" / "logging.yml")
    try:
        config = yaml.safe_load(Path(source).read_text())
    except (OSError, yaml.YAMLError):
        return
    config.setdefault("filters", {})["vhp_expected_errors"] = {"()": "pipelines.DropExpectedErrors"}
    for name, handler in (config.get("handlers") or {}).items():
        if "console" in name:
            handler.setdefault("filters", []).append("vhp_expected_errors")
    target = Path(tempfile.gettempdir()) / f"vhp-prefect-logging-{os.getpid()}.yml"
    target.write_text(yaml.safe_dump(config))
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(target)
