"""The Label Studio ML backend: a Flask 3 app speaking the protocol of Label Studio 1.23.

Routes (Label Studio's ML backend protocol): ``/``, ``/health``, ``/ready``, ``/setup``, ``/predict``, ``/webhook``,
``/metrics``, ``/versions``. The process's services (models, store, knowledge; built once in
:func:`create_app`) are shared by gunicorn's threads; ``/health`` and ``/setup`` never load models (LS gives
``/setup`` 3 s and calls it before every prediction batch). Webhooks are written to a durable
spool and acknowledged at once (LS waits 1 s); a background worker does the learning.
"""

from __future__ import annotations

import hmac
import logging
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request

from . import metrics
from .config import Settings, settings_from_env
from .errors import TagError
from .ls.controls import parse_label_config
from .ls.corrections import CorrectionWorker
from .ls.errors import BackendRequestError, LabelConfigWithoutImage
from .ls.predict_route import predict_results
from .ls.protocol import (
    TRAIN_ACTIONS,
    WEBHOOK_SECRET_HEADER,
    error_body,
    json_body,
    parse_predict,
    parse_setup,
)
from .ls.training import make_reingest
from .ls.webhook_db_queue import webhook_queue_for
from .ls.webhook_payload import refuse_unrecordable
from .readiness import ReadinessProbe
from .request_guard import (
    TOKEN_ENVIRON_KEY,
    QuerySecretMiddleware,
    check_declared_size,
    read_body,
)
from .services import Services

logger = logging.getLogger(__name__)

MODEL_CLASS = "TagBackend"
#: Liveness routes: answered without credentials (Docker HEALTHCHECK, load balancers); they say
#: only that the process serves HTTP, nothing about its configuration.
LIVENESS_PATHS = ("/", "/health")


#: Longest a request thread waits for the GIL held by a background thread (see Backend).
GIL_SWITCH_SECONDS = 0.001


class Backend:
    """The server's state: the process's services, the webhook spool and the correction worker."""

    def __init__(self, services: Services, *, start_worker: bool = True) -> None:
        self.services = services
        self.settings = services.settings
        self.spool = webhook_queue_for(self.settings, services)  # PostgreSQL: shared by replicas
        self.worker = CorrectionWorker(services, self.spool, reingest=make_reingest(services))
        if start_worker:
            # Request threads share the GIL with the correction and job threads, whose database
            # and bookkeeping work is pure Python. A thread that wants the GIL waits up to one
            # switch interval each time it comes back from I/O (socket, write, fsync); at the
            # default 5 ms a webhook acknowledgement waited tens of ms behind the correction
            # worker (docs/security.md, soak benchmark). 1 ms bounds each wait at a fifth.
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_SECONDS))
            self.worker.start()
            try:  # resume queued pre-labelling jobs right after a restart, not at the next /predict
                services.jobs.ensure_worker()
            except Exception:
                logger.exception("job worker not started (it starts on the next /predict)")

    def model_version(self) -> str:
        return self.services.model_version()

    def warm_up(self) -> None:
        """Load models, store and index in the background so the first /predict is not slow."""
        self.services.wait_until_loaded(0)


def _check_basic_auth(settings: Settings) -> Response | None:
    user, password = settings.basic_auth_user, settings.basic_auth_pass
    if not user and not password:
        return None
    auth = request.authorization
    ok = (
        auth is not None
        and auth.type == "basic"
        and hmac.compare_digest((auth.username or "").encode(), (user or "").encode())
        and hmac.compare_digest((auth.password or "").encode(), (password or "").encode())
    )
    if ok:
        return None
    response = jsonify(error_body(401, "authentication required"))
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="Login required"'
    return response


def _webhook_secret_ok(settings: Settings) -> bool:
    secret = settings.webhook_secret
    if not secret:
        return False
    given = (
        request.headers.get(WEBHOOK_SECRET_HEADER)
        or request.environ.get(TOKEN_ENVIRON_KEY)  # ?token=, kept out of the access log
        or ""
    )
    return hmac.compare_digest(given.encode(), secret.encode())


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    start_worker: bool = True,
    warm_up: bool = False,
) -> Flask:
    """The WSGI app on ``services`` (built from ``settings``, default: the environment, when
    not given). ``start_worker``: start the correction and job workers now."""
    if services is not None and settings is not None and settings != services.settings:
        raise ValueError("create_app: pass settings or services, not both")
    services = services or Services(settings or settings_from_env())
    app = Flask(__name__)
    backend = Backend(services, start_worker=start_worker)
    app.extensions["tag_backend"] = backend
    if warm_up:
        backend.warm_up()
    _register_hooks(app, backend)
    _register_routes(app, backend)
    return app


