"""A throwaway local PostgreSQL server for benchmarks (Debian's ``postgresql`` binaries).

initdb into a temp dir, a free loopback port, stopped and deleted on exit. Runs the binaries
as the ``postgres`` user when started as root (PostgreSQL refuses root). ``fsync`` stays on:
benchmark numbers should be those of a normal server.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, or they cannot be run here."""


def pg_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresUnavailable("PostgreSQL binaries not found (apt-get install postgresql), "
                                  "or pass --db-url")
    return os.path.dirname(found[-1])


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root without runuser: cannot start PostgreSQL")
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def throwaway_postgres(settings: tuple[str, ...] = ()) -> Iterator[str]:
    """Start a server; yields the SQLAlchemy URL of an empty database ``bench`` on it."""
    bindir = pg_bindir()
    root = tempfile.mkdtemp(prefix="tag-bench-pg-")
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = os.path.join(root, "data"), _free_port()

    def run(cmd: list[str]) -> None:
        subprocess.run(_as_pg_user(cmd), check=True, capture_output=True)

    options = " ".join([f"-p {port}", f"-k {root}", "-c listen_addresses=127.0.0.1",
                        *(f"-c {s}" for s in settings)])
    try:
        run([f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        run([f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w", "-o",
             options, "start"])
        run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             "bench"])
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"
    finally:
        subprocess.run(_as_pg_user([f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "stop"]),
                       capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
