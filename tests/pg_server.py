"""A throwaway PostgreSQL server for the tests, and store fixtures on SQLite and PostgreSQL.

The server is started by the suite itself from Debian's binaries (``apt-get install
postgresql``): initdb into a temp dir, a free loopback port, a socket dir in the temp dir,
stopped at the end. Without the binaries the postgres cases are skipped on a developer's
machine, but FAIL in CI (``CI`` set to a true value, as GitHub Actions, GitLab CI and most
others do): a CI image that lost its PostgreSQL must not turn half the store tests green.
"""
from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

_counter = itertools.count()


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI."""
    if _in_ci():
        pytest.fail(f"{reason} (CI is set: PostgreSQL tests must run in CI)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    """Postgres refuses to run as root: run its binaries as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict]:
    """A throwaway PostgreSQL server: ``{"host", "port", "user"}``."""
    bindir = _pg_bin()
    if bindir is None:
        _unavailable("PostgreSQL binaries not found (apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root without runuser: cannot start PostgreSQL")
    root = tempfile.mkdtemp(prefix="tag-pg-")
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, sock, port = os.path.join(root, "data"), root, _free_port()
    run = lambda cmd: subprocess.run(_as_pg_user(cmd), check=True, capture_output=True)
    run([f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync"])
    run([f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "-o",
         f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "postgres"}
    finally:
        subprocess.run(_as_pg_user([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]),
                       capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def new_pg_database(server: dict) -> str:
    """Create a fresh database on the test server; returns its SQLAlchemy URL."""
    import psycopg

    name = f"tagtest_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(host=server["host"], port=server["port"], user=server["user"],
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{server['user']}@{server['host']}:{server['port']}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh empty database URL, once SQLite, once PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return new_pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture()
def store(db_url):
    from database_tools.store import Store

    s = Store(db_url)
    yield s
    s.close()
