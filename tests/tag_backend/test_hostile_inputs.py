"""Hostile input against a real server and real image servers, all on loopback.

Every case must end in a clear 4xx or a logged refusal, with the server still answering and
nothing acknowledged lost. The backend runs in werkzeug's threaded server (real sockets, so
trickling and oversized bodies are real); image servers are raw socket servers that misbehave
on purpose.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from werkzeug.serving import make_server

from tag_backend.app import app_backend, create_app
from tag_backend.config import Settings
from tag_backend.ls.errors import MediaError
from tag_backend.ls.http_fetch import DownloadTimeout, DownloadTooLarge
from tag_backend.ls.media import MediaFetcher
from tag_backend.ls.url_policy import UrlNotAllowed

from ls_helpers import CONFIG, copy_services

SECRET = "s3cret-token-value"
DEADLINE = 1.0


def _png(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- misbehaving image servers
class RawServer:
    """A loopback TCP server whose every connection runs ``behaviour(conn)``; counts hits."""

    def __init__(self, behaviour, host: str = "127.0.0.1") -> None:
        self.behaviour, self.hits = behaviour, 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn) -> None:
        try:
            conn.settimeout(10)
            conn.recv(65536)  # the request (small GETs fit)
            self.behaviour(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _trickle(body: bytes, with_length: bool, head: bytes = b""):
    def behaviour(conn):
        headers = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
        if with_length:
            headers += b"Content-Length: %d\r\n" % len(body)
        conn.sendall(head or headers + b"Connection: close\r\n\r\n")
        for i in range(len(body)):
            conn.sendall(body[i:i + 1])
            time.sleep(0.2)
    return behaviour


def _slow_headers(conn):
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n":
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


def _silent(conn):
    time.sleep(8)


def _respond(status: str, headers: dict, body: bytes = b""):
    def behaviour(conn):
        lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
        conn.sendall(("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode() + body)
    return behaviour


def _endless(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
    chunk = b"\0" * 65536
    for _ in range(2000):
        conn.sendall(chunk)


@pytest.fixture()
def raw_server():
    servers = []

    def start(behaviour, host="127.0.0.1"):
        servers.append(RawServer(behaviour, host))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _fetcher(tmp_path, **kw) -> MediaFetcher:
    kw.setdefault("download_timeout", DEADLINE)
    return MediaFetcher(Settings(data_dir=str(tmp_path / "d"), **kw))


# ---------------------------------------------------------------- fetches: time and size
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
def test_trickling_image_body_stops_at_the_deadline(raw_server, tmp_path, with_length):
    server = raw_server(_trickle(_png(), with_length))
    start = time.monotonic()
    with pytest.raises(DownloadTimeout, match="TAG_DOWNLOAD_TIMEOUT"):
        _fetcher(tmp_path, url_allowlist="127.0.0.1").fetch(server.url + "/a.png")
    assert time.monotonic() - start < DEADLINE + 1.5


@pytest.mark.parametrize("behaviour", [_slow_headers, _silent], ids=["trickled-headers", "silent"])
def test_slow_or_silent_server_stops_at_the_deadline(raw_server, tmp_path, behaviour):
    server = raw_server(behaviour)
    start = time.monotonic()
    with pytest.raises(MediaError, match="timed out|TAG_DOWNLOAD_TIMEOUT") as caught:
        _fetcher(tmp_path, url_allowlist="127.0.0.1").fetch(server.url + "/a.png")
    assert caught.value.transient
    assert time.monotonic() - start < DEADLINE + 1.5


def test_declared_size_over_the_cap_is_refused_before_the_body(raw_server, tmp_path):
    server = raw_server(_respond("200 OK", {"Content-Length": "999999999"}))
    with pytest.raises(DownloadTooLarge, match="999,999,999 bytes"):
        _fetcher(tmp_path, url_allowlist="127.0.0.1").fetch(server.url + "/a.png")


def test_undeclared_size_over_the_cap_is_refused_while_reading(raw_server, tmp_path):
    server = raw_server(_endless)
    with pytest.raises(DownloadTooLarge, match="exceeded 1,000,000 bytes"):
        _fetcher(tmp_path, url_allowlist="127.0.0.1", max_download_bytes=1_000_000,
                 download_timeout=10).fetch(server.url + "/a.png")


def test_gzip_bomb_is_capped_on_the_decoded_size(raw_server, tmp_path):
    bomb = gzip.compress(b"\0" * 20_000_000)
    server = raw_server(_respond("200 OK", {"Content-Encoding": "gzip",
                                            "Content-Length": str(len(bomb))}, bomb))
    with pytest.raises(DownloadTooLarge):
        _fetcher(tmp_path, url_allowlist="127.0.0.1", max_download_bytes=1_000_000,
                 download_timeout=10).fetch(server.url + "/a.png")


def test_redirect_loop_is_refused(raw_server, tmp_path):
    server = raw_server(_respond("302 Found", {"Location": "/again", "Content-Length": "0"}))
    with pytest.raises(MediaError, match="redirects more than"):
        _fetcher(tmp_path, url_allowlist="127.0.0.1").fetch(server.url + "/a.png")


# ---------------------------------------------------------------- fetches: address policy
BLOCKED_HOSTS = [
    ("127.0.0.1", "loopback"),
    ("localhost", "loopback-name"),
    ("[::1]", "ipv6-loopback"),
    ("2130706433", "decimal-ipv4"),
    ("0177.0.0.1", "octal-ipv4"),
    ("0x7f.0.0.1", "hex-ipv4"),
    ("127.1", "short-ipv4"),
    ("169.254.169.254", "link-local-metadata"),
    ("10.1.2.3", "private-10"),
    ("172.16.0.1", "private-172"),
    ("192.168.1.1", "private-192"),
    ("100.64.0.1", "shared-cgnat"),
    ("0.0.0.0", "unspecified"),
    ("[::]", "ipv6-unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("[::ffff:127.0.0.1]", "ipv4-mapped-loopback"),
    ("[::ffff:169.254.169.254]", "ipv4-mapped-link-local"),
    ("[fe80::1]", "ipv6-link-local"),
    ("[fd00::1]", "ipv6-unique-local"),
    ("[ff02::1]", "ipv6-multicast"),
    ("[64:ff9b::7f00:1]", "nat64-loopback"),
    ("[2002:7f00:1::]", "6to4-loopback"),
]


@pytest.mark.parametrize("host", [h for h, _ in BLOCKED_HOSTS], ids=[i for _, i in BLOCKED_HOSTS])
def test_non_public_addresses_are_refused_by_default(tmp_path, host, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(UrlNotAllowed, match="TAG_URL_ALLOWLIST"):
        _fetcher(tmp_path).fetch(f"http://{host}:9/a.png")
    assert any("refused" in r.getMessage() for r in caplog.records)


def test_refused_address_is_never_connected_to(raw_server, tmp_path):
    server = raw_server(_respond("200 OK", {"Content-Length": "0"}))
    for url in (server.url, f"http://2130706433:{server.port}", f"http://0177.0.0.1:{server.port}"):
        with pytest.raises(UrlNotAllowed):
            _fetcher(tmp_path).fetch(url + "/a.png")
    time.sleep(0.1)
    assert server.hits == 0


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:{port}/x.png",
    "http://2130706433:{port}/x.png",
], ids=["loopback", "link-local", "ipv6-loopback", "decimal-loopback"])
def test_redirect_to_a_non_public_address_is_refused(raw_server, tmp_path, target):
    victim = raw_server(_respond("200 OK", {"Content-Length": "2"}, b"ok"))
    location = target.format(port=victim.port)
    # The allowed image host is 127.0.0.2 (allow-listed alone); the redirect leaves it.
    front = raw_server(_respond("302 Found", {"Location": location, "Content-Length": "0"}),
                       host="127.0.0.2")
    with pytest.raises(UrlNotAllowed):
        _fetcher(tmp_path, url_allowlist="127.0.0.2/32").fetch(front.url + "/a.png")
    assert front.hits == 1 and victim.hits == 0


def test_allowlist_and_label_studio_host_are_reachable(raw_server, tmp_path):
    server = raw_server(_respond("200 OK", {"Content-Type": "image/png",
                                            "Content-Length": str(len(_png()))}, _png()))
    assert _fetcher(tmp_path, url_allowlist="127.0.0.0/8").fetch(server.url + "/a.png")
    ls_host = _fetcher(tmp_path / "ls", label_studio_url=server.url)
    assert ls_host.fetch(server.url + "/b.png").image.size == (64, 48)
    other_port = _fetcher(tmp_path / "port", label_studio_url=f"http://127.0.0.1:{server.port + 1}")
    with pytest.raises(UrlNotAllowed):  # the exemption is for the LS host *and* port
        other_port.fetch(server.url + "/c.png")


def test_local_files_path_cannot_leave_the_document_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(_png())
    f = _fetcher(tmp_path, local_files_document_root=str(root))
    for url in ("/data/local-files/?d=../secret.png", "/data/local-files/?d=a.png&d=../../secret.png"):
        with pytest.raises(MediaError, match="LOCAL_FILES_DOCUMENT_ROOT"):
            f.fetch(url)


def test_local_files_read_from_document_root_without_label_studio_url(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(_png())
    f = _fetcher(tmp_path, local_files_document_root=str(root))
    assert f.fetch("/data/local-files/?d=sub/a.png").image.size == (64, 48)
    with pytest.raises(MediaError, match="not found under LOCAL_FILES_DOCUMENT_ROOT"):
        f.fetch("/data/local-files/?d=sub/missing.png")


# ---------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def served(tiny_services_session, tmp_path_factory):
    """The backend in werkzeug's threaded server on 127.0.0.1, small limits, auth on."""
    root = tmp_path_factory.mktemp("hostile")
    Image.new("RGB", (1, 1)).save(root / "one-pixel.png")
    Image.new("RGB", (96, 96), (200, 30, 30)).save(root / "ok.png")
    services = copy_services(
        tiny_services_session, root, allowed_local_roots=str(root), predict_budget_seconds=1e9,
        url_allowlist="127.0.0.1", basic_auth_user="u", basic_auth_pass="p",
        webhook_secret=SECRET, max_webhook_bytes=1_000_000, max_request_bytes=2_000_000,
        max_setup_bytes=100_000, request_body_timeout=DEADLINE, download_timeout=DEADLINE,
    )
    app = create_app(services=services, start_worker=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    yield {"url": url, "backend": app_backend(app), "root": root, "port": server.server_port}
    server.shutdown()


AUTH = ("u", "p")


def _alive(served) -> None:
    assert requests.get(served["url"] + "/health", timeout=5).json()["status"] == "UP"


def _raw_request(served, head: bytes, body_parts=(), pause=0.0) -> bytes:
    """Send ``head`` then ``body_parts`` (pausing between them); the raw response."""
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=10) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                sock.sendall(part)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the server may stop reading once it has answered
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def _head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Tag-Webhook-Secret: {SECRET}\r\nAuthorization: Basic dTpw\r\n{extra}\r\n").encode()


