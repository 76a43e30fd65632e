"""Backbone forwards on torch or on a CPU inference runtime (OpenVINO, ONNX Runtime).

The pipeline asks a :class:`~.forwards.BackboneForwards` for DINOv2 patch tokens and dense CLIP
features; which engine computes them is chosen once from the settings (``TAG_BACKEND``) by
:func:`~.selection.resolve_backend`. Compiled graphs are exported from the loaded torch weights
at first use and cached on disk (:mod:`.cache`). See docs/inference-backends.md.
"""
from .errors import InferenceBackendError
from .forwards import BackboneForwards, CompiledForwards, TorchForwards, build_forwards
from .selection import BACKENDS, BackendChoice, resolve_backend

__all__ = ["BACKENDS", "BackboneForwards", "BackendChoice", "CompiledForwards", "InferenceBackendError",
           "TorchForwards", "build_forwards", "resolve_backend"]
