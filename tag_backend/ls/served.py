"""Remember each served prediction's regions with their concept ids and knowledge state.

Label Studio keeps a prediction's region ids in the annotation made from it, so the correction
loop can tell which concept a region was predicted as (``database_tools.prediction_log``), and
``prelabel --refresh`` can find predictions that later knowledge can change. Recording is
best-effort: a database hiccup never costs the user a prediction (it is logged).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .results import PlacedRegion

logger = logging.getLogger(__name__)


def record_served(runtime, task: Any, regions: Sequence[PlacedRegion], model_version: str,
                  project: str = "") -> None:
    """Record the prediction of ``task`` (a Label Studio task dict with an ``id``)."""
    from database_tools.prediction_log import RegionConcept, record_prediction

    if not isinstance(task, Mapping) or task.get("id") is None:
        return
    project = project or str(task.get("project") or "")
    try:
        record_prediction(
            runtime.store, project=project.split(".", 1)[0], task=str(task["id"]),
            model_version=model_version, knowledge_seq=runtime.knowledge_seq,
            regions=[RegionConcept(r.region_id, r.entry_id, r.name) for r in regions])
    except Exception as exc:  # noqa: BLE001 - the prediction itself must still be returned
        logger.warning("task %s: prediction not recorded for the correction loop: %s",
                       task.get("id"), str(exc).splitlines()[0][:200])
