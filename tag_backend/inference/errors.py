"""Errors of the inference backends."""
from __future__ import annotations

from ..errors import TagError


class InferenceBackendError(TagError):
    """A compiled backbone could not be exported, loaded or run."""
