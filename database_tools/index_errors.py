"""Typed errors of the concept index (to be folded into ``database_tools.errors`` by the lead).

``IndexNotFound`` and ``IndexMismatch`` already live in :mod:`database_tools.errors`; they are
re-exported here so index code and its callers import every index error from one place.
"""
from __future__ import annotations

from .errors import DatabaseToolsError, IndexMismatch, IndexNotFound

__all__ = ["IndexCorrupt", "IndexMismatch", "IndexNotFound", "IndexBuildError"]


class IndexCorrupt(DatabaseToolsError):
    """An index version on disk is truncated, fails its checksum or cannot be read by faiss."""


class IndexBuildError(DatabaseToolsError):
    """An index cannot be built from the store (no entries, bad vectors, bad factory string)."""
