"""The shape of the code a newcomer reads: each module of the apps has one job
and fits in one reading (~400 lines; a little over is tolerated, not a second
job). Migrations are generated; tests, benchmarks and the reference agent are
not the apps."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("controlplane", "deployments", "telemetry", "edge", "gateway", "rollouts", "threads")
MAX_LINES = 450


def test_no_module_of_the_apps_is_over_its_size():
    too_long = {}
    for app in APPS:
        for module in (ROOT / app).rglob("*.py"):
            if "migrations" in module.parts:
                continue
            lines = len(module.read_text().splitlines())
            if lines > MAX_LINES:
                too_long[str(module.relative_to(ROOT))] = lines
    assert not too_long, f"split these modules (over {MAX_LINES} lines): {too_long}"


def test_every_app_is_checked():
    assert all((ROOT / app / "__init__.py").exists() for app in APPS)
    installed = {p.parent.name for p in ROOT.glob("*/apps.py")}
    assert installed <= set(APPS), f"apps the size check misses: {installed - set(APPS)}"


def test_every_module_on_the_docker_hosts_runs_in_their_group():
    """The suite's two workers share the Docker hosts: a module that uses them
    outside the docker-hosts unit of work would see the other's fixtures remove
    its containers (tests/conftest.py)."""
    from .conftest import work_unit

    uses = {path.stem for path in (ROOT / "tests").glob("test_*.py")
            if path.stem != "test_structure" and "docker_support import" in path.read_text()}
    assert uses and all(work_unit(f"tests/{name}.py::t") == "docker-hosts" for name in uses), \
        {name: work_unit(f"tests/{name}.py::t") for name in uses}
    assert work_unit("tests/test_api.py::test_x") == "test_api"