def test_150_mb_webhook_is_refused_before_its_body(served):
    start = time.monotonic()
    reply = _raw_request(served, _head("/webhook", "Content-Length: 150000000\r\n"))
    assert reply.startswith(b"HTTP/1.1 413") and b"150,000,000 bytes" in reply
    assert time.monotonic() - start < 3
    assert served["backend"].spool.depth() == 0
    _alive(served)


def test_chunked_webhook_over_the_limit_is_refused(served):
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    parts = [chunk] * 40 + [b"0\r\n\r\n"]  # 2.6 MB, over the 1 MB webhook limit
    reply = _raw_request(served, _head("/webhook", "Transfer-Encoding: chunked\r\n"), parts)
    assert reply.startswith(b"HTTP/1.1 413")
    assert served["backend"].spool.depth() == 0
    _alive(served)


@pytest.mark.parametrize("framing", ["Content-Length: 200\r\n", "Transfer-Encoding: chunked\r\n"],
                         ids=["content-length", "chunked"])
def test_trickling_request_body_gets_408(served, framing):
    one = b"1\r\n \r\n" if "chunked" in framing else b" "
    start = time.monotonic()
    reply = _raw_request(served, _head("/webhook", framing), [one] * 200, pause=0.05)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"TAG_REQUEST_BODY_TIMEOUT" in reply
    assert time.monotonic() - start < DEADLINE + 3
    _alive(served)


