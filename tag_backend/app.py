"""The Label Studio ML backend: a Flask 3 app speaking the protocol of Label Studio 1.23.

Routes (Label Studio's ML backend protocol): ``/``, ``/health``, ``/setup``, ``/predict``, ``/webhook``,
``/metrics``, ``/versions``. The heavy runtime (models, store, index) is built once per process
and shared by gunicorn's threads; ``/health`` and ``/setup`` never load models (LS gives
``/setup`` 3 s and calls it before every prediction batch). Webhooks are written to a durable
spool and acknowledged at once (LS waits 1 s); a background worker does the learning.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request

from . import __version__, metrics
from .config import Settings, settings_from_env
from .errors import TagError
from .ls.controls import parse_label_config
from .ls.corrections import CorrectionWorker
from .ls.errors import BackendRequestError, LabelConfigWithoutImage
from .ls.guided import LabelSnapper
from .ls.media import MediaFetcher
from .ls.predictor import PredictContext
from .ls.protocol import TRAIN_ACTIONS, error_body, json_body, parse_predict, parse_setup
from .ls.training import make_reingest
from .ls.webhook_queue import WebhookSpool

logger = logging.getLogger(__name__)

MODEL_CLASS = "TagBackend"
WEBHOOK_SECRET_HEADER = "X-Tag-Webhook-Secret"


class Backend:
    """Process-wide state of the server: runtime, fetcher, snapper, spool and worker."""

    def __init__(self, settings: Settings, runtime=None, *, start_worker: bool = True) -> None:
        from .runtime import get_runtime

        self.settings = settings
        self.runtime = runtime or get_runtime(settings)
        self.fetcher = MediaFetcher(settings)
        self.spool = WebhookSpool(f"{settings.data_dir}/webhook-spool")
        self.worker = CorrectionWorker(
            self.runtime,
            self.spool,
            self.fetcher,
            reingest=make_reingest(self.runtime, self.fetcher),
        )
        self._snapper: LabelSnapper | None = None
        self._lock = threading.Lock()
        self._last_version: str | None = None
        if start_worker:
            self.worker.start()
            try:  # resume queued pre-labelling jobs right after a restart, not at the next /predict
                from .jobs.service import ensure_worker

                ensure_worker(self.runtime, self.fetcher)
            except Exception:
                logger.exception("job worker not started (it starts on the next /predict)")

    @property
    def snapper(self) -> LabelSnapper:
        with self._lock:
            if self._snapper is None:
                self._snapper = LabelSnapper(
                    self.runtime.text_encoder.encode,
                    self.settings.guided_threshold,
                    self.settings.guided_fallback,
                )
            return self._snapper

    def model_version(self) -> str:
        """``Runtime.model_version()``; the last known one if the database is unreachable."""
        try:
            self._last_version = self.runtime.model_version()
        except Exception as exc:
            logger.warning(
                "concept database unreachable for model_version: %s", str(exc).splitlines()[0][:200]
            )
            if self._last_version is None:
                preset = self.settings.preset
                return f"tag-{__version__}-{preset}-db-unavailable"
        return self._last_version

    def warm_up(self) -> None:
        """Load models, store and index in the background so the first /predict is not slow."""

        def run() -> None:
            try:
                _ = self.runtime.pipeline
                logger.info("runtime ready: %s", self.model_version())
            except Exception:
                logger.exception("warm-up failed; the first /predict will retry")

        threading.Thread(target=run, name="tag-warmup", daemon=True).start()


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
    runtime=None,
    *,
    start_worker: bool = True,
    warm_up: bool = False,
) -> Flask:
    """The WSGI app; ``runtime`` may be injected (tests share one across apps)."""
    settings = settings or settings_from_env()
    app = Flask(__name__)
    backend = Backend(settings, runtime, start_worker=start_worker)
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
    settings = backend.settings

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
        try:
            backend.runtime.refresh()  # close the correction loop: newest exemplars and index
        except Exception as exc:
            logger.warning(
                "cannot refresh from the concept database (predicting with the loaded state): %s",
                str(exc).splitlines()[0][:200],
            )
        version = backend.model_version()
        context = PredictContext(
            layout=layout,
            model_version=version,
            fetcher=backend.fetcher,
            snapper=backend.snapper if layout.guided_labels else None,
            max_regions=settings.max_regions,
            polygon_tolerance=settings.polygon_tolerance,
        )
        # --- jobs integration (tag_backend.jobs.budget): answer stored predictions, compute
        # what fits in TAG_PREDICT_BUDGET, queue the rest as a background job (pushed to LS).
        from .jobs.budget import predict_request

        results = predict_request(backend, req, context)
        # --- end jobs integration
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
