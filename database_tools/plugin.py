"""How ``tag-db`` gets a text encoder without importing the application that provides one.

``database_tools`` is the lower layer: it never imports the engine (``tag_backend``). The engine
declares an entry point in the group :data:`ENTRY_POINT_GROUP` (``pyproject.toml``) naming a
zero-argument callable that returns an :class:`EncoderProvider`: the configured text encoder and
the database defaults that go with it (the same database and index directory the engine serves
from). ``tag-db --encoder NAME`` picks one; without it the only installed provider is used.
Commands that encode nothing (import, curation, bundles) work with no provider at all as long as
``--db`` is given.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, runtime_checkable

from .embedding import TextEncoder
from .errors import EncoderUnavailable

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tag_db.text_encoders"


@dataclass(frozen=True)
class DatabaseDefaults:
    """Where the provider's application keeps its data; ``tag-db`` options override each field."""

    db_url: str
    index_dir: str
    new_concept_status: str = "active"


@runtime_checkable
class EncoderProvider(Protocol):
    """What an installed application gives ``tag-db``.

    ``defaults()`` must be cheap (it runs for every command); ``text_encoder()`` may load model
    weights and is called only by commands that encode text. Failures are raised as
    :class:`~database_tools.errors.EncoderUnavailable` with a message for the user.
    """

    def defaults(self) -> DatabaseDefaults: ...

    def text_encoder(self) -> TextEncoder: ...


def installed_providers() -> dict[str, EntryPoint]:
    """The entry points of :data:`ENTRY_POINT_GROUP`, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_provider(name: str | None = None) -> EncoderProvider:
    """The provider called ``name`` (or the only one installed).

    :raises EncoderUnavailable: none installed, several and no name given, unknown name, or the
        entry point fails to load or returns something that is not an :class:`EncoderProvider`.
    """
    found = installed_providers()
    if name is None:
        if not found:
            raise EncoderUnavailable(
                f"no text encoder is installed (entry point group {ENTRY_POINT_GROUP!r}); "
                "install tag-backend, or pass --db for commands that encode nothing")
        if len(found) > 1:
            raise EncoderUnavailable("several text encoders are installed "
                                     f"({', '.join(sorted(found))}); choose one with --encoder")
        name = next(iter(found))
    if name not in found:
        raise EncoderUnavailable(f"no text encoder named {name!r}; installed: "
                                 f"{', '.join(sorted(found)) or 'none'}")
    try:
        provider = found[name].load()()
    except EncoderUnavailable:
        raise
    except Exception as exc:  # a broken plug-in must end in one clear message, not a traceback
        raise EncoderUnavailable(f"text encoder {name!r} ({found[name].value}) failed to load: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(provider, EncoderProvider):
        raise EncoderUnavailable(f"text encoder {name!r} ({found[name].value}) does not provide "
                                 "defaults() and text_encoder()")
    logger.debug("tag-db text encoder provider %r: %s", name, found[name].value)
    return provider
