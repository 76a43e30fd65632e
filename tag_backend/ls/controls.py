"""Read a project's labeling config: where masks and names go, and whether guided mode is on.

Rules (README.md "The labeling config"):

* The config needs an ``<Image>`` and a ``<BrushLabels>`` whose ``toName`` is that image.
* A ``<TextArea perRegion="true">`` on the same image receives each region's free-form name
  (open vocabulary, editable by annotators: LABEL_STUDIO.md §9.4, §10 route 1).
* Guided mode is on when the BrushLabels lists the project's own labels: more than one label,
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

from .errors import LabelConfigError
from .guided import ProjectLabel
from .layout import ResultLayout

logger = logging.getLogger(__name__)

_cache: "OrderedDict[str, ResultLayout]" = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 64


def parse_label_config(config: str | None) -> ResultLayout:
    """The :class:`ResultLayout` of a labeling config; :class:`LabelConfigError` if unusable.

    Cached by config text: Label Studio sends the config with every ``/predict``.
    """
    if not config or not isinstance(config, str) or not config.strip():
        raise LabelConfigError(
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
        raise LabelConfigError(
            "the labeling config has no <Image> tag: TAG labels images "
            "(use tag_backend/ls/label_config.xml)"
        )
    brushes = [
        c
        for c in interface.controls
        if c.tag.lower() == "brushlabels" and any(t in images for t in c.to_name)
    ]
    if not brushes:
        raise LabelConfigError(
            "the labeling config has no <BrushLabels> pointing at an <Image>: "
            "TAG predicts brush masks (use tag_backend/ls/label_config.xml)"
        )
    brush = brushes[0]
    image_name = next(t for t in brush.to_name if t in images)
    text_name = _per_region_textarea(interface, image_name)
    labels = tuple(brush.labels) if not brush.dynamic_value else ()
    guided = len(labels) > 1 or (bool(labels) and text_name is None)
    value = images[image_name].value or "$image"
    return ResultLayout(
        brush_name=brush.name,
        image_name=image_name,
        text_name=text_name,
        label=labels[0] if labels else "object",
        guided_labels=labels if guided else (),
        image_field=value.lstrip("$") or "image",
        project_labels=tuple(_project_label(brush, label) for label in labels) if guided else (),
        score_threshold=_score_threshold(brush),
    )


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


def _per_region_textarea(interface: LabelInterface, image_name: str) -> str | None:
    for control in interface.controls:
        if control.tag.lower() != "textarea" or image_name not in control.to_name:
            continue
        if str(control.attr.get("perRegion", "")).lower() == "true":
            return control.name
    return None
