"""Remember each served prediction's regions with their concept ids and knowledge state.

Label Studio keeps a prediction's region ids in the annotation made from it, so the correction
loop can tell which concept a region was predicted as (``database_tools.prediction_log``), and
``prelabel --refresh`` can find predictions that later knowledge can change. Recording is
best-effort: a database hiccup never costs the user a prediction (it is logged).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


class ServedRecorder:
    """``recorder(task, placed regions, model_version, knowledge)`` on a lazily opened store."""

    def __init__(self, store: Callable[[], Any]) -> None:
        self._store = store

    def __call__(self, task: Any, regions: Sequence, model_version: str, knowledge) -> None:
        from database_tools.prediction_log import RegionConcept, record_prediction

        if not isinstance(task, Mapping) or task.get("id") is None:
            return
        seq = getattr(knowledge, "db_version", None)
        try:
            record_prediction(
                self._store(), project=str(task.get("project") or "").split(".", 1)[0],
                task=str(task["id"]), model_version=model_version, knowledge_seq=int(seq or 0),
                regions=[RegionConcept(r.region_id, r.entry_id, r.name) for r in regions])
        except Exception as exc:  # noqa: BLE001 - the prediction itself must still be returned
            logger.warning("task %s: prediction not recorded for the correction loop: %s",
                           task.get("id"), str(exc).splitlines()[0][:200])
