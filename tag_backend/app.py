"""The Label Studio ML backend: a Flask 3 app speaking the protocol of Label Studio 1.23.

Routes (Label Studio's ML backend protocol): ``/``, ``/health``, ``/setup``, ``/predict``, ``/webhook``,
``/metrics``, ``/versions``. The process's services (models, store, knowledge; built once in
:func:`create_app`) are shared by gunicorn's threads; ``/health`` and ``/setup`` never load models (LS gives
``/setup`` 3 s and calls it before every prediction batch). Webhooks are written to a durable
spool and acknowledged at once (LS waits 1 s); a background worker does the learning.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request

from . import metrics
from .config import Settings, settings_from_env
from .errors import TagError
from .ls.controls import parse_label_config
from .ls.corrections import CorrectionWorker
from .ls.errors import BackendRequestError, LabelConfigWithoutImage
from .ls.predict_route import predict_results
from .ls.protocol import TRAIN_ACTIONS, error_body, json_body, parse_predict, parse_setup
from .ls.training import make_reingest
from .ls.webhook_queue import WebhookSpool
from .services import Services

logger = logging.getLogger(__name__)

MODEL_CLASS = "TagBackend"
WEBHOOK_SECRET_HEADER = "X-Tag-Webhook-Secret"


class Backend:
    """The server's state: the process's services, the webhook spool and the correction worker."""

    def __init__(self, services: Services, *, start_worker: bool = True) -> None:
        self.services = services
        self.settings = services.settings
        self.spool = WebhookSpool(f"{self.settings.data_dir}/webhook-spool")
        self.worker = CorrectionWorker(services, self.spool, reingest=make_reingest(services))
        if start_worker:
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
    given = request.headers.get(WEBHOOK_SECRET_HEADER) or request.args.get("token") or ""
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

    @app.before_request
    def authenticate():
        g.start = time.perf_counter()
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

    @app.errorhandler(BackendRequestError)
    def bad_request(exc: BackendRequestError):
        logger.warning("%s %s: %s", request.method, request.path, exc)
        return jsonify(error_body(exc.status, str(exc))), exc.status

    @app.errorhandler(TagError)
    def tag_error(exc: TagError):
        logger.error("%s %s: %s", request.method, request.path, exc)
        return jsonify(error_body(500, str(exc))), 500

    @app.errorhandler(404)
    def not_found(_exc):
        return jsonify(error_body(404, f"no route {request.path}")), 404

    @app.errorhandler(405)
    def not_allowed(_exc):
        return jsonify(error_body(405, f"{request.method} not allowed on {request.path}")), 405

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if hasattr(exc, "code") and hasattr(exc, "get_response"):  # werkzeug HTTP errors
            return jsonify(error_body(exc.code, exc.description)), exc.code
        logger.exception("%s %s failed", request.method, request.path)
        return jsonify(error_body(500, f"{type(exc).__name__}: {exc}")), 500


def _register_routes(app: Flask, backend: Backend) -> None:
    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": MODEL_CLASS})

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
        queued = backend.spool.put(dict(body))
        backend.worker.wake()
        metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        return jsonify({"result": {"queued": queued, "action": action}, "status": "ok"}), 201

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/versions")
    def versions():
        return jsonify({"versions": [backend.model_version()], "message": ""})


def app_backend(app: Flask) -> Any:
    """The :class:`Backend` behind an app (tests, benchmarks)."""
    return app.extensions["tag_backend"]