@pytest.mark.parametrize("path,size", [("/predict", 3_000_000), ("/setup", 200_000)])
def test_oversized_predict_and_setup_get_413(served, path, size):
    r = requests.post(served["url"] + path, data=b" " * size, auth=AUTH, timeout=10,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    _alive(served)


UNRECORDABLE = [
    {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"result": []}},
    {"action": "ANNOTATION_UPDATED", "annotation": {"id": None, "result": []}},
    {"action": "ANNOTATION_CREATED", "annotation": {"id": "  "}},
    {"action": "ANNOTATION_CREATED", "annotation": "7"},
    {"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 1}, {"result": []}]},
    {"action": "ANNOTATIONS_DELETED", "annotations": []},
    {"action": "ANNOTATIONS_DELETED", "annotations": [{"task": 3}]},
    {"action": "START_TRAINING", "project": {"title": "no id"}},
]


@pytest.mark.parametrize("payload", UNRECORDABLE, ids=[f"{p['action']}-{i}" for i, p in enumerate(UNRECORDABLE)])
def test_unrecordable_webhooks_are_refused_not_acknowledged(served, payload):
    r = requests.post(served["url"] + "/webhook", json=payload, timeout=10,
                      headers={"X-Tag-Webhook-Secret": SECRET})
    assert r.status_code == 422 and r.json()["detail"]
    assert served["backend"].spool.depth() == 0


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'],
                         ids=["broken", "array", "binary", "string"])
