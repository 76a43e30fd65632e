"""Replay an annotator who corrects wrong region names, through the real correction path.

For each image the simulated annotator keeps right names and replaces wrong ones by the ground
truth class name (strict view: a name is right only when it maps to the region's majority class).
The annotation and the prediction it started from are built as Label Studio results
(:mod:`tag_backend.ls.serializer`) and recorded with
``database_tools.corrections.record_annotation(..., embed_region=...)``, exactly what the
webhook does; ``services.refresh()`` then loads the new exemplars and concepts.

Simulations never touch the user's database: they run on a scratch copy (SQLite backup of the
configured SQLite database and a copy of its indexes, or a fresh default-vocabulary database).
"""
from __future__ import annotations

import logging
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import Settings
from .datasets import Dataset
from .mapping import NameMapper
from .metrics import Protocol, region_majorities
from .predict import Prediction

logger = logging.getLogger(__name__)

ANNOTATION_TIME = "2026-01-01T00:00:00Z"  # fixed: a resumed replay is a no-op (idempotent)


@dataclass
class CorrectionStep:
    """What the annotator did on one image (``accuracy_before``: share of right names)."""

    image_id: str
    regions: int
    corrected: int
    accuracy_before: float


def annotator_names(prediction: Prediction, gt: np.ndarray, dataset: Dataset, mapper: NameMapper,
                    strict: Protocol) -> tuple[list[str], int, int]:
    """(final name per region, regions judged, regions corrected)."""
    classes = mapper.map(prediction.names, strict.scored, strict.threshold)[0]
    majority = region_majorities(prediction.region_map, gt, prediction.n_regions, strict.scored)
    final, judged, corrected = [], 0, 0
    for name, cls, truth in zip(prediction.names, classes, majority):
        if truth < 0:  # region over ignored pixels only: the annotator leaves it alone
            final.append(name)
            continue
        judged += 1
        if cls != truth:
            corrected += 1
            final.append(dataset.classes[int(truth)].name)
        else:
            final.append(name)
    return final, judged, corrected


def build_pair(prediction: Prediction, final_names: list[str], image_id: str, model_version: str
               ) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """(annotation, prediction, {region id: mask}) in Label Studio's result format."""
    from ..ls.layout import DEFAULT_LAYOUT
    from ..ls.serializer import PlacedRegion, region_items

    height, width = prediction.region_map.shape
    predicted, annotated, masks = [], [], {}
    for i, (name, final) in enumerate(zip(prediction.names, final_names)):
        mask = prediction.region_map == i
        if not mask.any():
            continue
        rid = f"r{i}"
        score = prediction.scores[i] if i < len(prediction.scores) else 0.0
        layout = DEFAULT_LAYOUT
        predicted += region_items(PlacedRegion(mask, name, layout.label, score), width, height, layout, rid)
        annotated += region_items(PlacedRegion(mask, final, layout.label, 1.0), width, height, layout, rid)
        masks[rid] = mask
    annotation = {"id": f"eval-sim:{image_id}", "task": {"id": f"eval:{image_id}"},
                  "project": "tag-eval-simulation", "completed_by": "simulated-annotator",
                  "created_at": ANNOTATION_TIME, "updated_at": ANNOTATION_TIME, "result": annotated}
    return annotation, {"result": predicted, "model_version": model_version}, masks


class RegionEmbedder:
    """``embed_region(item) -> embedding`` for ``record_annotation``: decodes the item's brush RLE
    and pools the image's dense CLIP features over it (the predictor's kept features of the
    image, or one CLIP pass for all regions)."""

    def __init__(self, predictor, image: Image.Image, encoder_id: str) -> None:
        self.predictor, self.image, self.encoder_id = predictor, image, encoder_id
        self._vectors: dict[str, np.ndarray] = {}

    def prefetch(self, items: list[dict]) -> None:
        masks = {str(i["id"]): _decode(i) for i in items if i.get("type") == "brushlabels"}
        masks = {k: m for k, m in masks.items() if m.any()}
        if masks:
            vectors = self.predictor.embed_regions(self.image, list(masks.values()))
            self._vectors.update(zip(masks.keys(), vectors))

    def __call__(self, item) -> np.ndarray | None:
        rid = str(item.get("id"))
        if rid not in self._vectors:
            self.prefetch([dict(item)])
        return self._vectors.get(rid)


def _decode(item) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = int(item["original_height"]), int(item["original_width"])
    flat = decode_rle(item["value"]["rle"])
    return flat.reshape(h, w, 4)[..., 3] > 127


def record_correction(services, image: Image.Image, image_id: str, prediction: Prediction,
                      final_names: list[str]):
    """Record one simulated annotation through the real path and refresh the services'
    knowledge (``services``: :class:`tag_backend.services.Services`)."""
    from database_tools.corrections import record_annotation

    annotation, predicted, _ = build_pair(prediction, final_names, image_id,
                                          services.model_version())
    embedder = RegionEmbedder(services.predictor, image, services.models.clip.encoder_id)
    embedder.prefetch(annotation["result"])
    report = record_annotation(services.store, annotation, predicted, embed_region=embedder,
                               new_concept_status="active")
    services.refresh()
    return report


def scratch_settings(settings: Settings, scratch: Path) -> Settings:
    """Settings pointing at a scratch copy of the configured concept database and indexes."""
    data = scratch / "data"
    fresh = not data.exists()
    data.mkdir(parents=True, exist_ok=True)
    target_db = data / "concepts.db"
    url = settings.resolved_db_url
    if fresh and url.startswith("sqlite:///"):
        source = Path(url[len("sqlite:///"):])
        if source.is_file():
            with sqlite3.connect(str(source)) as src, sqlite3.connect(str(target_db)) as dst:
                src.backup(dst)
            index = Path(settings.resolved_index_dir)
            if index.is_dir():
                shutil.copytree(index, data / "index", dirs_exist_ok=True)
            logger.info("simulation runs on a copy of %s in %s", source, data)
    elif fresh:
        logger.warning("simulation uses a fresh default-vocabulary SQLite database in %s "
                       "(%s is not copied)", data, url.split("://", 1)[0])
    return settings.replace(data_dir=str(data), db_url=f"sqlite:///{target_db}",
                            index_dir=str(data / "index"))
