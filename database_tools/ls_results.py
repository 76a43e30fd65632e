"""Read Label Studio results: group items by region ``id`` and find each region's name.

A region's name is the per-region TextArea text (``value.text[0]``, the recommended config)
or else the first label of its ``*labels`` item (``value.brushlabels[0]`` ...). Results copied
from a prediction keep the prediction's ``id``, which is how predicted and final names pair up.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_LABEL_KEYS = (
    "brushlabels", "polygonlabels", "rectanglelabels", "ellipselabels", "keypointlabels",
    "labels",
)
_GEOMETRY_KEYS = ("rle", "points", "x")


@dataclass(frozen=True)
class Region:
    """One region of a result: its ``id``, name (or None) and the item holding the geometry."""

    region_id: str
    name: str | None
    item: Mapping[str, Any]


def _first_text(values: Any) -> str | None:
    if isinstance(values, str):
        values = [values]
    if isinstance(values, list):
        for value in values:
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _has_geometry(item: Mapping[str, Any]) -> bool:
    value = item.get("value") or {}
    return any(key in value for key in _GEOMETRY_KEYS) or any(key in value for key in _LABEL_KEYS)


def regions(result: Iterable[Mapping[str, Any]] | None) -> dict[str, Region]:
    """``{region id: Region}`` of a result list; task-level TextAreas (no geometry) are ignored."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for item in result or []:
        if isinstance(item, Mapping) and item.get("id") is not None:
            groups.setdefault(str(item["id"]), []).append(item)
    found: dict[str, Region] = {}
    for region_id, items in groups.items():
        geometry = [i for i in items if _has_geometry(i)]
        if not geometry:
            continue
        typed_text = None
        label = None
        for item in items:
            value = item.get("value") or {}
            if item.get("type") == "textarea" or "text" in value:
                typed_text = typed_text or _first_text(value.get("text"))
            for key in _LABEL_KEYS:
                label = label or _first_text(value.get(key))
        mask_item = next((i for i in geometry if i.get("type") != "textarea"), geometry[0])
        found[region_id] = Region(region_id, typed_text or label, mask_item)
    return found
