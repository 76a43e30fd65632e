"""One bounded HTTP download: a total deadline, a size cap, and only policy-approved addresses.

``requests`` has no total timeout: its read timeout restarts with every byte, so a server
trickling one byte per second holds a download for as long as it likes. Here one
:class:`FetchGuard` covers a whole fetch (DNS, connect, headers, body, every redirect and the
SDK's fallback URL): connect and resolution waits shrink to the time left, and a watchdog timer
shuts the connection's socket down when the deadline passes, which wakes any blocked read. The
guard also decides (through :class:`~.url_policy.UrlPolicy`) which address each connection goes
to and connects to that very address, so what was checked is what is used.

urllib3 has no hook for "connect to this address but verify TLS for that name", so the
connection classes below override ``_new_conn`` (the one method that opens the socket); TLS
set-up, SNI and certificate checks stay urllib3's own, for the URL's host name.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from .errors import MediaError, TransientMediaError
from .url_policy import UrlPolicy

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
MAX_CONNECT_SECONDS = 10.0
MAX_REDIRECTS = 5


class DownloadTimeout(TransientMediaError):
    """The fetch's total deadline passed."""


class DownloadTooLarge(MediaError):
    """The response is bigger than the size cap."""


class FetchGuard:
    """Deadline, watchdog and address policy of one fetch (one session)."""

    def __init__(self, seconds: float, policy: UrlPolicy) -> None:
        self.seconds = seconds
        self.policy = policy
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        """Seconds left; :class:`DownloadTimeout` when none are."""
        left = self.expires - time.monotonic()
        if left <= 0 or self.expired:
            raise self.timeout_error()
        return left

    def timeout_error(self) -> DownloadTimeout:
        return DownloadTimeout(
            f"image download took more than {self.seconds:g} s (TAG_DOWNLOAD_TIMEOUT)"
        )

    def register(self, sock: socket.socket) -> None:
        """Watch ``sock``: it is shut down when the deadline passes."""
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _shutdown(sock)
        raise self.timeout_error()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    # shutdown() (not close()) wakes a recv() blocked in another thread on Linux and macOS.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _GuardedConnectionMixin:
    """Opens the socket to the policy-approved address of ``self.host``, within the deadline."""

    guard: FetchGuard

    def _new_conn(self) -> socket.socket:
        guard = self.guard
        address = guard.policy.pick_address(self.host, self.port, guard.remaining())
        timeout = min(guard.remaining(), MAX_CONNECT_SECONDS)
        if isinstance(self.timeout, (int, float)):
            timeout = min(timeout, self.timeout)
        try:
            sock = urllib3_connection.create_connection(
                (address, self.port), timeout,
                source_address=self.source_address, socket_options=self.socket_options,
            )
        except socket.timeout as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect to {self.host}: {exc}") from exc
        guard.register(sock)
        return sock


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections all go through one :class:`FetchGuard`."""

    def __init__(self, guard: FetchGuard) -> None:
        self.guard = guard  # set before HTTPAdapter.__init__ builds the pool manager
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        attrs = {"guard": self.guard}
        http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), attrs)
        https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }


class CappedSession(requests.Session):
    """A session for one fetch: GETs bounded by ``guard`` and ``max_bytes``.

    Environment proxies are not used (``trust_env=False``): a proxy would be the address
    connected to, and the policy must judge the image host itself.
    """

    def __init__(self, max_bytes: int, guard: FetchGuard) -> None:
        super().__init__()
        self.max_bytes, self.guard = max_bytes, guard
        self.trust_env = False
        adapter = GuardedAdapter(guard)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def get(self, url, **kwargs):  # noqa: D102 - same contract as requests
        response = self._follow(url, kwargs)
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise DownloadTooLarge(
                f"image is {int(declared):,} bytes, more than the limit of "
                f"{self.max_bytes:,} (TAG_MAX_DOWNLOAD_BYTES)"
            )
        if response.status_code >= 400:
            response.close()
            return response  # the SDK calls raise_for_status (and may try its fallback URL)
        response._content = self._read_body(response)
        response._content_consumed = True
        return response

    def _follow(self, url: str, kwargs: dict) -> requests.Response:
        """GET ``url`` following redirects here, not in requests: its redirect handling reads
        each 3xx body whole into memory, with no size cap."""
        kwargs["stream"] = True
        kwargs["allow_redirects"] = False
        headers = dict(kwargs.pop("headers", None) or {})
        for _hop in range(MAX_REDIRECTS + 1):
            left = self.guard.remaining()
            kwargs["timeout"] = (min(left, MAX_CONNECT_SECONDS), left)
            try:
                response = super().get(url, headers=headers, **kwargs)
            except requests.RequestException:
                if self.guard.expired:
                    raise self.guard.timeout_error() from None
                raise
            if not response.is_redirect:
                return response
            target = urljoin(response.url, response.headers["Location"])
            response.close()
            if self.should_strip_auth(url, target):
                headers.pop("Authorization", None)  # never send the LS token to another host
            url = target
        raise MediaError(f"image URL redirects more than {MAX_REDIRECTS} times")

    def _read_body(self, response: requests.Response) -> bytes:
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                size += len(chunk)
                if size > self.max_bytes:
                    raise DownloadTooLarge(
                        f"image download exceeded {self.max_bytes:,} bytes (TAG_MAX_DOWNLOAD_BYTES)"
                    )
                self.guard.remaining()
                chunks.append(chunk)
        except (requests.RequestException, OSError):
            if self.guard.expired:
                raise self.guard.timeout_error() from None
            raise
        finally:
            response.close()
        self.guard.remaining()
        return b"".join(chunks)

    def close(self) -> None:
        super().close()
        self.guard.close()
