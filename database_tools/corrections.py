"""Learn from Label Studio annotations: new concepts, support, aliases and visual exemplars.

Every annotation's contribution is recorded per region (``annotation_effects``) so that
replays add nothing, an UPDATED annotation replaces its previous contribution, and a deleted
annotation is undone exactly. Everything for one annotation happens in one transaction.

A region is resolved to the concept id it was predicted as (:mod:`.prediction_log`), so an
accepted shown name ("bat" for "bat (animal)") supports that concept instead of creating a
second one. What is learnt depends on what the annotator did (docs/learning.md):

* name **accepted unchanged**: the concept's support grows; no exemplar (the engine already
  names that region so; an exemplar would only widen its own reach and reinforce itself);
* name **changed** or region **drawn by hand**: the name (a new concept if needed), an alias
  from the predicted name, a concept change on the predicted concept, and a candidate visual
  exemplar (bounded per concept and in total: :mod:`.exemplar_index`);
* the placeholder label (``object``) and empty names are never learnt.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from tqdm.auto import tqdm

from .errors import ImportFormatError
from .exemplar_index import ExemplarLimits, learn_exemplar, retire_exemplar
from .ls_results import Region, regions
from .normalize import display_text, normalize_text
from .prediction_log import RegionConcept, note_concept_change, region_concepts
from .schema import Alias, Annotation, AnnotationEffect, Entry, utcnow
from .sql import add_support, entry_ids, insert_for, set_status, upsert_entries
from .store import Store
from .txn import Txn

logger = logging.getLogger(__name__)

EmbedRegion = Callable[[Mapping[str, Any]], "np.ndarray | None"]
#: Longest corrected name (characters) that becomes a concept. Real class names are a few words;
#: anything longer is pasted text or abuse, and would be embedded, indexed and shown forever.
MAX_NAME_CHARS = 200
DELETE_ACTIONS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
#: Brush labels that only mark "a region" in open mode (the name is in the TextArea): a region
#: left with just this label has no name to learn.
PLACEHOLDER_LABELS = ("object",)
RECORD_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


@dataclass
class CorrectionReport:
    """What recording one payload did (summed over its annotations)."""

    recorded: int = 0
    replaced: int = 0
    duplicates: int = 0
    deleted: int = 0
    ignored: int = 0
    regions: int = 0
    refused_names: int = 0
    new_concepts: list[str] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    exemplars: int = 0
    accepted: int = 0

    def merge(self, other: CorrectionReport) -> None:
        """Add ``other``'s counts to this report."""
        for name in ("recorded", "replaced", "duplicates", "deleted", "ignored", "regions",
                     "refused_names", "exemplars", "accepted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.new_concepts += other.new_concepts
        self.aliases += other.aliases

    def summary(self) -> str:
        """One human line for the CLI."""
        return (
            f"{self.recorded} annotations recorded ({self.replaced} replaced earlier versions), "
            f"{self.duplicates} duplicates, {self.deleted} deleted, {self.ignored} ignored; "
            f"{self.regions} regions ({self.accepted} accepted unchanged), "
            f"{len(self.new_concepts)} new concepts, "
            f"{len(self.aliases)} aliases, {self.exemplars} exemplars"
            + (f", {self.refused_names} names refused (longer than {MAX_NAME_CHARS} characters)"
               if self.refused_names else "")
        )


@dataclass(frozen=True)
class Learning:
    """How annotations are learnt: exemplar limits and the placeholder labels never learnt."""

    limits: ExemplarLimits = ExemplarLimits()
    placeholders: tuple[str, ...] = PLACEHOLDER_LABELS

    def learnable(self, name: str | None) -> bool:
        norm = normalize_text(name or "")
        return bool(norm) and norm not in {normalize_text(p) for p in self.placeholders}


@dataclass(frozen=True)
class _Context:
    project: str
    task: str
    prediction: list[Mapping[str, Any]] | None
    learning: Learning = Learning()


def _id(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("id")
    return "" if value is None else str(value)


def _prediction_result(prediction: Any, task: Mapping[str, Any] | None, ann: Mapping) -> list | None:
    """The prediction's result items: given explicitly, or the task's parent prediction."""
    if prediction is not None:
        return prediction.get("result", []) if isinstance(prediction, Mapping) else list(prediction)
    preds = [p for p in (task or {}).get("predictions") or [] if isinstance(p, Mapping)]
    if not preds:
        return None
    parent = _id(ann.get("parent_prediction") or ann.get("prediction"))
    chosen = next((p for p in preds if parent and _id(p) == parent), preds[-1])
    return chosen.get("result") or []


def _newer(incoming: str, stored: str) -> bool:
    """Is ``incoming`` updated_at later than ``stored`` (ISO 8601; string order as fallback)?"""
    try:
        a = datetime.fromisoformat(incoming.replace("Z", "+00:00"))
        b = datetime.fromisoformat(stored.replace("Z", "+00:00"))
        return a > b
    except (ValueError, TypeError):
        return incoming > stored


def record_annotation(
    store: Store,
    annotation: Mapping[str, Any],
    prediction: Any = None,
    *,
    embed_region: EmbedRegion | None = None,
    encoder_id: str | None = None,
    new_concept_status: str = "active",
    learning: Learning = Learning(),
) -> CorrectionReport:
    """Record a webhook payload, an export task (with ``annotations``) or a bare annotation.

    :param prediction: the prediction the annotation started from (dict with ``result`` or the
        result list); default: the task's prediction named by ``parent_prediction`` or its last.
    :param embed_region: ``f(region result item) -> embedding | None`` for visual exemplars.
    :param encoder_id: the image encoder of ``embed_region`` (default ``embed_region.encoder_id``).
    :param new_concept_status: status of names never seen before (``active`` or ``pending``).
    :param learning: exemplar limits and placeholder labels.
    """
    if new_concept_status not in ("active", "pending"):
        raise ValueError("new_concept_status must be 'active' or 'pending'")
    if embed_region is not None:
        encoder_id = encoder_id or getattr(embed_region, "encoder_id", None)
        if not encoder_id:
            raise ValueError("embed_region needs an encoder_id (never mix encoders' exemplars)")
    if not isinstance(annotation, Mapping):
        raise TypeError("annotation must be a JSON object (dict)")
    report = CorrectionReport()
    action = str(annotation.get("action") or "")
    if action in DELETE_ACTIONS:
        items = annotation.get("annotations") or [annotation.get("annotation") or {}]
        for item in items:
            report.merge(delete_annotation(store, _id(item), learning))
        return report
    if action and action not in RECORD_ACTIONS:
        report.ignored += 1
        return report
    anns, task = _annotations_of(annotation)
    project = _id(annotation.get("project"))
    for ann in anns:
        ctx = _Context(
            project=project or _id(ann.get("project")) or _id((task or {}).get("project")),
            task=_id(ann.get("task")) or _id(task),
            prediction=_prediction_result(prediction, task, ann),
            learning=learning,
        )
        report.merge(_record_one(store, ann, ctx, embed_region, encoder_id, new_concept_status))
    return report


def _annotations_of(payload: Mapping[str, Any]) -> tuple[list, Mapping[str, Any] | None]:
    """``(annotations, task)`` of a webhook payload, an export task or a bare annotation."""
    task = payload.get("task") if isinstance(payload.get("task"), Mapping) else None
    if "annotations" in payload and "result" not in payload:
        return list(payload.get("annotations") or []), task or payload
    if "annotation" in payload:
        return [payload["annotation"]], task
    return [payload], task


def _record_one(
    store: Store, ann: Mapping[str, Any], ctx: _Context, embed_region: EmbedRegion | None,
    encoder_id: str | None, status: str,
) -> CorrectionReport:
    report = CorrectionReport()
    ann_id = _id(ann)
    if not ann_id:
        raise ValueError("annotation has no id")
    updated_at = str(ann.get("updated_at") or ann.get("created_at") or "")
    if _already_recorded(store, ann_id, updated_at):  # cheap check before embedding regions
        report.duplicates += 1
        return report
    found = [] if ann.get("was_cancelled") else list(regions(ann.get("result")).values())
    found = [r for r in found if ctx.learning.learnable(r.name)]
    predicted = _predicted(store, ctx, found)
    changed = [r for r in found if _changed(r, predicted.get(r.region_id))]
    vectors = _embed(changed, embed_region)  # slow work outside the transaction
    with store.write() as txn:
        row = _lock_annotation(txn, ann_id, ctx, ann)
        if row.deleted or (row.updated_at and not _newer(updated_at, row.updated_at)):
            report.duplicates += 1
            return report
        if row.updated_at:
            _undo(txn, row.id, ctx.learning)
            report.replaced += 1
        row.updated_at = updated_at or "-"
        provenance = {"source": "labelstudio", "project": ctx.project, "task": ctx.task,
                      "annotation": ann_id, "annotator": row.annotator}
        for region in found:
            _apply_region(txn, row.id, region, predicted.get(region.region_id), vectors, ctx,
                          encoder_id, provenance, status, report)
        report.recorded += 1
    return report


def _already_recorded(store: Store, ann_id: str, updated_at: str) -> bool:
    with store.read() as session:
        row = session.execute(
            select(Annotation.deleted, Annotation.updated_at)
            .where(Annotation.ls_key == f"ls-annotation:{ann_id}")
        ).first()
    return row is not None and (bool(row[0]) or (bool(row[1]) and not _newer(updated_at, row[1])))


def _predicted(store: Store, ctx: _Context, found: list[Region]) -> dict[str, RegionConcept]:
    """What each region was predicted as: the served prediction's concept id when this backend
    recorded it, else the name in the payload's prediction (no id)."""
    named = {rid: RegionConcept(rid, None, r.name or "")
             for rid, r in (regions(ctx.prediction) if ctx.prediction else {}).items()}
    if found:
        with store.read() as session:
            named.update(region_concepts(session, [r.region_id for r in found]))
    return named


def _changed(region: Region, predicted: RegionConcept | None) -> bool:
    """Drawn by hand (not predicted) or renamed by the annotator."""
    return predicted is None or normalize_text(region.name or "") != normalize_text(predicted.name)


def _embed(found: list[Region], embed_region: EmbedRegion | None) -> dict[str, np.ndarray]:
    vectors: dict[str, np.ndarray] = {}
    if embed_region is None:
        return vectors
    for region in found:
        if region.name and len(region.name) <= MAX_NAME_CHARS:
            vec = embed_region(region.item)
            if vec is not None:
                vectors[region.region_id] = np.asarray(vec, dtype=np.float32).reshape(-1)
    return vectors


def _lock_annotation(txn: Txn, ann_id: str, ctx: _Context, ann: Mapping) -> Annotation:
    """Get-or-create the annotation row and lock it against a concurrent replay."""
    key = f"ls-annotation:{ann_id}"
    annotator = _id(ann.get("completed_by"))
    stmt = insert_for(txn.session, Annotation).values(
        ls_key=key, updated_at="", project=ctx.project, task=ctx.task, annotator=annotator,
        deleted=False, recorded_at=utcnow(),
    )
    txn.session.execute(stmt.on_conflict_do_nothing(index_elements=["ls_key"]))
    return txn.session.scalar(
        select(Annotation).where(Annotation.ls_key == key).with_for_update()
    )


def _apply_region(
    txn: Txn, annotation_row: int, region: Region, predicted: RegionConcept | None,
    vectors: dict[str, np.ndarray], ctx: _Context, encoder_id: str | None,
    provenance: dict[str, Any], status: str, report: CorrectionReport,
) -> None:
    if not region.name or not normalize_text(region.name):
        return
    if len(region.name) > MAX_NAME_CHARS:
        logger.warning("annotation %s region %s: name of %d characters refused (limit %d): %r...",
                       provenance.get("annotation"), region.region_id, len(region.name),
                       MAX_NAME_CHARS, region.name[:40])
        report.refused_names += 1
        return
    report.regions += 1
    if not _changed(region, predicted) and predicted.entry_id is not None \
            and txn.session.get(Entry, predicted.entry_id) is not None:
        # accepted unchanged: support for the very concept shown (never a same-name shadow)
        add_support(txn, predicted.entry_id, +1)
        report.accepted += 1
        txn.session.add(AnnotationEffect(annotation_id=annotation_row,
                                         entry_id=predicted.entry_id, created_entry=False))
        return
    norm = normalize_text(region.name)
    existed = entry_ids(txn.session, "concept", [norm])
    ids = upsert_entries(
        txn, "concept", {norm: (display_text(region.name, "concept"), 1)},
        source=f"labelstudio:{ctx.project}", status=status,
    )
    entry_id = ids[norm]
    if not existed:
        report.new_concepts.append(norm)
    alias_id = predicted_entry = None
    if predicted is not None and _changed(region, predicted) and normalize_text(predicted.name):
        alias_id = _bump_alias(txn, predicted.name, entry_id, +1)
        report.aliases.append((normalize_text(predicted.name), norm))
        if predicted.entry_id is not None and predicted.entry_id != entry_id:
            predicted_entry = predicted.entry_id
            note_concept_change(txn, predicted_entry, "corrected")
    exemplar_id = None
    if region.region_id in vectors and encoder_id:
        exemplar_id = learn_exemplar(
            txn, encoder_id, entry_id, vectors[region.region_id],
            {**provenance, "region": region.region_id}, ctx.learning.limits,
        )
        report.exemplars += exemplar_id is not None
    txn.session.add(AnnotationEffect(
        annotation_id=annotation_row, entry_id=entry_id, alias_id=alias_id,
        exemplar_id=exemplar_id, created_entry=not existed, predicted_entry_id=predicted_entry,
    ))


def _bump_alias(txn: Txn, text: str, entry_id: int, delta: int) -> int:
    """Count ``text -> entry`` up by ``delta``; returns the alias id."""
    txn.seq()
    norm = normalize_text(text)
    stmt = insert_for(txn.session, Alias).values(
        text=display_text(text, "concept"), norm=norm, entry_id=entry_id, count=delta,
        updated_at=utcnow(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["norm", "entry_id"],
        set_={"count": Alias.count + stmt.excluded.count, "updated_at": stmt.excluded.updated_at},
    )
    txn.session.execute(stmt)
    return int(txn.session.scalar(
        select(Alias.id).where(Alias.norm == norm, Alias.entry_id == entry_id)
    ))


def _undo(txn: Txn, annotation_row: int, learning: Learning = Learning()) -> None:
    """Reverse every recorded effect of one annotation."""
    effects = txn.session.scalars(
        select(AnnotationEffect).where(AnnotationEffect.annotation_id == annotation_row)
    ).all()
    for effect in effects:
        add_support(txn, effect.entry_id, -1)
        if effect.alias_id is not None:
            txn.session.execute(
                update(Alias).where(Alias.id == effect.alias_id).values(count=Alias.count - 1)
            )
            txn.session.execute(delete(Alias).where(Alias.id == effect.alias_id, Alias.count <= 0))
        if effect.exemplar_id is not None:
            retire_exemplar(txn, effect.exemplar_id, learning.limits.per_concept)
        if effect.predicted_entry_id is not None:
            note_concept_change(txn, effect.predicted_entry_id, "correction undone")
        entry = txn.session.get(Entry, effect.entry_id)
        txn.session.refresh(entry)
        if (entry.support <= 0 and entry.source.startswith("labelstudio:")
                and entry.status in ("active", "pending")):
            set_status(txn, entry.id, "removed")
    txn.session.execute(
        delete(AnnotationEffect).where(AnnotationEffect.annotation_id == annotation_row)
    )


def delete_annotation(store: Store, annotation_id: str,
                      learning: Learning = Learning()) -> CorrectionReport:
    """Undo everything annotation ``annotation_id`` contributed (idempotent)."""
    report = CorrectionReport()
    if not annotation_id:
        report.ignored += 1
        return report
    with store.write() as txn:
        ctx = _Context("", "", None)
        row = _lock_annotation(txn, annotation_id, ctx, {})
        if row.deleted:
            report.duplicates += 1
            return report
        _undo(txn, row.id, learning)
        row.deleted = True
        report.deleted += 1
    return report


def _iter_export(path: Path) -> Iterable[Mapping[str, Any]]:
    """Tasks of a Label Studio JSON export (a JSON array), streamed."""
    import ijson

    with open(path, "rb") as handle:
        try:
            yield from ijson.items(handle, "item", use_float=True)
        except ijson.JSONError as exc:
            raise ImportFormatError(f"{path}: not a Label Studio JSON export: {exc}") from None


def ingest_export(
    store: Store,
    export_json_path: str | Path,
    *,
    embed_region: EmbedRegion | None = None,
    encoder_id: str | None = None,
    new_concept_status: str = "active",
    progress: bool = False,
) -> CorrectionReport:
    """Record every annotation of a Label Studio JSON export (offline: no exemplars by default)."""
    path = Path(export_json_path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImportFormatError(f"{path}: the file is empty")
    report = CorrectionReport()
    for task in tqdm(_iter_export(path), desc="annotations", unit="task", disable=not progress):
        if not isinstance(task, Mapping):
            raise ImportFormatError(f"{path}: expected a JSON array of task objects")
        report.merge(record_annotation(
            store, {**task, "annotations": task.get("annotations") or []},
            embed_region=embed_region, encoder_id=encoder_id,
            new_concept_status=new_concept_status,
        ))
    return report
