"""What the engine knows besides its weights: one immutable snapshot of the concept database.

A :class:`Knowledge` holds the concept index, the annotators' exemplars and aliases, and the
concept-database version they were read at. It is never changed after it is built: a refresh
builds a new snapshot and the services swap it in with one assignment, so a prediction that
started with the old snapshot finishes with it while the next one sees the new one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .exemplars import AliasMap, ExemplarMemory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Knowledge:
    """index: the concept index (``database_tools.index.ConceptIndex``: ``search``, ``manifest``).
    exemplars / aliases: what annotators corrected (:mod:`tag_backend.exemplars`).
    db_version: the concept-database version the snapshot was read at (None: not from a store).
    """

    index: Any
    exemplars: ExemplarMemory = field(default_factory=ExemplarMemory)
    aliases: AliasMap = field(default_factory=AliasMap)
    db_version: int | None = None

    @property
    def index_size(self) -> int | None:
        """Entries in the index, when its manifest says."""
        manifest = getattr(self.index, "manifest", None)
        count = getattr(manifest, "count", None)
        return int(count) if count is not None else None


def read_knowledge(store, text_encoder, encoder_id: str, *, index_dir: str,
                   vocabulary: str | None, alias_min_count: int,
                   index_store: str | None = None) -> Knowledge:
    """A snapshot of ``store``: the current index (built from ``vocabulary`` on first use),
    exemplars of ``encoder_id`` and aliases corrected at least ``alias_min_count`` times.

    ``vocabulary``: a word-list path, ``"none"`` (nothing imported) or None (the shipped list).
    ``index_store``: shared directory of published index versions (``TAG_INDEX_STORE``): the
    index is pulled from there, and what this process builds is published there.
    The version is read after the index is opened (building it on first use imports the
    vocabulary, which bumps the version) and before exemplars and aliases, so a correction
    recorded meanwhile shows up as a newer version at the next refresh.
    """
    from database_tools.bootstrap import DEFAULT_VOCABULARY, ensure_index
    from database_tools.normalize import normalize_text

    if vocabulary is None:
        words = DEFAULT_VOCABULARY
    elif vocabulary.strip().lower() == "none":
        words = None
    else:
        words = vocabulary
    if index_store:
        from database_tools.index_store import ensure_shared_index

        index = ensure_shared_index(store, text_encoder, index_dir, index_store, vocabulary=words)
    else:
        index = ensure_index(store, text_encoder, index_dir, vocabulary=words)
    version = store.db_version()
    names, embeddings = store.load_exemplars(encoder_id)
    raw = store.load_aliases(min_count=alias_min_count)
    aliases = AliasMap({norm: target for norm, (target, _) in raw.items()},
                       normalize=lambda s: normalize_text(s, "concept"))
    return Knowledge(index=index, exemplars=ExemplarMemory(names=list(names), embeddings=embeddings),
                     aliases=aliases, db_version=version)
