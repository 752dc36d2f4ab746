"""Shared pytest configuration: hypothesis profiles, torch settings, data paths."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("reference data not found: set VHP_DATA_DIR or place shared/data beside the clone")
    return path


# The few real CMU files the reader tests use, taken from the shared reference set (real data
# is never kept in the repository): subject 09's two running trials (128 frames each; the ASF
# has CRLF line endings), subject 10's soccer kick (CRLF), the skeletons of subjects 01 and 07.
REFERENCE_CMU = ("01/01.asf", "07/07.asf", "09/09.asf", "09/09_03.amc", "09/09_08.amc", "10/10.asf", "10/10_03.amc")
REFERENCE_BVH = ("09_03", "09_08")  # subject 09's trials converted to BVH by tests/bvh_convert.py


@pytest.fixture(scope="session")
def reference_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the files above: ``cmu/`` (with their rows of the shared INDEX.tsv) and
    ``bvh/09/`` (the BVH conversion of subject 09's trials, as the public CMU BVH sets are made)."""
    from bvh_convert import amc_to_bvh
    from preprocessing.acclaim import parse_amc, parse_asf

    root = tmp_path_factory.mktemp("reference")
    for name in REFERENCE_CMU:
        (root / "cmu" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "cmu" / name, root / "cmu" / name)
    header, *rows = (shared_data / "cmu" / "INDEX.tsv").read_text().splitlines(keepends=True)
    (root / "cmu" / "INDEX.tsv").write_text(header + "".join(r for r in rows if r.split("\t")[2] in REFERENCE_CMU))
    skeleton = parse_asf(root / "cmu" / "09" / "09.asf")
    (root / "bvh" / "09").mkdir(parents=True)
    for trial in REFERENCE_BVH:
        motion = parse_amc(root / "cmu" / "09" / f"{trial}.amc", skeleton)
        (root / "bvh" / "09" / f"{trial}.bvh").write_text(amc_to_bvh(skeleton, motion))
    return root


@pytest.fixture(scope="session")
def cmu_reference(reference_data: Path) -> Path:
    """The CMU ASF/AMC files of ``reference_data`` (skips without the shared reference set)."""
    return reference_data / "cmu"
