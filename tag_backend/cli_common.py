"""Options shared by the `tag-backend` commands, and error handling for all of them."""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading

import click

from .config import Settings, settings_from_env
from .errors import TagError
from .presets import PRESETS


def engine_options(fn):
    """--preset/--dino/--clip/--clip-pretrained/--db/--index-dir/--device (each has an env var)."""
    options = [
        click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Preset [env TAG_PRESET]."),
        click.option("--dino", "dino_model", metavar="ID_OR_DIR", help="DINOv2 hub id or local dir [TAG_DINO_MODEL]."),
        click.option("--clip", "clip_model", metavar="NAME|local-dir:DIR", help="open_clip model [TAG_CLIP_MODEL]."),
        click.option("--clip-pretrained", metavar="TAG_OR_FILE", help="open_clip weights [TAG_CLIP_PRETRAINED]."),
        click.option("--db", "db_url", metavar="URL", help="Concept database URL [TAG_DB_URL]."),
        click.option("--index-dir", metavar="DIR", help="Concept index directory [TAG_INDEX_DIR]."),
        click.option("--device", help="cpu, cuda or cuda:N [TAG_DEVICE]."),
        click.option("--dense-method", type=click.Choice(["gem", "naclip", "plain"]),
                     help="Dense CLIP features: gem (paper), naclip, plain [TAG_DENSE_METHOD]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def settings_with(**flags) -> Settings:
    """Environment settings with the flags the user set on the command line."""
    return settings_from_env().replace(**{k: v for k, v in flags.items() if v is not None})


def handle_errors(fn):
    """Turn library errors into one clear line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TagError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            try:
                from database_tools.errors import DatabaseToolsError
            except ImportError:  # pragma: no cover
                raise exc
            if isinstance(exc, DatabaseToolsError):
                raise click.ClickException(str(exc)) from None
            raise

    return wrapper


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            force=True)
    from .request_guard import RedactSecretsFilter

    for handler in logging.getLogger().handlers:  # also werkzeug's request lines (?token=)
        handler.addFilter(RedactSecretsFilter())


_skip_teardown = threading.Event()


def skip_teardown() -> None:
    """Let this process end without the interpreter's teardown once the command returns.

    For a command that has written its output and closed what it opened (``predict``): freeing
    the torch and OpenVINO runtimes and every module at exit took ~1.6 s of a ~9 s run
    (docs/inference-backends.md). Skipped with it: atexit handlers; the CRF helper process
    ends with its parent anyway (:mod:`tag_backend.stages.crf_worker`). Takes effect only
    when the command line is the process (:class:`ProcessGroup`), never under a test runner.
    """
    _skip_teardown.set()


class ProcessGroup(click.Group):
    """The root group: called as the process's command line (console script, ``python -m``),
    it ends the process at once when the command asked for it (:func:`skip_teardown`).

    Test runners call ``.main`` and are unaffected."""

    def __call__(self, *args, **kwargs):
        try:
            return self.main(*args, **kwargs)
        except SystemExit as exc:
            if not _skip_teardown.is_set():
                raise
            code = exc.code
        if not isinstance(code, int):  # sys.exit semantics: None is 0, a message goes to stderr
            if code is not None:
                print(code, file=sys.stderr)
            code = 0 if code is None else 1
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        logging.shutdown()
        os._exit(code)
