"""First-use bootstrap: default vocabulary into the store, and an index for the configured encoder.

The backend must name regions out of the box, with whatever CLIP is configured and no caption
database: :func:`ensure_index` imports the shipped vocabulary (``database_tools/vocabulary/``,
about 3,300 dataset class names, see its ``SOURCES.md``) once, builds the index on first use and
afterwards only opens ``CURRENT`` — applying an incremental update when the store changed since
the index was built. Safe when several processes (gunicorn workers) call it at once: builders
serialise on a per-encoder file lock and re-check after acquiring it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .embedding import TextEncoder
from .importers import ImportReport, import_file
from .index import ConceptIndex
from .index_build import KINDS, build_lock, build_locked, update_locked
from .errors import IndexCorrupt, IndexNotFound
from .index_files import KEEP_VERSIONS

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger(__name__)

VOCABULARY_DIR = Path(__file__).resolve().parent / "vocabulary"
DEFAULT_VOCABULARY = VOCABULARY_DIR / "concepts.txt"


def import_default_vocabulary(store: Store, path: Path = DEFAULT_VOCABULARY) -> ImportReport:
    """Import the shipped vocabulary as active concepts (idempotent: keyed by file checksum).

    A later run never re-adds or re-counts names (so concepts a curator rejected stay rejected).
    """
    report = import_file(store, path, kind="concept", fmt="txt",
                         source=f"default-vocabulary:{path.name}")
    if not report.already_imported:
        logger.info("default vocabulary: %s", report.summary())
    return report


def _open_fresh(store: Store, encoder: TextEncoder, index_dir: str | Path) -> ConceptIndex | None:
    """The current index if it exists and the store has not changed since; else None."""
    try:
        index = ConceptIndex.open(index_dir, encoder.encoder_id, expected_dim=int(encoder.dim))
    except IndexNotFound:
        return None
    except IndexCorrupt as exc:
        logger.warning("%s; building a new version", exc)
        return None
    return index if store.db_version() <= index.manifest.db_version else None


def ensure_index(store: Store, encoder: TextEncoder, index_dir: str | Path, *,
                 progress: bool = False,
                 vocabulary: str | Path | None = DEFAULT_VOCABULARY) -> ConceptIndex:
    """The current concept index of ``encoder``, created or brought up to date as needed.

    :raises IndexMismatch: the directory holds an index of the same encoder id but another
        dimension (two models share an id: fix the configuration).
    """
    index = _open_fresh(store, encoder, index_dir)
    if index is not None:
        return index
    with build_lock(index_dir, encoder.encoder_id) as root:
        if vocabulary is not None:  # None: only the store's own entries
            import_default_vocabulary(store, Path(vocabulary))
        index = _open_fresh(store, encoder, index_dir)  # another process may have built it
        if index is not None:
            return index
        options = dict(progress=progress, keep=KEEP_VERSIONS, kinds=KINDS)
        try:
            ConceptIndex.open(index_dir, encoder.encoder_id, expected_dim=int(encoder.dim))
        except (IndexNotFound, IndexCorrupt):
            logger.info("building the concept index for %s", encoder.encoder_id)
            return build_locked(store, encoder, root, index_dir, factory=None, **options)
        return update_locked(store, encoder, root, index_dir, **options)
