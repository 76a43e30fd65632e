"""Evaluation report: ``report.json`` (everything), ``report.md`` (tables) and ``examples.png``
(image / ground truth / prediction overlays with names, drawn with PIL only)."""
from __future__ import annotations

import colorsys
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .datasets import IGNORE, Dataset
from .mapping import NameMapper
from .metrics import Protocol
from .predict import Prediction

logger = logging.getLogger(__name__)

PANEL = 256


@dataclass
class Example:
    image_id: str
    image: Image.Image
    gt: np.ndarray
    prediction: Prediction


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}" if isinstance(value, float) else str(value)


def _seconds(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_safe(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def markdown(summary: dict, failures: list[tuple[str, str]]) -> str:
    """The human report (percentages; "–" = undefined)."""
    ds, protos, mq = summary["dataset"], summary["protocols"], summary["mask_quality"]
    lines = [f"# Evaluation: {ds['name']} ({ds['split']})", "",
             (f"- images scored: {summary['images']} of {ds['images_listed']} listed; "
              f"failures: {len(failures)}"),
             (f"- model: `{summary['model_version']}`; encoder `{summary['encoder_id']}`; "
              f"pipeline {summary['pipeline']}"),
             f"- name->class mapping encoder: `{summary['mapping_encoder']}`",
             (f"- device: {summary['environment']['device']}; seconds/image (uncached): "
              f"{_seconds(summary['seconds_per_image'])}"), "",
             "| protocol | mIoU | pixel acc. | region names right | regions | classes |",
             "|---|---|---|---|---|---|"]
    for name, p in protos.items():
        lines.append(f"| {name} | {_fmt(p['miou'])} | {_fmt(p['pixel_accuracy'])} | "
                     f"{_fmt(p['region_name_accuracy'])} | {p['regions_scored']} | {p['classes_scored']} |")
    mask_line = "No image could be scored."
    if summary["images"]:
        mask_line = (f"Mask quality (names ignored): Hungarian-matched mIoU "
                     f"**{_fmt(mq['hungarian_miou'])}** over {mq['gt_segments']} ground-truth "
                     f"segments; {mq['mean_regions_per_image']:.1f} regions per image.")
    lines += ["", *[f"- **{n}**: {p['description']}" for n, p in protos.items()], "", mask_line, ""]
    if "corrections" in summary:
        lines += ["## Quality vs. number of corrections (remaining images)", "",
                  ("| corrected images | corrected regions | TAG mIoU | strict mIoU | TAG names right "
                   "| strict names right | mask mIoU |"), "|---|---|---|---|---|---|---|"]
        for r in summary["corrections"]["curve"]:
            lines.append(f"| {r['corrected_images']} | {r['corrected_regions']} | {_fmt(r['tag_miou'])} | "
                         f"{_fmt(r['strict_miou'])} | {_fmt(r['tag_region_accuracy'])} | "
                         f"{_fmt(r['strict_region_accuracy'])} | {_fmt(r['mask_miou'])} |")
        lines.append("")
    lines += ["## Per-class IoU", "", "| class | " + " | ".join(protos) + " |",
              "|---|" + "---|" * len(protos)]
    names = list(dict.fromkeys(c for p in protos.values() for c in p["per_class_iou"]))
    for c in names:
        lines.append(f"| {c} | " + " | ".join(_fmt(p["per_class_iou"].get(c)) for p in protos.values()) + " |")
    lines += ["", "## Retrieved names", "", f"{summary['names']['distinct']} distinct names. Most frequent: "
              + ", ".join(f"{n} ({c})" for n, c in summary["names"]["top"][:20]), "",
              "| ground-truth class | names given to its regions |", "|---|---|"]
    for cls, top in summary["names"]["by_class"].items():
        lines.append(f"| {cls} | " + ", ".join(f"{n} ({c})" for n, c in top) + " |")
    if failures:
        lines += ["", f"## Failures ({len(failures)})", ""]
        lines += [f"- `{i}`: {r}" for i, r in failures[:200]]
    return "\n".join(lines) + "\n"


def _colours(n: int, palette: np.ndarray | None) -> np.ndarray:
    if palette is not None and len(palette) >= n:
        return palette[:n].astype(np.uint8)
    return np.array([[int(255 * v) for v in colorsys.hsv_to_rgb((i * 0.618) % 1, 0.75, 0.95)]
                     for i in range(n)], dtype=np.uint8)


def _overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> Image.Image:
    out = image.astype(np.float32)
    valid = labels >= 0
    out[valid] = 0.45 * out[valid] + 0.55 * colours[labels[valid]]
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _label(draw: ImageDraw.ImageDraw, labels: np.ndarray, value: int, text: str) -> None:
    ys, xs = np.nonzero(labels == value)
    if len(xs) < 20:
        return
    x, y = int(np.median(xs)), int(np.median(ys))
    box = draw.textbbox((x, y), text, anchor="mm")
    h, w = labels.shape
    dx = max(0, -box[0]) - max(0, box[2] - w)
    dy = max(0, -box[1]) - max(0, box[3] - h)
    x, y = x + dx, y + dy
    box = draw.textbbox((x, y), text, anchor="mm")
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((x, y), text, fill=(255, 255, 255), anchor="mm")


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(arr.astype(np.int32), mode="I")
    return np.asarray(img.resize(size, Image.NEAREST), dtype=np.int64)


def _row(ex: Example, dataset: Dataset, mapper: NameMapper, tag: Protocol) -> Image.Image:
    w, h = ex.image.size
    size = (PANEL, max(1, round(PANEL * h / w)))
    rgb = np.asarray(ex.image.resize(size, Image.BILINEAR))
    gt = _resize(np.where(ex.gt == IGNORE, -1, ex.gt), size)
    regions = _resize(ex.prediction.region_map, size)
    mapped = mapper.map(ex.prediction.names, tag.scored, tag.threshold)[0]
    colours = _colours(len(dataset.classes), dataset.rgb_palette)
    pred_cls = np.where(regions >= 0, np.append(mapped, -1)[regions], -1)
    gt_img, pred_img = _overlay(rgb, gt, colours), _overlay(rgb, pred_cls, colours)
    gd, pd = ImageDraw.Draw(gt_img), ImageDraw.Draw(pred_img)
    for c in np.unique(gt[gt >= 0]):
        _label(gd, gt, int(c), dataset.classes[int(c)].name)
    for r, name in enumerate(ex.prediction.names):
        _label(pd, regions, r, name)
    row = Image.new("RGB", (3 * PANEL, size[1] + 14), (255, 255, 255))
    for i, panel in enumerate((Image.fromarray(rgb), gt_img, pred_img)):
        row.paste(panel, (i * PANEL, 14))
    ImageDraw.Draw(row).text((2, 1), f"{ex.image_id}: image | ground truth | prediction (names; "
                             "colour = mapped class)", fill=(0, 0, 0))
    return row


def example_grid(examples: list[Example], dataset: Dataset, mapper: NameMapper, tag: Protocol
                 ) -> Image.Image | None:
    rows = [_row(ex, dataset, mapper, tag) for ex in examples]
    if not rows:
        return None
    grid = Image.new("RGB", (3 * PANEL, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid


def write_report(report_dir: Path, summary: dict, failures: list[tuple[str, str]],
                 examples: list[Example], dataset: Dataset, mapper: NameMapper,
                 protocols: list[Protocol]) -> dict[str, Path]:
    """Write the three files (each atomically); returns their paths."""
    files = {"json": report_dir / "report.json", "markdown": report_dir / "report.md"}
    _write_atomic(files["json"], json.dumps(_json_safe(summary), indent=1, ensure_ascii=False))
    _write_atomic(files["markdown"], markdown(summary, failures))
    grid = example_grid(examples, dataset, mapper, protocols[0])
    if grid is not None:
        files["grid"] = report_dir / "examples.png"
        tmp = report_dir / "examples.png.tmp"
        grid.save(tmp, format="PNG")
        os.replace(tmp, files["grid"])
    return files
