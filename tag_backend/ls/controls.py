"""Read a project's labeling config: where masks and names go, and whether guided mode is on.

Rules (docs/label-studio.md, "The labeling config"):

* The config needs an ``<Image>`` and a ``<BrushLabels>``, ``<PolygonLabels>`` or
  ``<RectangleLabels>`` whose ``toName`` is that image; each one present is filled from the same
  regions (masks, simplified outlines, boxes: tag_backend.ls.shapes).
* A ``<TextArea perRegion="true">`` on the same image receives each region's free-form name
  (open vocabulary, editable by annotators; Label Studio pairs a per-region TextArea item with
  the region whose ``id`` it shares).
* Controls with ``model_skip="true"`` are left to the annotators, as with Label Studio's own ML
  backends: the backend neither fills nor reads them.
* Guided mode is on when the first shape control (brush, else polygon, else rectangle) lists the
  project's own labels: more than one label,
  or any label when there is no per-region TextArea. Each region is then labelled with one of
  them (tag_backend.ls.guided). With a TextArea and a single label (the recommended config),
  every region gets that label and the name lives in the TextArea.
* ``<Label predicted_values="a, b">`` lists free-form names that map to that label; the
  control's ``model_score_threshold`` (a probability in [0, 1]) is the guided-mode threshold.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from label_studio_sdk.label_interface import LabelInterface

from .errors import LabelConfigError, LabelConfigWithoutImage
from .guided import ProjectLabel
from .layout import ResultLayout

logger = logging.getLogger(__name__)

#: Controls the backend fills, in order of preference for the labels (brush carries the exact mask).
SHAPE_TAGS = ("brushlabels", "polygonlabels", "rectanglelabels")

_cache: "OrderedDict[str, ResultLayout]" = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 64


def parse_label_config(config: str | None) -> ResultLayout:
    """The :class:`ResultLayout` of a labeling config; :class:`LabelConfigError` if unusable.

    Cached by config text: Label Studio sends the config with every ``/predict``.
    """
    if not config or not isinstance(config, str) or not config.strip():
        raise LabelConfigWithoutImage(
            "the labeling config is empty (expected <View> with <Image> and "
            "<BrushLabels>; see tag_backend/ls/label_config.xml)"
        )
    with _cache_lock:
        if config in _cache:
            _cache.move_to_end(config)
            return _cache[config]
    layout = _parse(config)
    with _cache_lock:
        _cache[config] = layout
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return layout


def _parse(config: str) -> ResultLayout:
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML/validation exception types
        raise LabelConfigError(f"the labeling config is not valid XML: {exc}") from None
    images = {o.name: o for o in interface.objects if o.tag.lower() == "image"}
    if not images:
        raise LabelConfigWithoutImage(
            "the labeling config has no <Image> tag: TAG labels images "
            "(use tag_backend/ls/label_config.xml)"
        )
    controls = [c for c in interface.controls if not _skipped(c)]
    shapes = {tag: [c for c in controls if c.tag.lower() == tag and not _prompt_only(c)
                    and any(t in images for t in c.to_name)]
              for tag in SHAPE_TAGS}
    present = [found[0] for found in shapes.values() if found]
    if not present:
        skipped = any(c.tag.lower() in SHAPE_TAGS for c in interface.controls)
        if skipped:
            raise LabelConfigError(
                'every <BrushLabels>/<PolygonLabels>/<RectangleLabels> of the labeling config has model_skip="true": '
                "remove it from the one the backend should fill"
            )
        raise LabelConfigError(
            "the labeling config has no <BrushLabels>, <PolygonLabels> or <RectangleLabels> pointing at an "
            "<Image>: TAG predicts masks, polygons or boxes (use tag_backend/ls/label_config.xml)"
        )
    primary = present[0]  # brush first: it carries the exact mask
    image_name = next(t for t in primary.to_name if t in images)
    text_name = _per_region_textarea(controls, image_name)
    labels = _static_labels(primary)
    guided = len(labels) > 1 or (bool(labels) and text_name is None)
    value = images[image_name].value or "$image"

    def on_image(tag: str):
        return next((c for c in shapes[tag] if image_name in c.to_name), None)

    brush, polygon, rectangle = on_image("brushlabels"), on_image("polygonlabels"), on_image("rectanglelabels")
    return ResultLayout(
        brush_name=brush.name if brush is not None else None,
        polygon_name=polygon.name if polygon is not None else None,
        polygon_labels=_static_labels(polygon) if polygon is not None else (),
        rectangle_name=rectangle.name if rectangle is not None else None,
        rectangle_labels=_static_labels(rectangle) if rectangle is not None else (),
        image_name=image_name,
        text_name=text_name,
        label=labels[0] if labels else "object",
        guided_labels=labels if guided else (),
        image_field=value.lstrip("$") or "image",
        project_labels=tuple(_project_label(primary, label) for label in labels) if guided else (),
        score_threshold=_score_threshold(primary),
    )


def _static_labels(control) -> tuple[str, ...]:
    return tuple(control.labels) if not control.dynamic_value else ()


def _prompt_only(control) -> bool:
    """``smartOnly="true"``: a smart tool whose marks are interactive prompts, not output targets."""
    return str(control.attr.get("smartOnly", "")).strip().lower() == "true"


def _skipped(control) -> bool:
    """``model_skip="true"``: the control belongs to the annotators (Label Studio ML convention)."""
    return str(control.attr.get("model_skip", "")).strip().lower() == "true"


def _project_label(control, value: str) -> ProjectLabel:
    """A label and its ``predicted_values`` synonyms (comma-separated, Label Studio convention)."""
    tag = control.labels_attrs.get(value)
    raw = str((tag.attr if tag is not None else {}).get("predicted_values") or "")
    synonyms = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip() and s.strip() != value))
    return ProjectLabel(value, synonyms)


def _score_threshold(control) -> float | None:
    raw = control.attr.get("model_score_threshold")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise LabelConfigError(
            f"<{control.tag} name=\"{control.name}\"> model_score_threshold={raw!r}: "
            "expected a probability between 0 and 1"
        )
    return value


def _per_region_textarea(controls, image_name: str) -> str | None:
    for control in controls:
        if control.tag.lower() != "textarea" or image_name not in control.to_name:
            continue
        if str(control.attr.get("perRegion", "")).lower() == "true":
            return control.name
    return None
