"""WSGI entry point for gunicorn: ``gunicorn -c python:tag_backend.gunicorn_conf tag_backend.wsgi:app``.

One worker with several threads is the intended layout (as in Label Studio's example
backends): models are loaded once per process and shared by threads. Do not use ``--preload`` with CUDA (forked
workers cannot re-initialise CUDA); nothing heavy is loaded at import time anyway.
"""

from __future__ import annotations

from .app import create_app
from .cli_common import configure_logging
from .config import settings_from_env

_settings = settings_from_env()
configure_logging(_settings.log_level, _settings.log_format)
app = create_app(_settings, warm_up=True)
