"""What the backend predicted for each Label Studio task: region ids, concept ids, knowledge seq.

Label Studio keeps a prediction's region ids when an annotator starts from it, so a correction
can be resolved to the **concept id** the region was predicted as (homonyms such as
"bat (animal)" and "bat (club)" are both shown as "bat" and stay apart), and
``prelabel --refresh`` can find the tasks whose stored prediction the knowledge learnt since can
change (:func:`stale_tasks`). Only ids are stored — no masks, no embeddings.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from .schema import ConceptChange, Entry, PredictedRegion, ServedPrediction, utcnow
from .sql import chunks

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .store import Store, Txn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionConcept:
    """A predicted region: its LS region id, concept id (None for caption words) and name."""

    region_id: str
    entry_id: int | None
    name: str


def record_prediction(store: Store, *, project: str, task: str, model_version: str,
                      knowledge_seq: int, regions: Sequence[RegionConcept]) -> int:
    """Remember one served prediction; returns its id (not a content change)."""
    with store.write() as txn:
        row = ServedPrediction(project=str(project)[:64], task=str(task)[:64],
                               model_version=model_version[:255],
                               knowledge_seq=int(knowledge_seq), created_at=utcnow())
        txn.session.add(row)
        txn.session.flush()
        txn.session.add_all([
            PredictedRegion(prediction_id=row.id, region_id=r.region_id[:64],
                            entry_id=r.entry_id, name=r.name) for r in regions])
        return int(row.id)


def region_concepts(session: Session, region_ids: Iterable[str]) -> dict[str, RegionConcept]:
    """The newest predicted concept of each region id (region ids are random per prediction)."""
    found: dict[str, RegionConcept] = {}
    for part in chunks(sorted(set(region_ids))):
        rows = session.execute(
            select(PredictedRegion.region_id, PredictedRegion.entry_id, PredictedRegion.name)
            .where(PredictedRegion.region_id.in_(part)).order_by(PredictedRegion.id)
        ).all()
        for region_id, entry_id, name in rows:
            found[region_id] = RegionConcept(region_id, entry_id, name)
    return found


def note_concept_change(txn: Txn, entry_id: int, reason: str) -> None:
    """Record that knowledge about ``entry_id`` changed in this transaction."""
    txn.session.add(ConceptChange(entry_id=int(entry_id), seq=txn.seq(), reason=reason[:32]))


def stale_tasks(store: Store, tasks: Iterable[str]) -> set[str]:
    """Tasks whose newest served prediction has a region predicted as a concept that changed
    after that prediction's knowledge: renamed, merged, rejected or removed
    (``entries.updated_seq``), or corrected away from / back (``concept_changes``).

    Tasks never predicted by this backend are not returned (nothing is known about them).
    Label Studio task ids are unique across projects, so no project is needed.
    """
    stale: set[str] = set()
    with store.read() as session:
        for part in chunks(sorted({str(t) for t in tasks})):
            newest = (select(ServedPrediction.task, func.max(ServedPrediction.id).label("pid"))
                      .where(ServedPrediction.task.in_(part))
                      .group_by(ServedPrediction.task).subquery())
            base = (select(ServedPrediction.task)
                    .join(newest, newest.c.pid == ServedPrediction.id)
                    .join(PredictedRegion, PredictedRegion.prediction_id == ServedPrediction.id))
            by_entry = base.join(Entry, Entry.id == PredictedRegion.entry_id).where(
                Entry.updated_seq > ServedPrediction.knowledge_seq)
            by_change = base.join(ConceptChange,
                                  ConceptChange.entry_id == PredictedRegion.entry_id).where(
                ConceptChange.seq > ServedPrediction.knowledge_seq)
            for query in (by_entry, by_change):
                stale.update(str(t) for t in session.scalars(query.distinct()))
    return stale
