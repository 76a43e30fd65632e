"""Read a Label Studio JSON export: each annotated task's image and its named regions as masks.

A region is the set of result items sharing one ``id``: its shape (``brushlabels``,
``polygonlabels`` or ``rectanglelabels``) and, with the shipped config, a per-region ``textarea``
holding its free-form name. The name is the TextArea's text when there is one, else the shape's
label. Of a task's annotations the most recently updated one that was not cancelled is used.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from ..errors import TagError
from ..ls.shapes import polygon_to_mask

logger = logging.getLogger(__name__)

SHAPE_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")


class ExportFormatError(TagError):
    """The file is not a Label Studio JSON export this command can read."""


@dataclass
class Region:
    name: str
    mask: np.ndarray  # bool (height, width)
    kind: str  # the Label Studio result type it came from
    polygon: np.ndarray | None = None  # (N, 2) pixel coordinates, for polygon regions


@dataclass
class AnnotatedImage:
    task_id: int
    file_name: str
    width: int
    height: int
    regions: list[Region] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # regions that could not be read, with why


def load_export(path: str | Path) -> list[dict]:
    """The tasks of a Label Studio "JSON" export file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportFormatError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportFormatError(f"{path}: not JSON ({exc}); export the project as \"JSON\" in Label Studio") from None
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        data = data["tasks"]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise ExportFormatError(f"{path}: expected a list of tasks (Label Studio's \"JSON\" export)")
    return data


def image_file_name(url: str) -> str:
    """A stable file name for a task's image URL (Local Files path, upload name or URL path)."""
    parsed = urlparse(url)
    if parsed.path.rstrip("/").endswith("/data/local-files") and "d" in parse_qs(parsed.query):
        return unquote(parse_qs(parsed.query)["d"][0])
    return unquote(parsed.path.rsplit("/", 1)[-1]) or url


def _annotation(task: dict) -> dict | None:
    usable = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        return None
    return max(usable, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))


def _brush_mask(value: dict, width: int, height: int) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    flat = decode_rle(value["rle"])
    if flat.size != width * height * 4:
        raise ValueError(f"brush RLE holds {flat.size // 4} pixels, the image has {width}x{height}")
    return flat.reshape(height, width, 4)[:, :, 3] > 127


def _polygon(value: dict, width: int, height: int) -> np.ndarray:
    points = np.asarray(value["points"], dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise ValueError("a polygon needs at least 3 [x, y] points")
    return points / 100.0 * np.array([width, height])


def _rectangle(value: dict, width: int, height: int) -> np.ndarray:
    """The box's corners in pixels; Label Studio rotates a box about its top-left corner."""
    x, y = value["x"] / 100.0 * width, value["y"] / 100.0 * height
    w, h = value["width"] / 100.0 * width, value["height"] / 100.0 * height
    angle = math.radians(float(value.get("rotation") or 0.0))
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return corners @ rotation.T + [x, y]


def _region(items: list[dict]) -> tuple[Region | None, str | None]:
    shape = next((i for i in items if i.get("type") in SHAPE_TYPES), None)
    if shape is None:
        return None, None
    value = shape.get("value") or {}
    kind = shape["type"]
    name = _name(items)
    if not name:
        return None, f"region {shape.get('id')}: no name (neither a TextArea text nor a label)"
    width, height = int(shape.get("original_width") or 0), int(shape.get("original_height") or 0)
    if width <= 0 or height <= 0:
        return None, f"region {shape.get('id')}: no original_width/original_height"
    try:
        if kind == "brushlabels":
            return Region(name, _brush_mask(value, width, height), kind), None
        points = _polygon(value, width, height) if kind == "polygonlabels" else _rectangle(value, width, height)
        polygon = points if kind == "polygonlabels" else None
        return Region(name, polygon_to_mask(points, height, width), kind, polygon), None
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"region {shape.get('id')} ({kind}): {exc}"


def region_names(tasks: list[dict]) -> set[str]:
    """Every region name in the used annotations, without decoding any mask."""
    names = set()
    for task in tasks:
        annotation = _annotation(task)
        groups: dict[str, list[dict]] = {}
        for item in (annotation or {}).get("result") or []:
            if isinstance(item, dict) and item.get("id") is not None:
                groups.setdefault(str(item["id"]), []).append(item)
        for items in groups.values():
            name = _name(items)
            if name:
                names.add(name)
    return names


def _name(items: list[dict]) -> str | None:
    shape = next((i for i in items if i.get("type") in SHAPE_TYPES), None)
    if shape is None:
        return None
    labels = (shape.get("value") or {}).get(shape["type"]) or []
    text = next((i["value"].get("text") for i in items
                 if i.get("type") == "textarea" and isinstance(i.get("value"), dict)), None)
    name = (text[0] if isinstance(text, list) and text else None) or (labels[0] if labels else None)
    return str(name).strip() if name and str(name).strip() else None


def annotated_images(tasks: list[dict], image_field: str | None = None) -> Iterator[AnnotatedImage]:
    """Each task with a usable annotation, its regions decoded (unreadable regions listed, not fatal)."""
    for task in tasks:
        annotation = _annotation(task)
        if annotation is None:
            continue
        data = task.get("data") or {}
        url = data.get(image_field) if image_field else next((v for v in data.values() if isinstance(v, str)), None)
        groups: dict[str, list[dict]] = {}
        for item in annotation.get("result") or []:
            if isinstance(item, dict) and item.get("id") is not None:
                groups.setdefault(str(item["id"]), []).append(item)
        regions, skipped, size = [], [], None
        for items in groups.values():
            region, problem = _region(items)
            if problem:
                skipped.append(problem)
            if region is not None:
                if size is not None and region.mask.shape != size:
                    skipped.append(f"a {region.kind} region has another image size than the task's other regions")
                    continue
                size = region.mask.shape
                regions.append(region)
        if size is None:
            size = next(((int(i.get("original_height") or 0), int(i.get("original_width") or 0))
                         for i in annotation.get("result") or [] if isinstance(i, dict)), (0, 0))
        yield AnnotatedImage(int(task.get("id") or 0), image_file_name(str(url or task.get("id"))),
                             size[1], size[0], regions, skipped)
