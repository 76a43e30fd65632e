"""The engine's text encoder for ``tag-db`` (entry point ``tag_db.text_encoders``: tag-backend).

``database_tools`` never imports the engine; it loads this provider by name
(:mod:`database_tools.plugin`). The provider reads the same settings as the server, so ``tag-db``
works on the database and index directory the engine serves from, and encodes with the CLIP text
tower of the configured preset.
"""
from __future__ import annotations

from database_tools.embedding import TextEncoder
from database_tools.errors import EncoderUnavailable
from database_tools.plugin import DatabaseDefaults

from ..config import Settings, settings_from_env
from ..errors import TagError


class EngineTextEncoders:
    """:class:`database_tools.plugin.EncoderProvider` of tag-backend (settings read once)."""

    def __init__(self, settings: Settings | None = None) -> None:
        try:
            self.settings = settings or settings_from_env()
        except TagError as exc:
            raise EncoderUnavailable(str(exc)) from exc

    def defaults(self) -> DatabaseDefaults:
        s = self.settings
        return DatabaseDefaults(db_url=s.resolved_db_url, index_dir=s.resolved_index_dir,
                                new_concept_status=s.new_concept_status)

    def text_encoder(self) -> TextEncoder:
        """The configured CLIP's text tower (loads the weights)."""
        from ..presets import get_preset
        from ..services import Models

        try:
            return Models(self.settings, get_preset(self.settings.preset)).clip.text_encoder()
        except TagError as exc:
            raise EncoderUnavailable(f"{type(exc).__name__}: {exc}") from exc
