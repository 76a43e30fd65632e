"""Incoming requests bounded before any route sees them: body size, body time, no secrets in logs.

* **Size**: every route has a byte limit (``Settings.max_request_bytes``, ``max_webhook_bytes``,
  ``max_setup_bytes``). A declared ``Content-Length`` above it is answered 413 before a byte of
  the body is read; a body without one (chunked) is read up to the limit and refused at it
  (werkzeug's ``max_content_length``), so memory never holds more than the limit.
* **Time**: the body must arrive within ``Settings.request_body_timeout`` seconds however slowly
  it trickles. A watchdog shuts the connection's receiving side down at the deadline (which wakes
  the blocked read), and the client gets 408. WSGI servers expose the socket (gunicorn:
  ``gunicorn.socket``, werkzeug: ``werkzeug.socket``); without one only the size limit applies.
* **Secrets**: Label Studio webhooks may carry the shared secret as ``?token=``. Access logs print
  the query string (gunicorn's ``%(r)s``/``%(q)s``, werkzeug's request line), so
  :class:`QuerySecretMiddleware` moves it out of the query string into the WSGI environ before
  anything logs, and :class:`RedactSecretsFilter` masks it in log lines written through
  ``logging`` (the development server logs the raw request line).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl, urlencode

from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

logger = logging.getLogger(__name__)

#: WSGI environ key holding a ``?token=`` value removed from the query string.
TOKEN_ENVIRON_KEY = "tag_backend.query_token"
_SECRET_PARAMS = ("token",)
_TOKEN_IN_TEXT = re.compile(r"([?&](?:%s)=)[^&\s\"']*" % "|".join(_SECRET_PARAMS), re.IGNORECASE)


def body_limit(settings, path: str) -> int:
    """The byte limit of ``path``'s request body."""
    route = path.rstrip("/") or "/"
    if route == "/webhook":
        return settings.max_webhook_bytes
    if route == "/setup":
        return settings.max_setup_bytes
    return settings.max_request_bytes


def check_declared_size(request, settings) -> int:
    """Refuse (413) a declared ``Content-Length`` over the route's limit, reading nothing;
    returns the limit."""
    limit = body_limit(settings, request.path)
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge(
            f"request body of {request.content_length:,} bytes is larger than the limit of "
            f"{limit:,} for {request.path}"
        )
    return limit


def read_body(request, settings) -> bytes:
    """Read and cache ``request``'s body within its size limit and the body deadline.

    Raises werkzeug's ``RequestEntityTooLarge`` (413) or ``RequestTimeout`` (408); later
    ``request.get_data()`` calls return the cached bytes.
    """
    limit = check_declared_size(request, settings)
    # Without Content-Length werkzeug stops silently *at* max_content_length: read one byte
    # more, so a body over the limit is told apart from one exactly at it.
    request.max_content_length = limit + 1
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    watchdog = _BodyWatchdog(sock, settings.request_body_timeout)
    try:
        data = request.get_data(cache=True)
        if len(data) > limit:
            raise RequestEntityTooLarge(
                f"request body is larger than the limit of {limit:,} bytes for {request.path}"
            )
        return data
    except RequestEntityTooLarge:
        raise
    except Exception:  # werkzeug's ClientDisconnected, or the server's own reader error
        if watchdog.fired:  # the body was cut off by the watchdog, not by the client
            raise _timeout(settings) from None
        raise
    finally:
        watchdog.cancel()


def _timeout(settings) -> RequestTimeout:
    return RequestTimeout(
        f"request body not received within {settings.request_body_timeout:g} s "
        "(TAG_REQUEST_BODY_TIMEOUT)"
    )


class _BodyWatchdog:
    """Shuts the socket's receiving side down after ``seconds`` (the response can still go out)."""

    def __init__(self, sock: socket.socket | None, seconds: float) -> None:
        self.fired = False
        self._sock = sock
        self._timer = None
        if sock is not None and seconds > 0:
            self._timer = threading.Timer(seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class QuerySecretMiddleware:
    """WSGI middleware: take ``?token=`` out of ``QUERY_STRING``/``RAW_URI``/``REQUEST_URI``.

    The value is kept in ``environ[TOKEN_ENVIRON_KEY]`` for the webhook check. Servers log from
    the same environ dict after the response (gunicorn), so the access log never sees it.
    """

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING") or ""
        if query and any(p in query.lower() for p in _SECRET_PARAMS):
            pairs = parse_qsl(query, keep_blank_values=True)
            kept = [(k, v) for k, v in pairs if k.lower() not in _SECRET_PARAMS]
            secret = [v for k, v in pairs if k.lower() in _SECRET_PARAMS]
            if secret:
                environ[TOKEN_ENVIRON_KEY] = secret[-1]
                environ["QUERY_STRING"] = urlencode(kept)
                for key in ("RAW_URI", "REQUEST_URI"):
                    if key in environ:
                        environ[key] = redact(environ[key])
        return self.app(environ, start_response)


def redact(text: str) -> str:
    """``text`` with the values of secret query parameters replaced by ``***``."""
    return _TOKEN_IN_TEXT.sub(r"\1***", text)


class RedactSecretsFilter(logging.Filter):
    """Masks secret query parameters in every record (installed on the root handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        if "=" in message and any(p in message.lower() for p in _SECRET_PARAMS):
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True
