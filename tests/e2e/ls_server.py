"""Start a real Label Studio 1.23.2 (own virtualenv, temp data dir) and the backend, on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from filelock import FileLock

LS_VERSION = "1.23.2"
CACHE = Path(os.environ.get("TAG_TEST_CACHE", Path.home() / ".cache" / "tag-backend-tests"))
TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER, PASSWORD = "tester@example.com", "tag-e2e-pass-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ls_venv() -> Path:
    """The Label Studio virtualenv (created once, ~90 s; reused when the version matches).

    Several test processes may ask at once (the cache is per user): a file lock makes one of
    them build it while the others wait, instead of clearing each other's half-built venv.
    """
    venv = CACHE / "ls-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import label_studio; print(label_studio.__version__)"]
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / "ls-venv.lock"), timeout=1800):
        if python.exists():
            out = subprocess.run(check, capture_output=True, text=True)
            if out.stdout.strip() == LS_VERSION:
                return venv
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={LS_VERSION}"],
            check=True,
            timeout=1200,
        )
    return venv


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(
                f"process exited with {proc.returncode} before {url} was up:\n{tail}"
            )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout} s")


def ls_data_template() -> Path:
    """A Label Studio data directory whose database is migrated and holds the test user and
    token (built once per Label Studio version, ~40 s; reused).

    A fresh Label Studio spends most of its start-up applying its migrations to an empty
    SQLite database: ~40 s on an idle 2-core machine and more than 300 s while the machine was
    loaded. Each start copies this directory instead (~5 s) and still gets a database of its
    own. Built under a file lock and renamed into place, so it is either whole or absent.
    """
    template = CACHE / f"ls-data-{LS_VERSION}"
    with FileLock(str(CACHE / "ls-data.lock"), timeout=1800):
        if not (template / "label_studio.sqlite3").is_file():
            build = Path(tempfile.mkdtemp(prefix="ls-template-", dir=CACHE))
            try:
                proc, _url = _run_label_studio(build, startup_timeout=900)
                stop(proc)
                shutil.rmtree(template, ignore_errors=True)
                (build / "ls-data").rename(template)
            finally:
                shutil.rmtree(build, ignore_errors=True)
    return template


def start_label_studio(root: Path) -> tuple[subprocess.Popen, str]:
    """A Label Studio on a copy of :func:`ls_data_template` in ``root``: (process, URL)."""
    shutil.copytree(ls_data_template(), root / "ls-data")
    return _run_label_studio(root, startup_timeout=300)


def _run_label_studio(root: Path, startup_timeout: float) -> tuple[subprocess.Popen, str]:
    venv = ls_venv()
    port = free_port()
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LABEL_STUDIO_BASE_DATA_DIR": str(root / "ls-data"),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_TIMEOUT_PREDICT": "900",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
    }
    log = root / "label-studio.log"
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ],
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", startup_timeout, proc, log)
    return proc, url


def tiny_backend_env(root: Path, tiny_models_dir: dict, services) -> dict[str, str]:
    """Environment of a backend on the tiny test models (add ``LABEL_STUDIO_URL``), with a copy
    of ``services``' warmed data dir (default vocabulary and index already built)."""
    services.pipeline()
    shutil.copytree(services.settings.data_dir, root / "tag-data")
    return {
        "TAG_DINO_MODEL": tiny_models_dir["dino"],
        "TAG_CLIP_MODEL": tiny_models_dir["clip"],
        "TAG_DATA_DIR": str(root / "tag-data"),
        "TAG_DEVICE": "cpu",
        "TAG_DTYPE": "float32",
        "LABEL_STUDIO_API_KEY": TOKEN,
        "HF_HUB_OFFLINE": "1",
    }


def _spawn(root: Path, env_extra: dict[str, str], name: str, *args: str
           ) -> tuple[subprocess.Popen, Path]:
    """``python -m tag_backend ARGS`` with the environment plus ``env_extra``, logging to
    ``root/<name>.log``."""
    log = root / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tag_backend", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env_extra},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    return proc, log


def start_backend(root: Path, env_extra: dict[str, str], name: str = "backend",
                  wait: bool = True) -> tuple[subprocess.Popen, str]:
    """``tag-backend serve`` on a free port (log ``root/<name>.log``); waits for ``/health``
    unless ``wait`` is False (then see :func:`wait_ready`)."""
    port = free_port()
    proc, log = _spawn(root, env_extra, name, "serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    if wait:
        wait_http(url + "/health", 120, proc, log)
    return proc, url


def wait_ready(proc: subprocess.Popen, url: str, root: Path, name: str, timeout: float) -> None:
    """Wait for a backend's ``/ready`` (models loaded, database answers, index current)."""
    wait_http(url + "/ready", timeout, proc, root / f"{name}.log")


def start_job_worker(root: Path, env_extra: dict[str, str], name: str) -> subprocess.Popen:
    """``tag-backend jobs work`` (log ``root/<name>.log``); see :func:`wait_job_worker`."""
    return _spawn(root, env_extra, name, "jobs", "work")[0]


def wait_job_worker(proc: subprocess.Popen, root: Path, name: str, timeout: float) -> None:
    """Wait until a job worker said it runs (its models are loaded then)."""
    log = root / f"{name}.log"
    deadline = time.time() + timeout
    while b"running; Ctrl-C to stop" not in log.read_bytes():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"job worker {name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


REPO = Path(__file__).resolve().parents[2]


def data_dir_copy(stack: dict, name: str) -> str:
    """A private copy (``name``) of the ``ls_stack`` fixture's warmed data dir: concept store,
    index and job queue of one backend or CLI process."""
    target = stack["root"] / name
    if not target.exists():
        shutil.copytree(stack["warm"], target)
    return str(target)


def ls_api(ls_url: str, method: str, path: str, **kw):
    """One Label Studio API call with the test token; asserts success, returns the JSON body."""
    r = requests.request(method, ls_url + path, headers={"Authorization": f"Token {TOKEN}"},
                         timeout=900, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r.json() if r.content else None


def wait_until(predicate, timeout: float, what: str, interval: float = 3.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def backend_metric(backend_url: str, name: str, **labels: str) -> float:
    """The sum of the backend's ``/metrics`` samples ``name`` with ``labels`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(backend_url + "/metrics", timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def prelabel_process(env: dict[str, str], project: int, *args: str, **popen) -> subprocess.Popen:
    """``tag-backend prelabel --project N --quiet --batch-size 2 [args]`` as a real subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "tag_backend", "prelabel", "--project", str(project), "--quiet",
         "--batch-size", "2", *args],
        env={**os.environ, **env}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, **popen)
