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
