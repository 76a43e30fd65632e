"""Typed errors of the concept database. The CLI turns each into a clear one-line message."""
from __future__ import annotations


class DatabaseToolsError(Exception):
    """Base class of every error ``database_tools`` raises on purpose."""


class StoreUnavailable(DatabaseToolsError):
    """The database URL cannot be opened (server down, bad path, bad credentials)."""


class SchemaTooNew(DatabaseToolsError):
    """The database was migrated by a newer version of this code; refusing to touch it."""


class ImportFormatError(DatabaseToolsError):
    """An input file cannot be imported at all (unknown format, empty, unreadable, bad column)."""


class ConceptNotFound(DatabaseToolsError):
    """A curation command names a concept that is not in the store."""


class BundleError(DatabaseToolsError):
    """An export bundle is corrupt, truncated, tampered with or from an unknown schema."""


class IndexNotFound(DatabaseToolsError):
    """No concept index has been built for this encoder in the index directory."""


class IndexMismatch(DatabaseToolsError):
    """The concept index on disk was built with another encoder or is inconsistent."""


class IndexCorrupt(DatabaseToolsError):
    """An index version on disk is truncated, fails its checksum or cannot be read by faiss."""


class IndexBuildError(DatabaseToolsError):
    """An index cannot be built from the store (no entries, bad vectors, bad factory string)."""


class EncoderUnavailable(DatabaseToolsError):
    """No text encoder could be obtained for a command that encodes text (see ``plugin``)."""
