"""ORM tables of the concept store (SQLAlchemy 2 typed declarative).

The Alembic migrations in ``database_tools/migrations`` create exactly these tables; a test
compares the migrated database with this metadata so the two never drift apart.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Statuses a user sets; "merged" and "removed" are internal (never indexed).
USER_STATUSES = ("active", "pending", "rejected")
ALL_STATUSES = USER_STATUSES + ("merged", "removed")


def utcnow() -> datetime:
    """Timezone-aware now; stored as UTC."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every store table."""


class Meta(Base):
    """Single row (id=1) holding the content version counter ``db_version``."""

    __tablename__ = "store_meta"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    db_version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Entry(Base):
    """A caption (free text) or a concept (a name), unique per (kind, normalised text)."""

    __tablename__ = "entries"
    __table_args__ = (
        UniqueConstraint("kind", "norm", name="uq_entries_kind_norm"),
        Index("ix_entries_updated_seq", "updated_seq"),
        Index("ix_entries_status", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    norm: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    support: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    source: Mapped[str] = mapped_column(Text, nullable=False, default="")
    merged_into_id: Mapped[int | None] = mapped_column(
        ForeignKey("entries.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Alias(Base):
    """A predicted name that annotators corrected to an entry, with how often."""

    __tablename__ = "aliases"
    __table_args__ = (
        UniqueConstraint("norm", "entry_id", name="uq_aliases_norm_entry"),
        # every refresh reads the aliases corrected at least TAG_ALIAS_MIN_COUNT times: through
        # this index it reads those, not every alias ever counted once
        Index("ix_aliases_count", "count"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    norm: Mapped[str] = mapped_column(Text, nullable=False)
    entry_id: Mapped[int] = mapped_column(
        ForeignKey("entries.id", ondelete="CASCADE"), nullable=False
    )
    count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Exemplar(Base):
    """A region embedding an annotator named: the visual memory of a concept.

    Rows are never deleted by the correction loop: an undone or evicted exemplar stops being
    ``served`` and ``served_seq`` records when (the store sequence number), so every process
    updates its in-memory exemplar index incrementally (:mod:`database_tools.exemplar_index`).
    ``removed`` marks candidates whose annotation was undone (no longer eligible at all).
    """

    __tablename__ = "exemplars"
    __table_args__ = (
        # (encoder, removed): the total cap counts an encoder's live candidates from the index
        # alone instead of reading every row (2 KB vector each) of the encoder
        Index("ix_exemplars_encoder_removed", "encoder_id", "removed"),
        Index("ix_exemplars_served_seq", "served_seq"),
        Index("ix_exemplars_entry", "entry_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    encoder_id: Mapped[str] = mapped_column(String(255), nullable=False)
    entry_id: Mapped[int] = mapped_column(
        ForeignKey("entries.id", ondelete="CASCADE"), nullable=False
    )
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    provenance: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    served: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    removed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    served_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class TextEmbedding(Base):
    """Cached text vector per (encoder id, exact text): embeddings of two encoders never mix."""

    __tablename__ = "text_embeddings"
    encoder_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    text_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class ImportSource(Base):
    """An imported file, keyed by checksum: re-imports are skipped, crashed ones resumed."""

    __tablename__ = "import_sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checksum: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    records_done: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    completed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("checksum", "kind", name="uq_import_sources_checksum"),)


class Annotation(Base):
    """A Label Studio annotation whose contribution is recorded (idempotency + undo)."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("ls_key", name="uq_annotations_ls_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ls_key: Mapped[str] = mapped_column(String(255), nullable=False)
    updated_at: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    project: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    task: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    annotator: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationEffect(Base):
    """One region's contribution (support, alias, exemplar) so it can be undone exactly."""

    __tablename__ = "annotation_effects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(
        ForeignKey("annotations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    entry_id: Mapped[int] = mapped_column(
        ForeignKey("entries.id", ondelete="CASCADE"), nullable=False
    )
    alias_id: Mapped[int | None] = mapped_column(
        ForeignKey("aliases.id", ondelete="SET NULL"), nullable=True
    )
    exemplar_id: Mapped[int | None] = mapped_column(
        ForeignKey("exemplars.id", ondelete="SET NULL"), nullable=True
    )
    created_entry: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: the concept the region was predicted as, when the annotator changed it (undo notes a
    #: concept change on it again, so ``prelabel --refresh`` sees both directions)
    predicted_entry_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class IndexVersion(Base):
    """A built concept index version (written by ``database_tools.index``)."""

    __tablename__ = "index_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    encoder_id: Mapped[str] = mapped_column(String(255), nullable=False)
    version: Mapped[str] = mapped_column(String(255), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False, default="")
    snapshot_hash: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    db_version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    manifest: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KnowledgeRelease(Base):
    """A knowledge release ``r<number>``: the part of ``model_version`` learning changes.

    ``db_seq`` is the store sequence number the release names; ``number`` is unique, so two
    processes cutting a release at once cannot both publish the same number.
    """

    __tablename__ = "knowledge_releases"
    __table_args__ = (UniqueConstraint("number", name="uq_knowledge_releases_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    db_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    source: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ServedPrediction(Base):
    """A prediction the backend returned for a Label Studio task, with the knowledge it used.

    ``knowledge_seq`` is the store sequence number the serving process had loaded; together
    with :class:`PredictedRegion` it lets corrections resolve region ids to concept ids and
    ``prelabel --refresh`` find the predictions later knowledge can change.
    """

    __tablename__ = "served_predictions"
    __table_args__ = (Index("ix_served_predictions_task", "project", "task"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    task: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    model_version: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    knowledge_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PredictedRegion(Base):
    """One region of a served prediction: its Label Studio region id and concept id."""

    __tablename__ = "predicted_regions"
    __table_args__ = (
        Index("ix_predicted_regions_region", "region_id"),
        Index("ix_predicted_regions_entry", "entry_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(
        ForeignKey("served_predictions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    region_id: Mapped[str] = mapped_column(String(64), nullable=False)
    entry_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, default="")


class ConceptChange(Base):
    """Knowledge about a concept changed at ``seq`` (e.g. a region predicted as it was renamed).

    Text and status changes are already visible in ``entries.updated_seq``; this table records
    what is not: corrections away from the concept and their undo.
    """

    __tablename__ = "concept_changes"
    __table_args__ = (Index("ix_concept_changes_entry_seq", "entry_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entry_id: Mapped[int] = mapped_column(Integer, nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False, default="")
