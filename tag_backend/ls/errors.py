"""Errors of the Label Studio backend; the app maps each to an HTTP status and a clear message."""

from __future__ import annotations

from ..errors import TagError


class BackendRequestError(TagError):
    """A request the backend cannot serve (malformed payload...): HTTP 400."""

    status = 400


class LabelConfigError(BackendRequestError):
    """The project's labeling config cannot hold TAG predictions (no Image / BrushLabels)."""


class LabelConfigWithoutImage(LabelConfigError):
    """The config has no ``<Image>`` yet (a new project): fine for ``/setup``, not for ``/predict``."""


class MediaError(TagError):
    """A task's image cannot be fetched or is not allowed (the task gets an empty result)."""

    transient = False


class TransientMediaError(MediaError):
    """The image may be fetched later (timeout, connection refused, HTTP 5xx/429): the task gets
    no prediction now rather than an empty one that Label Studio would keep."""

    transient = True
