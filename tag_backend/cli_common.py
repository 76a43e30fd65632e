"""Options shared by the `tag-backend` commands, and error handling for all of them."""
from __future__ import annotations

import functools
import logging

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
