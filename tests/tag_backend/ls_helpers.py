"""Helpers shared by the Label Studio backend tests: a tiny HTTP server and app fixtures."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tag_backend.ls import recommended_label_config

CONFIG = recommended_label_config()


class FakeServer:
    """Serves ``routes[path] = (status, content_type, body, delay)``; records request headers."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes, float]] = {}
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.headers.append(dict(self.headers))
                key = self.path
                status, ctype, body, delay = server.routes.get(key, (404, "text/plain", b"nope", 0))
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def copy_services(session_services, tmp_path: Path, **changes):
    """Private services on a copy of the warmed-up session data dir (no index rebuild)."""
    from tag_backend.services import Services

    session_services.pipeline()  # build the default index once per session
    data = tmp_path / "rt-data"
    shutil.copytree(
        session_services.settings.data_dir,
        data,
        ignore=shutil.ignore_patterns("ls-media", "webhook-spool"),
    )
    return Services(session_services.settings.replace(data_dir=str(data), **changes))


def shared_services(session_services, tmp_path: Path, **changes):
    """Services on the session's store and index (read-only use) with a private data dir for
    the server's own files (webhook spool, media cache) and the given setting changes."""
    from tag_backend.services import Services

    session_services.pipeline()  # build the default index once per session
    s = session_services.settings
    return Services(s.replace(db_url=s.resolved_db_url, index_dir=s.resolved_index_dir,
                              data_dir=str(tmp_path), **changes))