def _register_hooks(app: Flask, backend: Backend) -> None:
    settings = backend.settings
    app.wsgi_app = QuerySecretMiddleware(app.wsgi_app)

    @app.before_request
    def authenticate():
        g.start = time.perf_counter()
        if request.method in ("GET", "HEAD") and request.path in LIVENESS_PATHS:
            return None
        check_declared_size(request, settings)  # 413 before auth and before reading anything
        denied = _authenticate(settings)
        if denied is not None:
            return denied
        if request.method in ("POST", "PUT", "PATCH"):
            read_body(request, settings)  # 413 / 408 here, before any route parses it
        return None

    @app.errorhandler(BackendRequestError)
    def bad_request(exc: BackendRequestError):
        logger.warning("%s %s: %s", request.method, request.path, exc)
        return jsonify(error_body(exc.status, str(exc))), exc.status

    @app.errorhandler(TagError)
    def tag_error(exc: TagError):
        return _internal_error(exc)

    @app.errorhandler(404)
    def not_found(_exc):
        return jsonify(error_body(404, f"no route {request.path}")), 404

    @app.errorhandler(405)
    def not_allowed(_exc):
        return jsonify(error_body(405, f"{request.method} not allowed on {request.path}")), 405

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if hasattr(exc, "code") and hasattr(exc, "get_response"):  # werkzeug HTTP errors
            if exc.code in (408, 413):
                logger.warning("%s %s refused: %s", request.method, request.path, exc.description)
            return jsonify(error_body(exc.code, exc.description)), exc.code
        return _internal_error(exc)


def _authenticate(settings: Settings) -> Response | None:
    if request.path.rstrip("/") == "/webhook" and _webhook_secret_ok(settings):
        return None  # LS webhooks carry no basic auth: the shared secret stands in for it
    if request.path.rstrip("/") == "/webhook" and settings.webhook_secret:
        denied = _check_basic_auth(settings)
        if denied is not None or not (settings.basic_auth_user or settings.basic_auth_pass):
            response = jsonify(error_body(401, "webhook secret missing or wrong"))
            response.status_code = 401
            return response
        return None
    return _check_basic_auth(settings)


def _internal_error(exc: BaseException) -> tuple[Response, int]:
    """500 with an error id only: exception text may hold paths, URLs or credentials, so it
    goes to the log (with the id, to find it) and never into the response."""
    error_id = uuid.uuid4().hex[:12]
    if isinstance(exc, TagError):  # our own one-line message says it all
        logger.error("%s %s failed [error id %s]: %s", request.method, request.path, error_id, exc)
    else:
        logger.error(
            "%s %s failed [error id %s]", request.method, request.path, error_id, exc_info=exc
        )
    body = error_body(500, f"internal error (error id {error_id}; details in the backend log)")
    return jsonify({**body, "error_id": error_id}), 500


def _register_routes(app: Flask, backend: Backend) -> None:
    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": MODEL_CLASS})

    readiness = ReadinessProbe(backend.services)

    @app.get("/ready")
    def ready():
        """Readiness for load balancers: models loaded, database reachable, index current."""
        state = readiness.check()
        return jsonify(state.body()), 200 if state.ready else 503

    @app.post("/setup")
    def setup():
        req = parse_setup(json_body(request.get_data()))
        if req.schema:
            try:
                parse_label_config(req.schema)  # LabelConfigError -> 400 with the reason
            except LabelConfigWithoutImage as exc:
                # A new project: the model may be connected before the labeling interface is set.
                logger.warning("/setup for project %s: %s; /predict will refuse it until an <Image> is added",
                               req.project, exc)
        return jsonify({"model_version": backend.model_version()})

    @app.post("/predict")
    def predict():
        started = time.perf_counter()
        req = parse_predict(json_body(request.get_data()))
        layout = parse_label_config(req.label_config)
        # Stored predictions, what fits in TAG_PREDICT_BUDGET, a background job for the rest.
        results, version = predict_results(backend.services, req, layout)
        metrics.PREDICT_SECONDS.observe(time.perf_counter() - started)
        return jsonify({"results": results, "model_version": version})

    @app.post("/webhook")
    def webhook():
        started = time.perf_counter()
        body = json_body(request.get_data())
        action = str(body.get("action") or "")
        metrics.WEBHOOK_EVENTS.labels(action=action if action in TRAIN_ACTIONS else "other").inc()
        if action not in TRAIN_ACTIONS:
            return jsonify({"status": "Unknown event"}), 200
        refuse_unrecordable(body, can_reingest=backend.worker.reingest is not None)
        queued = backend.spool.put(dict(body))
        backend.worker.wake()
        metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        return jsonify({"result": {"queued": queued, "action": action}, "status": "ok"}), 201

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/versions")
    def versions():
        """Every knowledge release as a model_version, newest first (Label Studio's version
        picker); the current one alone when the database is unreachable."""
        try:
            from database_tools.releases import list_releases

            # r0 is the knowledge before the first release: predictions may carry it too
            numbers = [r.number for r in list_releases(backend.services.store)] + [0]
            found = [backend.services.release_version(n) for n in numbers]
        except Exception as exc:  # noqa: BLE001 - a listing must not fail the page
            logger.warning("cannot list knowledge releases: %s", str(exc).splitlines()[0][:200])
            found = [backend.model_version()]
        return jsonify({"versions": found, "message": ""})


def app_backend(app: Flask) -> Any:
    """The :class:`Backend` behind an app (tests, benchmarks)."""
    return app.extensions["tag_backend"]