def test_malformed_bodies_get_400(served, body):
    for path in ("/webhook", "/predict", "/setup"):
        r = requests.post(served["url"] + path, data=body, auth=AUTH, timeout=10,
                          headers={"Content-Type": "application/json",
                                   "X-Tag-Webhook-Secret": SECRET})
        assert r.status_code == 400, path
    _alive(served)


def test_webhook_token_in_query_is_accepted_and_never_logged(served, caplog):
    from tag_backend.request_guard import RedactSecretsFilter

    handler = logging.StreamHandler(stream := io.StringIO())
    handler.addFilter(RedactSecretsFilter())
    logging.getLogger().addHandler(handler)
    werkzeug_logger = logging.getLogger("werkzeug")
    old_level = werkzeug_logger.level
    werkzeug_logger.setLevel(logging.INFO)
    try:
        r = requests.post(served["url"] + f"/webhook?token={SECRET}",
                          json={"action": "PROJECT_UPDATED"}, timeout=10)
        wrong = requests.post(served["url"] + "/webhook?token=wrong&x=1",
                              json={"action": "PROJECT_UPDATED"}, timeout=10)
    finally:
        logging.getLogger().removeHandler(handler)
        werkzeug_logger.setLevel(old_level)
    assert r.status_code == 200 and wrong.status_code == 401
    logged = stream.getvalue()
    assert "/webhook" in logged and SECRET not in logged and "wrong" not in logged


def test_query_token_is_out_of_the_environ_servers_log_from(served):
    """gunicorn's access log formats RAW_URI / QUERY_STRING of the request's environ."""
    from tag_backend.request_guard import TOKEN_ENVIRON_KEY, QuerySecretMiddleware

    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    environ = {"QUERY_STRING": f"a=1&token={SECRET}", "RAW_URI": f"/webhook?a=1&token={SECRET}"}
    QuerySecretMiddleware(app)(environ, lambda *a: None)
    assert SECRET not in json.dumps({k: environ[k] for k in ("QUERY_STRING", "RAW_URI")})
    assert environ["QUERY_STRING"] == "a=1" and seen[TOKEN_ENVIRON_KEY] == SECRET


def test_health_is_open_and_other_routes_are_not(served):
    for path in ("/", "/health"):
        r = requests.get(served["url"] + path, timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "UP", "model_class": "TagBackend"}
    for path in ("/metrics", "/versions"):
        assert requests.get(served["url"] + path, timeout=5).status_code == 401


def test_internal_error_body_carries_only_an_error_id(served, monkeypatch, caplog):
    import tag_backend.app as app_module

    def explode(_config):
        raise RuntimeError("password=hunter2 in /srv/secret/path")

    monkeypatch.setattr(app_module, "parse_label_config", explode)
    with caplog.at_level(logging.ERROR):
        r = requests.post(served["url"] + "/setup", json={"schema": "<View/>"}, auth=AUTH, timeout=10)
    assert r.status_code == 500
    assert "hunter2" not in r.text and "RuntimeError" not in r.text and "/srv" not in r.text
    error_id = r.json()["error_id"]
    assert error_id in r.json()["detail"]
    assert any(error_id in rec.getMessage() and rec.exc_info for rec in caplog.records)
    _alive(served)


def test_one_pixel_image_logs_one_line_not_a_traceback(served, caplog):
    task = {"id": 11, "data": {"image": str(served["root"] / "one-pixel.png")}}
    with caplog.at_level(logging.INFO):
        r = requests.post(served["url"] + "/predict", json={"tasks": [task], "label_config": CONFIG},
                          auth=AUTH, timeout=120)
    assert r.status_code == 200 and r.json()["results"][0]["result"] == []
    about = [rec for rec in caplog.records if "task 11" in rec.getMessage()]
    assert len(about) == 1 and about[0].exc_info is None
    assert "smaller than one" in about[0].getMessage()


def test_transient_image_failure_gives_no_prediction(served, raw_server):
    unavailable = raw_server(_respond("503 Service Unavailable", {"Content-Length": "0"}))
    gone = raw_server(_respond("404 Not Found", {"Content-Length": "0"}))
    slow = raw_server(_silent)
    tasks = [{"id": 21, "data": {"image": unavailable.url + "/a.png"}},
             {"id": 22, "data": {"image": slow.url + "/b.png"}},
             {"id": 23, "data": {"image": gone.url + "/c.png"}}]
    r = requests.post(served["url"] + "/predict", json={"tasks": tasks, "label_config": CONFIG},
                      auth=AUTH, timeout=120)
    results = r.json()["results"]
    assert len(results) == 3  # one item per task, in order (LS's contract)
    assert results[0] == [] and results[1] == []  # LS stores nothing: retried next time
    assert results[2]["result"] == [] and "model_version" in results[2]  # permanent: empty


