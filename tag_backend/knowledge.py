"""What the engine knows besides its weights: a snapshot of the concept database.

A :class:`Knowledge` holds the live concept index (base version + delta), the annotators'
exemplars and aliases, and the store sequence number (``db_version``) they reflect. The
snapshot object is never changed after it is built: a refresh builds a new one and the services
swap it in with one assignment. The two large parts are followed *incrementally* instead of
being re-read (re-reading a 10M-entry index or 100,000 exemplars per correction is what
:mod:`database_tools.delta_index` and :mod:`database_tools.exemplar_index` exist to avoid): the
new snapshot shares them with the old one after applying the changes since its sequence
number, under their own locks. A prediction running across a refresh may therefore already see
some of the newer corrections; ``db_version`` is the state the snapshot was *at least* read at.
A new base index version (``tag-db compact``) gives a new index object.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from .exemplars import AliasMap, AliasTarget, ExemplarIndex, empty_exemplars

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Knowledge:
    """index: the concept index (``database_tools.delta_index.LiveIndex`` or a plain
    ``ConceptIndex``: ``search``, ``manifest``).
    exemplars / aliases: what annotators corrected (:mod:`tag_backend.exemplars`).
    db_version: the store sequence number the snapshot reflects (None: not from a store).
    release: the knowledge release current at that sequence number (the ``r<N>`` of
    ``model_version``; 0 before the first release).
    """

    index: Any
    exemplars: ExemplarIndex = field(default_factory=empty_exemplars)
    aliases: AliasMap = field(default_factory=AliasMap)
    db_version: int | None = None
    release: int = 0

    @property
    def index_size(self) -> int | None:
        """Entries in the base index, when its manifest says."""
        manifest = getattr(self.index, "manifest", None)
        count = getattr(manifest, "count", None)
        return int(count) if count is not None else None


def _vocabulary(vocabulary: str | None):
    from database_tools.bootstrap import DEFAULT_VOCABULARY

    if vocabulary is None:
        return DEFAULT_VOCABULARY
    return None if vocabulary.strip().lower() == "none" else vocabulary


def read_aliases(store, alias_min_count: int) -> AliasMap:
    """Aliases corrected at least ``alias_min_count`` times, with their target concept ids."""
    from database_tools.normalize import normalize_text

    raw = store.load_aliases(min_count=alias_min_count)
    return AliasMap({norm: AliasTarget(text, entry_id) for norm, (text, _, entry_id) in raw.items()},
                    normalize=lambda s: normalize_text(s, "concept"))


def read_knowledge(store, text_encoder, encoder_id: str, *, index_dir: str,
                   vocabulary: str | None, alias_min_count: int,
                   index_store: str | None = None) -> Knowledge:
    """A first snapshot of ``store``: the current base index (built from ``vocabulary`` on first
    use, or pulled from the shared ``index_store``) with the changes since it was built,
    exemplars of ``encoder_id`` and aliases corrected at least ``alias_min_count`` times.

    ``vocabulary``: a word-list path, ``"none"`` (nothing imported) or None (the shipped list).
    ``index_store``: shared directory of published index versions (``TAG_INDEX_STORE``): the
    index is pulled from there, and what this process builds is published there.
    The version is read after the index is opened (building it on first use imports the
    vocabulary, which bumps the version); parts are read up to that version, so a correction
    recorded meanwhile shows up at the next refresh.
    """
    from database_tools.bootstrap import ensure_index
    from database_tools.delta_index import LiveIndex

    words = _vocabulary(vocabulary)
    if index_store:
        from database_tools.index_store import ensure_shared_index

        base = ensure_shared_index(store, text_encoder, index_dir, index_store, vocabulary=words)
    else:
        base = ensure_index(store, text_encoder, index_dir, vocabulary=words)
    version = store.db_version()
    index = LiveIndex(base, text_encoder)
    index.refresh(store, version)
    exemplars = ExemplarIndex(encoder_id)
    exemplars.refresh(store, version)
    return Knowledge(index=index, exemplars=exemplars,
                     aliases=read_aliases(store, alias_min_count), db_version=version,
                     release=_release(store))


def _release(store) -> int:
    from database_tools.releases import current_release

    return current_release(store).number


def refresh_knowledge(previous: Knowledge, store, text_encoder, encoder_id: str, *,
                      index_dir: str, alias_min_count: int, version: int) -> Knowledge:
    """The snapshot after ``previous`` at store ``version``: only what changed is read."""
    from database_tools.delta_index import LiveIndex
    from database_tools.index import ConceptIndex
    from database_tools.index_files import current_version_dir, encoder_root

    index = previous.index
    current = current_version_dir(encoder_root(index_dir, encoder_id)).name
    if not isinstance(index, LiveIndex) or current != index.version:
        index = LiveIndex(ConceptIndex.open(index_dir, encoder_id), text_encoder)
        logger.info("concept index: base version %s", index.version)
    index.refresh(store, version)
    previous.exemplars.refresh(store, version)
    return replace(previous, index=index, aliases=read_aliases(store, alias_min_count),
                   db_version=version, release=_release(store))
