"""Where predictions go in a project's labeling config (read by :mod:`.controls`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .guided import ProjectLabel


@dataclass(frozen=True)
class ResultLayout:
    """Where results go in the project's labeling config.

    brush_name / image_name: the BrushLabels control (None: absent) and the Image object it labels.
    polygon_name / rectangle_name: PolygonLabels / RectangleLabels controls filled from the same
        regions (None: absent), with their static labels.
    text_name: the per-region TextArea holding the free-form name (None: no TextArea).
    label: the brush label given when names go into the TextArea (open mode).
    guided_labels: the project's labels in guided mode (each region's label is chosen among
        them by the serializer's label-choice step).
    image_field: the task data key holding the image URL.
    project_labels: the guided labels with their ``predicted_values`` synonyms.
    score_threshold: the control's ``model_score_threshold`` (None: the setting's default).
    """

    brush_name: str | None = "tag"
    image_name: str = "image"
    text_name: str | None = "name"
    label: str = "object"
    guided_labels: tuple[str, ...] = field(default_factory=tuple)
    image_field: str = "image"
    polygon_name: str | None = None
    polygon_labels: tuple[str, ...] = field(default_factory=tuple)
    rectangle_name: str | None = None
    rectangle_labels: tuple[str, ...] = field(default_factory=tuple)
    project_labels: tuple[ProjectLabel, ...] = field(default_factory=tuple)
    score_threshold: float | None = None


DEFAULT_LAYOUT = ResultLayout()
