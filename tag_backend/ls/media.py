"""Fetch a task's image the way Label Studio's own tools do, but capped and fenced.

URLs are resolved with label-studio-sdk's ``get_local_path`` (uploads, Local Files storage,
cloud presigned URLs, plain http(s); label-studio-sdk's ``get_local_path``) with these additions:

* a policy on URL kinds: only what the settings allow (``Settings.allow_http_urls``; plain local
  paths only under ``Settings.allowed_local_roots``), so a task URL cannot read arbitrary files
  of the backend's machine;
* ``/data/local-files/?d=`` images are read from ``LOCAL_FILES_DOCUMENT_ROOT`` (Label Studio's own
  setting, shared with the backend) when the file is there, else downloaded from Label Studio;
* a policy on addresses (:mod:`.url_policy`): downloads connect only to public addresses, the
  Label Studio host and ``TAG_URL_ALLOWLIST``;
* one total deadline and a size cap per fetch (:mod:`.http_fetch`; the SDK has neither);
* personal access tokens are exchanged for access tokens once per process (SDK client).

Downloads are cached under ``<data_dir>/ls-media`` (the SDK never re-downloads a cached URL).
"""

from __future__ import annotations

import logging
import os
import threading
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as sdk_io
from PIL import Image

from ..config import Settings
from ..image_io import open_image
from .errors import MediaError, TransientMediaError
from .http_fetch import CappedSession, FetchGuard
from .url_policy import UrlPolicy

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
# Worth retrying later: request timeout, rate limit, server-side failures.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FetchedImage:
    """A decoded task image and where it came from (for logs)."""

    image: Image.Image
    path: str


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
        self.document_root = (
            Path(settings.local_files_document_root).resolve()
            if settings.local_files_document_root
            else None
        )
        self.policy = UrlPolicy.from_settings(settings)
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
        return self._checked_size(str(path))

    # ------------------------------------------------------------------ fetch
    def _document_root_file(self, url: str) -> str | None:
        """The file of a ``/data/local-files/?d=`` URL under LOCAL_FILES_DOCUMENT_ROOT, if there.

        Same normalisation as Label Studio's ``/data/local-files/`` view (``d`` is relative to
        the root, the last value wins); a path leaving the root (``..``, symlinks) is refused.
        """
        if self.document_root is None or not _is_local_files(url):
            return None
        values = parse_qs(urlparse(url.strip()).query, keep_blank_values=True).get("d")
        relative = posixpath.normpath(values[-1]).lstrip("/") if values and values[-1] else ""
        if not relative or relative == ".":
            raise MediaError("the Local Files URL has no file path (?d=)")
        path = (self.document_root / relative).resolve()
        if self.document_root != path and self.document_root not in path.parents:
            raise MediaError("the Local Files path leaves LOCAL_FILES_DOCUMENT_ROOT: refused")
        return str(path) if path.is_file() else None

    def local_path(self, url: str, task_id=None) -> str:
        """A local file holding the image of ``url`` (downloaded or read from disk)."""
        kind = self.check_allowed(url)
        if kind == "local":
            return self._local_path(url)
        on_disk = self._document_root_file(url) if kind == "label-studio" else None
        if on_disk is not None:
            return self._checked_size(on_disk)
        if kind in ("label-studio", "cloud") and not self.settings.label_studio_url:
            where = (
                " (not found under LOCAL_FILES_DOCUMENT_ROOT)"
                if self.document_root is not None and _is_local_files(url)
                else ""
            )
            raise MediaError(
                f"this image is stored in Label Studio{where}: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY so the backend can download it"
                + ("" if where or not _is_local_files(url) else ", or LOCAL_FILES_DOCUMENT_ROOT")
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        token = self.access_token() if kind != "http" else None
        guard = FetchGuard(self.settings.download_timeout, self.policy)
        session = CappedSession(self.settings.max_download_bytes, guard)
        try:
            with sdk_io.http_session(session):
                path = sdk_io.get_local_path(
                    url.strip(),
                    cache_dir=str(self.cache_dir),
                    hostname=self.settings.label_studio_url or None,
                    access_token=token,
                    task_id=task_id,
                )
        except MediaError:
            raise
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            hint = " (check LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
            error = TransientMediaError if status in _TRANSIENT_STATUS else MediaError
            raise error(f"image download failed: HTTP {status or '?'}{hint}") from None
        except requests.Timeout:
            raise TransientMediaError(
                f"image download timed out after {self.settings.download_timeout:g} s"
            ) from None
        except (requests.ConnectionError, TimeoutError) as exc:
            raise TransientMediaError(
                f"image download failed: {type(exc).__name__}: {_short(exc)}"
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

    def _checked_size(self, path: str) -> str:
        if os.path.getsize(path) > self.settings.max_download_bytes:
            raise MediaError(
                f"image file is larger than {self.settings.max_download_bytes:,} bytes"
            )
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


def _is_local_files(url: str) -> bool:
    return url.strip().startswith("/data/") and "?d=" in url


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
