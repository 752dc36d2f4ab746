"""Shared pytest configuration: hypothesis profiles, torch settings, data paths."""

from __future__ import annotations

import os
from pathlib import Path



def _prefect_logging_to_real_stderr() -> None:
    """Point Prefect's console log handlers at the process's real stderr.

    Prefect binds its handlers to ``sys.stderr`` when it first sets up logging. Under
    pytest that may be a per-test capture stream which is closed after the test, and
    every later log line would then fail. We derive a settings file from Prefect's own
    default (so it follows the installed version) with ``ext://sys.__stderr__``.
    """
    if "PREFECT_LOGGING_SETTINGS_PATH" in os.environ:
        return
    import importlib.util
    import tempfile

    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        return
    default = Path(spec.origin).parent / "logging" / "logging.yml"
    if not default.is_file():
        return
    text = default.read_text().replace("ext://sys.stderr", "ext://sys.__stderr__")
    target = Path(tempfile.gettempdir()) / f"vhp-tests-prefect-logging-{os.getpid()}.yml"
    target.write_text(text)
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(target)


# Before anything imports prefect.
_prefect_logging_to_real_stderr()

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# `ci` is derandomised so that a red run can be reproduced; `dev` explores more.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The reference data folder: $VHP_DATA_DIR, else ../shared/data beside the clone."""
    env = os.environ.get("VHP_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


def stage_params(cls, section: str, **overrides):
    """A stage's params record from the real params.yaml, with some keys replaced."""
    from pipelines.params_file import load_section

    return load_section(cls, section, REPO_ROOT / "params.yaml", **overrides)


@pytest.fixture(scope="session")
def prefect_server(harness) -> str:
    """The API URL of the harness's Prefect server, for the tests that run `vhp` in a subprocess.

    Without a configured API each such subprocess would start an ephemeral server of its own
    (several seconds each on two cores); with it they all use the one server the session starts.
    """
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def flow_env(tmp_path, prefect_server) -> dict[str, str]:
    """The environment of a `vhp` subprocess: the shared Prefect server, a Prefect home of the test's own."""
    return dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=prefect_server)


@pytest.fixture(scope="session")
def harness():
    """One Prefect test harness (a temporary database and API) for every test that runs flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


SHIPPED_DATA = REPO_ROOT / "tests" / "data"  # small reference files kept in the repository (see its README)


@pytest.fixture(scope="session")
def cmu_reference() -> Path:
    """The few CMU ASF/AMC trials shipped in tests/data/cmu: every clone has them."""
    return SHIPPED_DATA / "cmu"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("reference data not found: set VHP_DATA_DIR or place shared/data beside the clone")
    return path
