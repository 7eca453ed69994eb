"""docker-compose.yml and the Dockerfile stay consistent with what the project
really has: commands, modules, management commands, settings and endpoints."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import tomllib
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
    # The build stage installs every package pyproject.toml declares.
    build = text[:text.index("\nFROM ", text.index("AS build"))]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = project["tool"]["setuptools"]["packages"]["find"]
    # The device agent, found under edge_agent/, runs on devices: not in the server image.
    assert "edge_agent" in find["where"] and (ROOT / "edge_agent/hangar_edge").is_dir()
    packages = sorted({p.rstrip("*").removesuffix(".") for p in find["include"]
                       if p != "hangar_edge*"})
    assert packages == ["controlplane", "deployments", "edge", "gateway", "rollouts",
                        "telemetry", "threads"]
    for package in packages:
        assert re.search(rf"^COPY {package} {package}$", build, re.M), \
            f"build stage lacks {package}"
        assert re.search(rf"^COPY {package} {package}$", text[len(build):], re.M), \
            f"the image lacks {package}"
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M), "base image as a build ARG"
    assert len(re.findall(r"^FROM \$\{BASE\}", text, re.M)) == 2
    health = re.search(r"HEALTHCHECK .*?urlopen\('http://127\.0\.0\.1:%s(/\S*?)' % "
                       r"os\.environ\.get\('HANGAR_HEALTHCHECK_PORT', '(\d+)'\)", text, re.S)
    assert health, "HEALTHCHECK probing an HTTP endpoint"
    path, port = health.groups()
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


def test_docker_compose_config_is_valid():
    """Debian's docker-compose (scripts/test installs it) parses and resolves the
    file; without the keys it refuses, naming the variable to set."""
    keys = {"HANGAR_SECRET_KEY": "k" * 50,
            "HANGAR_ENCRYPTION_KEY": "dGVzdC1lbmNyeXB0aW9uLWtleS0zMi1ieXRlcyEhISE="}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    resolved = subprocess.run(["docker-compose", "config"], cwd=ROOT, env={**env, **keys},
                              capture_output=True, text=True, timeout=60)
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    assert services["web"]["environment"]["HANGAR_SECRET_KEY"] == keys["HANGAR_SECRET_KEY"]
    assert services["web"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"
    missing = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set HANGAR_SECRET_KEY" in missing.stderr


def test_run_installs_what_running_needs_and_tests_get_the_test_extra():
    """scripts/run installs the runtime dependencies plus the `agent` extra (the
    reference agent's OpenTelemetry export on the local target), never the test
    tools; scripts/test the test extra, under its own stamp."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.split(r"[<>=\[ ;]", dep)[0] for dep in extras["agent"]}
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= names
    assert "hangar[agent]" in extras["test"]
    run = (ROOT / "scripts" / "run").read_text()
    assert re.findall(r"^ensure_venv(.*)$", run, re.M) == [" agent"]
    test = (ROOT / "scripts" / "test").read_text()
    assert re.findall(r"^ensure_venv(.*)$", test, re.M) == [" test"]
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    assert 'stamp=".venv/.hangar-installed-${extras:-runtime}"' in lib
