"""Accumulate every metric of a run, image by image, under both protocols."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from .datasets import Dataset, DatasetError
from .mapping import NameMapper
from .metrics import (
    Confusion,
    Protocol,
    hungarian_ious,
    predicted_classes,
    region_majorities,
    scores,
)
from .predict import Prediction


def default_protocols(dataset: Dataset, strict_threshold: float) -> list[Protocol]:
    """TAG's (nearest class, background ignored) and the strict one (threshold, background scored)."""
    all_ids = list(range(len(dataset.classes)))
    foreground = [i for i in all_ids if i not in dataset.background_ids]
    if not foreground:
        raise DatasetError(f"{dataset.name}: no non-background class to score")
    return [
        Protocol("tag", foreground, None,
                 "TAG: every name mapped to the nearest class (threshold -1), background ignored"),
        Protocol("strict", all_ids, strict_threshold,
                 f"strict: a name maps to a class only at cosine >= {strict_threshold:g}, "
                 "unmatched names are wrong, background scored"),
    ]


@dataclass
class _State:
    protocol: Protocol
    confusion: Confusion
    regions: int = 0
    regions_right: int = 0


@dataclass
class ImageScore:
    image_id: str
    regions: int
    mask_miou: float
    region_accuracy: dict[str, float] = field(default_factory=dict)
    pixel_accuracy: dict[str, float] = field(default_factory=dict)


class Scorer:
    """Feed (gt, prediction) pairs with :meth:`add`; read everything with :meth:`summary`."""

    def __init__(self, dataset: Dataset, mapper: NameMapper, protocols: list[Protocol]) -> None:
        self.dataset, self.mapper = dataset, mapper
        n = len(dataset.classes)
        self.states = [_State(p, Confusion(n)) for p in protocols]
        self.mask_ious: list[float] = []
        self.names: Counter = Counter()
        self.names_by_class: dict[int, Counter] = defaultdict(Counter)
        self.images: list[ImageScore] = []
        self.seconds: list[float] = []

    def map_regions(self, prediction: Prediction, protocol: Protocol) -> np.ndarray:
        return self.mapper.map(prediction.names, protocol.scored, protocol.threshold)[0]

    def add(self, image_id: str, gt: np.ndarray, prediction: Prediction) -> ImageScore:
        n_cls, n_reg = len(self.dataset.classes), prediction.n_regions
        if prediction.region_map.shape != gt.shape:
            raise ValueError(f"{image_id}: prediction {prediction.region_map.shape} vs gt {gt.shape}")
        ious = hungarian_ious(prediction.region_map, gt, n_reg)
        score = ImageScore(image_id, n_reg, float(np.mean(ious)) if ious else float("nan"))
        for state in self.states:
            classes = self.map_regions(prediction, state.protocol)
            image_matrix = state.confusion.add(gt, predicted_classes(prediction.region_map, classes, n_cls),
                                               state.protocol.scored)
            majority = region_majorities(prediction.region_map, gt, n_reg, state.protocol.scored)
            valid = majority >= 0
            right = int((classes[valid] == majority[valid]).sum())
            state.regions += int(valid.sum())
            state.regions_right += right
            name = state.protocol.name
            score.region_accuracy[name] = right / int(valid.sum()) if valid.any() else float("nan")
            total = image_matrix.sum()
            score.pixel_accuracy[name] = float(np.trace(image_matrix) / total) if total else float("nan")
        self.mask_ious.extend(ious)
        owner = region_majorities(prediction.region_map, gt, n_reg, list(range(n_cls)))
        for name, cls in zip(prediction.names, owner):
            self.names[name] += 1
            if cls >= 0:
                self.names_by_class[int(cls)][name] += 1
        self.images.append(score)
        self.seconds.append(prediction.seconds)
        return score

    def summary(self, top_names: int = 30) -> dict:
        """Everything the report shows, as plain JSON-able values."""
        classes = self.dataset.classes
        protocols = {}
        for s in self.states:
            res = scores(s.confusion.matrix, s.protocol.scored)
            protocols[s.protocol.name] = {
                "description": s.protocol.description,
                "threshold": s.protocol.threshold,
                "miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"],
                "region_name_accuracy": s.regions_right / s.regions if s.regions else float("nan"),
                "regions_scored": s.regions, "pixels": res["pixels"],
                "per_class_iou": {classes[c].name: v for c, v in res["per_class_iou"].items()},
                "classes_scored": len(s.protocol.scored),
            }
        seconds = [t for t in self.seconds if t > 0]
        return {
            "images": len(self.images),
            "protocols": protocols,
            "mask_quality": {
                "hungarian_miou": float(np.mean(self.mask_ious)) if self.mask_ious else float("nan"),
                "gt_segments": len(self.mask_ious),
                "mean_regions_per_image": float(np.mean([i.regions for i in self.images]))
                if self.images else float("nan"),
            },
            "names": {
                "distinct": len(self.names),
                "top": self.names.most_common(top_names),
                "by_class": {classes[c].name: counter.most_common(5)
                             for c, counter in sorted(self.names_by_class.items())},
            },
            "seconds_per_image": float(np.mean(seconds)) if seconds else None,
        }
