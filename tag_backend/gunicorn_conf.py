"""gunicorn settings from the backend's own settings: ``gunicorn -c python:tag_backend.gunicorn_conf``.

Lets ``TAG_PORT`` / ``TAG_WORKERS`` / ``TAG_THREADS`` (and their Label Studio spellings ``PORT``,
``WORKERS``, ``THREADS``) size the server like every other setting. ``GUNICORN_CMD_ARGS`` and
command-line flags still override these values (gunicorn applies them after the config file).
No ``preload_app``: CUDA cannot be re-initialised in forked workers.
"""
from __future__ import annotations

from tag_backend.config import settings_from_env

_settings = settings_from_env()

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
timeout = 0  # a /predict may compute for TAG_PREDICT_BUDGET seconds; gunicorn must not kill it
accesslog = "-"
