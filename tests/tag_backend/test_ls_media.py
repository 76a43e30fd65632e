"""Image fetching: URL policy, size cap, timeouts, token headers, caching."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tag_backend.config import Settings
from tag_backend.ls.errors import MediaError
from tag_backend.ls.media import MediaFetcher

from ls_helpers import FakeServer


def _png(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


def _fetcher(tmp_path, **kw) -> MediaFetcher:
    kw.setdefault("url_allowlist", "127.0.0.1")  # the test server is on loopback
    return MediaFetcher(Settings(data_dir=str(tmp_path / "d"), **kw))


def test_plain_http_download_cached(server, tmp_path):
    server.routes["/a.png"] = (200, "image/png", _png(), 0)
    f = _fetcher(tmp_path)
    img = f.fetch(server.url + "/a.png")
    assert img.image.size == (64, 48)
    server.routes.pop("/a.png")
    assert f.fetch(server.url + "/a.png").image.size == (64, 48)  # from the cache
    assert "Authorization" not in server.headers[0]


@pytest.mark.parametrize(
    "route,match",
    [
        ((404, "text/plain", b"x", 0), "HTTP 404"),
        ((403, "text/plain", b"x", 0), "HTTP 403.*API_KEY"),
        ((200, "text/html", b"<html>hello</html>", 0), "not an image"),
        ((200, "image/png", b"\x89PNG" + b"0" * 5000, 0), "image"),
    ],
)
def test_bad_http_images(server, tmp_path, route, match):
    server.routes["/b.png"] = route
    with pytest.raises(MediaError, match=match):
        _fetcher(tmp_path).fetch(server.url + "/b.png")


def test_size_cap_and_timeout(server, tmp_path):
    server.routes["/big.png"] = (200, "image/png", _png((600, 600)) + b"\0" * 20000, 0)
    with pytest.raises(MediaError, match="TAG_MAX_DOWNLOAD_BYTES"):
        _fetcher(tmp_path, max_download_bytes=10_000).fetch(server.url + "/big.png")
    server.routes["/slow.png"] = (200, "image/png", _png(), 3)
    with pytest.raises(MediaError, match="timed out|TAG_DOWNLOAD_TIMEOUT"):
        _fetcher(tmp_path, download_timeout=0.5).fetch(server.url + "/slow.png")


def test_huge_pixel_count_refused(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (5000, 5000)).save(path)
    f = MediaFetcher(
        Settings(
            data_dir=str(tmp_path / "d"),
            allowed_local_roots=str(tmp_path),
            max_image_pixels=1_000_000,
        )
    )
    with pytest.raises(MediaError, match="pixels"):
        f.fetch(str(path))


def test_policy_refuses_local_files_and_schemes(tmp_path):
    f = _fetcher(tmp_path, allow_http_urls=False)
    for url, match in [
        ("/etc/passwd", "TAG_ALLOWED_LOCAL_ROOTS"),
        ("file:///etc/hosts", "ALLOWED"),
        ("ftp://x/y.png", "scheme"),
        ("http://x/y.png", "TAG_ALLOW_HTTP_URLS"),
        ("", "no image URL"),
        ("/data/upload/1/a.png", "LABEL_STUDIO_URL"),
    ]:
        with pytest.raises(MediaError, match=match):
            f.fetch(url)
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "ok.png").write_bytes(_png())
    f2 = MediaFetcher(Settings(data_dir=str(tmp_path / "d"), allowed_local_roots=str(root)))
    assert f2.fetch(str(root / "ok.png")).image.size == (64, 48)
    with pytest.raises(MediaError, match="outside"):
        f2.fetch(str(root / ".." / "imgs" / ".." / "x.png"))


def test_label_studio_upload_sends_legacy_token(server, tmp_path):
    server.routes["/storage-data/uploaded/?filepath=upload/3/c.png"] = (200, "image/png", _png(), 0)
    f = _fetcher(tmp_path, label_studio_url=server.url, label_studio_api_key="abc123")
    assert f.fetch("/data/upload/3/c.png", task_id=5).image.size == (64, 48)
    assert server.headers[-1]["Authorization"] == "Token abc123"
    with pytest.raises(MediaError, match="HTTP 404"):
        f.fetch("/data/upload/3/missing.png", task_id=6)
