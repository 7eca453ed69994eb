"""docker-compose.yml and the Dockerfile stay consistent with what the project
really has: commands, modules, management commands, settings and endpoints."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml
from django.core.management import get_commands
from django.urls import resolve

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_SOURCE = (ROOT / "controlplane" / "settings.py").read_text()


def check_command(argv: list[str]) -> None:
    program = argv[0]
    if program == "uvicorn":
        module, attr = argv[1].split(":")
        assert argv[argv.index("--ws") + 1] == "websockets-sansio", argv
        assert hasattr(importlib.import_module(module), attr), argv
    elif program == "celery":
        assert argv[1] == "-A"
        app = importlib.import_module(argv[2]).celery_app
        assert app.main == "hangar"
        assert argv[3] in {"worker", "beat"}, argv
    elif program == "python":
        assert argv[1] == "manage.py" and argv[2] in get_commands(), argv
    else:
        raise AssertionError(f"unknown program in {argv}")


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_run_real_commands():
    services = compose()["services"]
    assert {"postgres", "redis", "web", "worker", "beat"} <= set(services)
    for service in services.values():
        if "build" in service:
            check_command(service["command"])
    assert services["worker"]["command"][3] == "worker"
    assert services["beat"]["command"][3] == "beat"


def test_compose_environment_is_read_by_settings():
    for name, service in compose()["services"].items():
        if "build" not in service:
            continue
        for variable in service["environment"]:
            assert f'"{variable}"' in SETTINGS_SOURCE, f"{name}: settings never read {variable}"
    web = compose()["services"]["web"]
    assert web["ports"] == ["127.0.0.1:8000:8000"]


def test_dockerfile_matches_the_tree():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage build"
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"COPY {source}: missing"
    health = re.search(r"HEALTHCHECK .*?urlopen\('http://127\.0\.0\.1:(\d+)(/\S*?)'", text, re.S)
    assert health, "HEALTHCHECK probing an HTTP endpoint"
    port, path = health.groups()
    assert resolve(path).url_name == "healthz"
    assert f"EXPOSE {port}" in text
    cmd = re.search(r'^CMD (\[.*\])', text, re.M).group(1)
    argv = yaml.safe_load(cmd)
    check_command(argv)
    assert argv == compose()["services"]["web"]["command"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in readme and "scripts/run" in readme
    assert re.search(r"^\s*(exec\s+)?(bash\s+)?scripts/test\b", ci, re.M)
