"""The deployment files (otel-collector.yaml, docker-compose.yml, Dockerfile, deploy/tenantledger.yaml) agree with
the code's defaults: every endpoint, port and service name they mention; and the Dockerfile installs as `make run`.
Docker cannot run here, so the Dockerfile's install steps are run into a temporary virtual environment instead.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from receiver.config import parse_endpoint
from tenantledger.config import Config, load_config
from tests.conftest import REPO

DEFAULTS = Config()
GRPC_PORT = parse_endpoint(DEFAULTS.receiver.grpc_endpoint)[1]
HTTP_PORT = parse_endpoint(DEFAULTS.receiver.http_endpoint)[1]
COLLECTOR = yaml.safe_load((REPO / "otel-collector.yaml").read_text())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
SERVICES: dict[str, Any] = COMPOSE["services"]
INSTANCES = sorted(name for name, svc in SERVICES.items() if "serve" in (svc.get("command") or []))


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_collector_receives_on_the_otlp_ports_and_routes_by_trace_id_to_every_instance() -> None:
    protocols = COLLECTOR["receivers"]["otlp"]["protocols"]
    assert parse_endpoint(protocols["grpc"]["endpoint"])[1] == GRPC_PORT == 4317
    assert parse_endpoint(protocols["http"]["endpoint"])[1] == HTTP_PORT == 4318
    pipeline = COLLECTOR["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert pipeline["processors"] == ["memory_limiter", "batch"]  # memory_limiter first, as its README asks
    assert "loadbalancing" in pipeline["exporters"]
    for name in pipeline["processors"]:
        assert name in COLLECTOR["processors"]
    lb = COLLECTOR["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    backends = [parse_endpoint(h) for h in lb["resolver"]["static"]["hostnames"]]
    assert len(INSTANCES) == 2
    assert sorted(host for host, _ in backends) == INSTANCES
    for host, port in backends:
        svc = SERVICES[host]
        assert svc["hostname"] == host
        assert port == GRPC_PORT == parse_endpoint(_flag(svc["command"], "--grpc-endpoint"))[1]
    assert COLLECTOR["service"]["extensions"] == ["health_check"]


def test_compose_pins_images_and_every_service_has_a_healthcheck() -> None:
    image = SERVICES["otel-collector"]["image"]
    assert re.fullmatch(r"otel/opentelemetry-collector-contrib:\d+\.\d+\.\d+", image)
    assert image.split(":")[1] in (REPO / "otel-collector.yaml").read_text().splitlines()[0]
    assert re.fullmatch(r"postgres:\d+\.\d+[-\w]*", SERVICES["postgres"]["image"])
    for name, svc in SERVICES.items():
        assert svc.get("healthcheck", {}).get("test"), name
    ports = {p.split(":")[0] for p in SERVICES["otel-collector"]["ports"]}
    assert ports == {str(GRPC_PORT), str(HTTP_PORT)}
    for mount in SERVICES["otel-collector"]["volumes"]:
        assert (REPO / mount.split(":")[0]).is_file()
    demo = SERVICES["demo"]["command"]
    host, port = parse_endpoint(_flag(demo, "--target"))
    assert host == "otel-collector" and port == GRPC_PORT


def test_instances_bind_all_interfaces_on_the_default_ports_and_share_one_lake() -> None:
    pg = SERVICES["postgres"]["environment"]
    lake_mounts = set()
    for name in INSTANCES:
        svc = SERVICES[name]
        cmd = svc["command"]
        assert parse_endpoint(_flag(cmd, "--grpc-endpoint")) == ("0.0.0.0", GRPC_PORT)
        assert parse_endpoint(_flag(cmd, "--http-endpoint")) == ("0.0.0.0", HTTP_PORT)
        assert f"http://127.0.0.1:{HTTP_PORT}/healthz" in " ".join(svc["healthcheck"]["test"])
        mounts = dict(v.split(":")[:2][::-1] for v in svc["volumes"])
        config_src = mounts[_flag(cmd, "--config")]
        cfg = load_config(REPO / config_src)  # valid against the real config model
        shared = cfg.ledger.shared
        assert shared.enabled and shared.data_path is not None
        lake_mounts.add(mounts[shared.data_path.rstrip("/")])
        dsn = dict(kv.split("=", 1) for kv in shlex.split(shared.catalog_dsn or ""))
        assert dsn["host"] in SERVICES and dsn["host"] == "postgres"
        assert dsn["port"] == "5432" and dsn["dbname"] == pg["POSTGRES_DB"] and dsn["user"] == pg["POSTGRES_USER"]
        assert svc["environment"]["PGPASSWORD"] == pg["POSTGRES_PASSWORD"]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len(lake_mounts) == 1 and next(iter(lake_mounts)) in COMPOSE["volumes"]


def _dockerfile_runs() -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line[4:].strip() for line in joined.splitlines() if line.startswith("RUN ")]


def _make_install_recipe() -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = lines.index("$(STAMP): pyproject.toml") + 1
    recipe = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return [r for r in recipe if not r.startswith("touch ")]


def test_dockerfile_installs_as_make_run_and_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm$", DOCKERFILE, re.M)
    assert re.search(r"^USER tenantledger$", DOCKERFILE, re.M)
    health = re.search(r"^HEALTHCHECK .*\n?.*CMD (.*)$", DOCKERFILE, re.M)
    assert health and f"http://127.0.0.1:{HTTP_PORT}/healthz" in health.group(1)
    cmd = re.search(r"^CMD (\[.*?\])", DOCKERFILE.replace("\\\n", " "), re.M | re.S)
    assert cmd
    command = yaml.safe_load(cmd.group(1))
    assert parse_endpoint(_flag(command, "--grpc-endpoint")) == ("0.0.0.0", GRPC_PORT)
    assert parse_endpoint(_flag(command, "--http-endpoint")) == ("0.0.0.0", HTTP_PORT)
    # make's recipe, in the image's terms: the venv at /opt/venv, the package itself rather than editable+tests.
    expected = [r.replace("$(PY)", "python").replace("$(VENV)", "/opt/venv").replace("$(BIN)", "/opt/venv/bin")
                .replace("-e '.[test]'", ".") for r in _make_install_recipe()]
    assert [r for r in _dockerfile_runs() if "venv" in r] == expected


def test_dockerfile_install_steps_run_and_give_a_working_service(tmp_path: Path, server_factory: Any) -> None:
    """Run the Dockerfile's COPY and install RUN steps (with /opt/venv in a temp dir), then use the result."""
    app = tmp_path / "app"
    app.mkdir()
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M):
        *sources, dest = line.split()
        for src in sources:
            target = app / dest if dest not in ("./", ".") else app / src
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / src, app / Path(src).name)
    venv = tmp_path / "venv"
    for step in _dockerfile_runs():
        if "venv" not in step:
            continue
        step = step.replace("/opt/venv", str(venv)).replace("python -m venv", f"{sys.executable} -m venv")
        r = subprocess.run(step, shell=True, cwd=app, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (step, r.stderr[-2000:])
    tl = venv / "bin" / "tenantledger"
    assert subprocess.run([str(tl), "--help"], capture_output=True, timeout=60).returncode == 0
    # The lake's extensions load from the installed wheels, offline.
    check = ("from ledger._lake import EXTENSIONS, extension_path; import duckdb; c = duckdb.connect(); "
             "[c.execute(f\"LOAD '{extension_path(*e)}'\") for e in EXTENSIONS]; print('ok')")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.stdout.strip() == "ok", r.stderr
    # The HEALTHCHECK's path answers on a running server.
    server = server_factory()
    with urllib.request.urlopen(f"{server.http}/healthz", timeout=5) as resp:
        assert resp.status == 200
