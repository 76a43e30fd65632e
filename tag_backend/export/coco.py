"""Write COCO instances, per-image class masks (PNG) and a class table from named regions.

Categories are the regions' names resolved through the concept database
(:func:`database_tools.resolve.resolve_names`): spellings, merged and renamed concepts and
corrected names collapse into one category carrying the concept id. Each connected component of
a region is one COCO instance. Segmentations are polygons (holes spliced in, see
tag_backend.ls.shapes) or exact uncompressed RLE; PNG masks hold the class index of every pixel
(0 = background) in the layout the evaluator's ``folder`` dataset reads.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..ls.shapes import connected_components, mask_boxes, mask_polygons
from .regions import AnnotatedImage

logger = logging.getLogger(__name__)

SEGMENTATIONS = ("polygon", "rle")


@dataclass(frozen=True)
class Category:
    id: int  # COCO category id = class index in the PNG masks (1-based; 0 is background)
    name: str
    concept_id: int | None


@dataclass
class ExportReport:
    images: int = 0
    instances: int = 0
    categories: list[Category] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a mask: run lengths in column-major order, starting with zeros.

    Written here because pycocotools (the reference encoder) is a compiled test-only dependency;
    the format is a few lines of numpy and the tests check it against pycocotools.
    """
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return abs(0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _instances(region, segmentation: str, tolerance: float) -> list[dict]:
    """COCO annotation bodies (no ids) of one region: one per connected component."""
    out = []
    for component in connected_components(region.mask):
        box = mask_boxes(component)[0]
        body = {"bbox": [box.x, box.y, box.width, box.height], "iscrowd": 0, "area": float(component.sum())}
        if segmentation == "rle":
            body["segmentation"] = uncompressed_rle(component)
        else:
            polygons = mask_polygons(component, tolerance)
            body["segmentation"] = [[round(float(c), 2) for c in p.ravel()] for p in polygons]
            body["area"] = float(sum(_polygon_area(p) for p in polygons))
        out.append(body)
    return out


def categories_for(names: dict[str, tuple[str, int | None]]) -> tuple[list[Category], dict[str, Category]]:
    """Categories (sorted by name, ids from 1) and each region name's category."""
    resolved = sorted({v for v in names.values()}, key=lambda v: (v[0], v[1] or 0))
    by_key = {key: Category(i + 1, key[0], key[1]) for i, key in enumerate(resolved)}
    return list(by_key.values()), {name: by_key[key] for name, key in names.items()}


def write_export(images: Iterable[AnnotatedImage], names: dict[str, tuple[str, int | None]], out_dir: str | Path,
                 *, segmentation: str = "polygon", tolerance: float = 1.0, progress: bool = True,
                 total: int | None = None) -> ExportReport:
    """Write ``annotations.json`` (COCO), ``masks/<image>.png``, ``classes.txt`` and ``classes.csv``."""
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}")
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    categories, category_of = categories_for(names)
    report = ExportReport(categories=categories)
    dtype = np.uint8 if len(categories) < 255 else np.uint16  # 255 is "ignore" in the folder layout
    coco_images, annotations = [], []
    for image in tqdm(images, desc="export", unit="image", total=total, disable=not progress):
        report.skipped += [f"task {image.task_id}: {s}" for s in image.skipped]
        if image.width <= 0 or image.height <= 0:
            report.skipped.append(f"task {image.task_id}: no region with an image size")
            continue
        stem = f"{image.task_id}"
        coco_images.append({"id": image.task_id, "file_name": image.file_name, "width": image.width,
                            "height": image.height, "mask_file": f"masks/{stem}.png"})
        classes = np.zeros((image.height, image.width), dtype=dtype)
        # Larger regions first so a smaller region drawn on top of a larger one stays visible.
        for region in sorted(image.regions, key=lambda r: -int(r.mask.sum())):
            category = category_of[region.name]
            classes[region.mask] = category.id
            for body in _instances(region, segmentation, tolerance):
                annotations.append({"id": len(annotations) + 1, "image_id": image.task_id,
                                    "category_id": category.id, **body})
        _write_png(classes, out / "masks" / f"{stem}.png")
        report.images += 1
    report.instances = len(annotations)
    coco = {
        "info": {"description": "Label Studio export, names resolved through the TAG concept database"},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name, "supercategory": "",
                        **({"concept_id": c.concept_id} if c.concept_id is not None else {})} for c in categories],
    }
    _atomic_write(out / "annotations.json", json.dumps(coco))
    _atomic_write(out / "classes.txt", "".join(f"{n}\n" for n in ["background", *[c.name for c in categories]]))
    with open(out / "classes.csv.tmp", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "name", "concept_id"])
        writer.writerow([0, "background", ""])
        for c in categories:
            writer.writerow([c.id, c.name, "" if c.concept_id is None else c.concept_id])
    os.replace(out / "classes.csv.tmp", out / "classes.csv")
    return report


def _write_png(classes: np.ndarray, path: Path) -> None:
    tmp = path.with_suffix(".png.tmp")
    Image.fromarray(classes).save(tmp, format="PNG")
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
