"""Fetch a task's image the way Label Studio's own tools do, but capped and fenced.

URLs are resolved with label-studio-sdk's ``get_local_path`` (uploads, Local Files storage,
cloud presigned URLs, plain http(s); label-studio-sdk's ``get_local_path``) with three additions:

* a policy: only the URL kinds the settings allow (``Settings.allow_http_urls``; plain local
  paths only under ``Settings.allowed_local_roots``; ``/data/local-files/`` only under the SDK's
  ``LOCAL_FILES_DOCUMENT_ROOT``, else downloaded from Label Studio with the token), so a task
  URL cannot read arbitrary files of the backend's machine;
* a size cap and a wall-clock timeout on every download (the SDK has neither);
* personal access tokens are exchanged for access tokens once per process (SDK client).

Downloads are cached under ``<data_dir>/ls-media`` (the SDK never re-downloads a cached URL).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as sdk_io
from PIL import Image

from ..config import Settings
from ..image_io import open_image
from .errors import MediaError

logger = logging.getLogger(__name__)

_LS_PREFIXES = (
    "/data/upload",
    "data/upload",
    "upload/",
    "/upload/",
    "/storage-data/",
    "storage-data/",
)
_CLOUD = ("s3:", "gs:", "azure-blob:")
_CACHE_MAX_FILES = 5000


@dataclass(frozen=True)
class FetchedImage:
    """A decoded task image and where it came from (for logs)."""

    image: Image.Image
    path: str


class CappedSession(requests.Session):
    """A session whose GETs stop at ``max_bytes`` and ``timeout`` seconds of wall-clock time."""

    def __init__(self, max_bytes: int, timeout: float) -> None:
        super().__init__()
        self.max_bytes, self.timeout = max_bytes, timeout

    def get(self, url, **kwargs):  # noqa: D102 - same contract as requests
        kwargs.setdefault("timeout", (min(self.timeout, 10.0), self.timeout))
        kwargs["stream"] = True
        start = time.monotonic()
        response = super().get(url, **kwargs)
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise MediaError(
                f"image is {int(declared):,} bytes, more than the limit of "
                f"{self.max_bytes:,} (TAG_MAX_DOWNLOAD_BYTES)"
            )
        if response.status_code >= 400:
            return response  # the SDK calls raise_for_status (and may try its fallback URL)
        chunks, size = [], 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                response.close()
                raise MediaError(
                    f"image download exceeded {self.max_bytes:,} bytes (TAG_MAX_DOWNLOAD_BYTES)"
                )
            if time.monotonic() - start > self.timeout:
                response.close()
                raise MediaError(
                    f"image download took more than {self.timeout:g} s (TAG_DOWNLOAD_TIMEOUT)"
                )
            chunks.append(chunk)
        response._content = b"".join(chunks)
        response._content_consumed = True
        return response


class MediaFetcher:
    """Resolves, downloads (capped, cached) and decodes task images for one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache_dir = Path(settings.data_dir) / "ls-media"
        self.local_roots = [
            Path(p).resolve()
            for p in (settings.allowed_local_roots or "").split(os.pathsep)
            if p.strip()
        ]
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._downloads = 0

    # ------------------------------------------------------------------ tokens
    def access_token(self) -> str | None:
        """The token to send: legacy tokens as-is, a PAT exchanged for an access token."""
        key = self.settings.label_studio_api_key
        if not key or not self.settings.label_studio_url:
            return key
        with self._token_lock:
            try:
                from label_studio_sdk.tokens.client_ext import TokensClientExt

                if self._token is None or _jwt_expired(self._token):
                    client = TokensClientExt(self.settings.label_studio_url.rstrip("/"), key)
                    self._token = client.api_key
            except Exception as exc:
                raise MediaError(
                    f"LABEL_STUDIO_API_KEY was refused by {self.settings.label_studio_url}"
                    f" ({type(exc).__name__}); create a new personal access token"
                ) from None
            return self._token

    # ------------------------------------------------------------------ policy
    def check_allowed(self, url: str) -> str:
        """Classify ``url`` and refuse kinds the settings do not allow; returns the kind."""
        if not isinstance(url, str) or not url.strip():
            raise MediaError("the task has no image URL")
        url = url.strip()
        parsed = urlparse(url)
        if url.startswith(_LS_PREFIXES) or (url.startswith("/data/") and "?d=" in url):
            return "label-studio"
        if url.startswith(_CLOUD):
            return "cloud"
        if parsed.scheme in ("http", "https"):
            if not self.settings.allow_http_urls:
                raise MediaError(
                    "plain http(s) image URLs are disabled (TAG_ALLOW_HTTP_URLS=false)"
                )
            return "http"
        if parsed.scheme in ("", "file") and (
            parsed.path.startswith("/") or parsed.scheme == "file"
        ):
            return "local"
        raise MediaError(f"unsupported image URL scheme {parsed.scheme or url[:20]!r}")

    def _local_path(self, url: str) -> str:
        path = Path(urlparse(url).path if url.startswith("file:") else url).resolve()
        if not any(path == root or root in path.parents for root in self.local_roots):
            raise MediaError(
                "local image paths are only read under TAG_ALLOWED_LOCAL_ROOTS "
                f"({'none configured' if not self.local_roots else 'path is outside'})"
            )
        if not path.is_file():
            raise MediaError(f"local image not found: {path.name}")
        if path.stat().st_size > self.settings.max_download_bytes:
            raise MediaError(
                f"image file is larger than {self.settings.max_download_bytes:,} bytes"
            )
        return str(path)

    # ------------------------------------------------------------------ fetch
    def local_path(self, url: str, task_id=None) -> str:
        """A local file holding the image of ``url`` (downloaded or read from disk)."""
        kind = self.check_allowed(url)
        if kind == "local":
            return self._local_path(url)
        if kind in ("label-studio", "cloud") and not self.settings.label_studio_url:
            raise MediaError(
                "this image is stored in Label Studio: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY so the backend can download it"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        session = CappedSession(self.settings.max_download_bytes, self.settings.download_timeout)
        try:
            with sdk_io.http_session(session):
                path = sdk_io.get_local_path(
                    url.strip(),
                    cache_dir=str(self.cache_dir),
                    hostname=self.settings.label_studio_url or None,
                    access_token=self.access_token() if kind != "http" else None,
                    task_id=task_id,
                )
        except MediaError:
            raise
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = " (check LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
            raise MediaError(f"image download failed: HTTP {status}{hint}") from None
        except requests.Timeout:
            raise MediaError(
                f"image download timed out after {self.settings.download_timeout:g} s"
            ) from None
        except (requests.RequestException, OSError, ValueError) as exc:
            raise MediaError(
                f"image download failed: {type(exc).__name__}: {_short(exc)}"
            ) from None
        except (
            Exception
        ) as exc:  # the SDK raises bare Exception for e.g. cloud URLs without task id
            raise MediaError(f"cannot resolve image URL: {_short(exc)}") from None
        finally:
            session.close()
        self._maybe_prune()
        return path

    def fetch(self, url: str, task_id=None) -> FetchedImage:
        """Download (if needed) and decode; :class:`MediaError` with a one-line reason otherwise."""
        path = self.local_path(url, task_id)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise MediaError("downloaded image vanished from the cache") from None
        if size > self.settings.max_download_bytes:
            raise MediaError(
                f"image file is larger than {self.settings.max_download_bytes:,} bytes"
            )
        try:
            image = open_image(path, self.settings.max_image_pixels)
        except Exception as exc:
            _discard_cached(path, self.cache_dir)
            raise MediaError(str(exc).replace(path, Path(path).name)) from None
        return FetchedImage(image=image, path=path)

    def _maybe_prune(self) -> None:
        """Keep the download cache bounded: drop the oldest files beyond a count."""
        self._downloads += 1
        if self._downloads % 100:
            return
        try:
            files = sorted(self.cache_dir.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in files[: max(0, len(files) - _CACHE_MAX_FILES)]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot prune the image cache %s: %s", self.cache_dir, exc)


def _discard_cached(path: str, cache_dir: Path) -> None:
    """Remove a cached file that did not decode, so a fixed upstream file is fetched again."""
    p = Path(path)
    if cache_dir in p.parents:
        p.unlink(missing_ok=True)


def _jwt_expired(token: str) -> bool:
    try:
        import jwt

        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except Exception:
        return False  # legacy token: never expires
    return exp is not None and exp - 30 < time.time()


def _short(exc: BaseException, limit: int = 200) -> str:
    """An exception message without query strings (they may carry signed-URL secrets)."""
    text = str(exc).split("?")[0]
    return text[:limit]