def test_two_hundred_kb_name_never_becomes_a_concept(served, caplog):
    from database_tools.schema import Entry
    from sqlalchemy import func, select

    backend = served["backend"]
    name = "x" * 200_000
    payload = {
        "action": "ANNOTATION_CREATED", "project": {"id": 3},
        "task": {"id": 31, "data": {"image": str(served["root"] / "ok.png")}},
        "annotation": {"id": 3101, "updated_at": "2024-01-01T00:00:00Z", "result": [
            {"id": "r1", "from_name": "tag", "to_name": "image", "type": "brushlabels",
             "original_width": 96, "original_height": 96,
             "value": {"format": "rle", "rle": [0, 0], "brushlabels": ["object"]}},
            {"id": "r1", "from_name": "name", "to_name": "image", "type": "textarea",
             "value": {"text": [name]}}]},
    }
    r = requests.post(served["url"] + "/webhook", json=payload, timeout=10,
                      headers={"X-Tag-Webhook-Secret": SECRET})
    assert r.status_code == 201
    with caplog.at_level(logging.WARNING):
        assert backend.worker.run_once() is True
    assert any("refused" in rec.getMessage() for rec in caplog.records)
    with backend.services.store.read() as session:
        longest = session.scalar(select(func.max(func.length(Entry.norm))))
    assert longest is not None and longest < 1000
    assert backend.spool.depth() == 0 and not list(backend.spool.failed.glob("*.json"))


def test_correction_worker_does_not_guess_image_urls(served, raw_server):
    trap = raw_server(_respond("200 OK", {"Content-Length": "0"}))
    backend = served["backend"]
    payload = {
        "action": "ANNOTATION_CREATED", "project": {"id": 4, "label_config": CONFIG},
        "task": {"id": 41, "data": {"caption": trap.url + "/not-the-image.png"}},
        "annotation": {"id": 4101, "updated_at": "2024-01-01T00:00:00Z", "result": [{
            "id": "r1", "from_name": "tag", "to_name": "image", "type": "brushlabels",
            "original_width": 4, "original_height": 4,
            "value": {"format": "rle", "rle": [0, 0], "brushlabels": ["thing"]}}]},
    }
    r = requests.post(served["url"] + "/webhook", json=payload, timeout=10,
                      headers={"X-Tag-Webhook-Secret": SECRET})
    assert r.status_code == 201
    assert backend.worker.run_once() is True
    assert trap.hits == 0


def test_spool_retry_keeps_identity(tmp_path):
    from tag_backend.ls.webhook_queue import WebhookSpool

    spool = WebhookSpool(tmp_path / "spool")
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5}}
    first = spool.put(payload)
    item = spool.claim()
    assert spool.put(payload) == first and spool.depth() == 0  # claimed: not stored again
    spool.retry(item, 60)
    assert spool.put(payload) == first
    assert spool.depth() == 1  # waiting for its retry: the re-delivery is the same file
    assert first in next(spool.pending.glob("*.json")).name


def test_server_alive_after_everything(served):
    _alive(served)
    assert requests.get(served["url"] + "/metrics", auth=AUTH, timeout=5).status_code == 200


def test_docker_healthcheck_passes_with_auth_on(served):
    """The Dockerfile's HEALTHCHECK command, run against a server with Basic auth on."""
    import re
    import subprocess
    import sys

    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    command = json.loads(re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", dockerfile).group(1))
    assert command[:2] == ["python", "-c"]
    env = {**os.environ, "TAG_PORT": str(served["port"])}  # the probe follows the port setting
    assert subprocess.run([sys.executable, "-c", command[2]], env=env, timeout=30).returncode == 0


def test_bad_allowlist_entry_is_a_clear_config_error(tmp_path):
    from tag_backend.errors import ConfigError

    with pytest.raises(ConfigError, match="TAG_URL_ALLOWLIST.*http://x/"):
        _fetcher(tmp_path, url_allowlist="10.0.0.0/8, http://x/")
    policy = _fetcher(tmp_path, url_allowlist=" images.lan , .corp.example,fd00::/8").policy
    assert policy.trusts_host("IMAGES.lan", 80) and policy.trusts_host("a.b.corp.example", 443)
    assert policy.trusts_host("corp.example", 80) and not policy.trusts_host("evilcorp.example", 80)
