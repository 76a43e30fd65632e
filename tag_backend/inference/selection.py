"""Which engine runs the backbone forwards: ``TAG_BACKEND=torch|openvino|onnxruntime|auto``.

``auto`` picks OpenVINO on CPU when the package is installed: measured on the project's 2-core
machines it runs the DINOv2 and GEM forwards 1.3-2x faster than torch at equal outputs
(docs/inference-backends.md). On CUDA, or without the package, ``auto`` is torch.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
COMPILED = {"openvino": "openvino", "onnxruntime": "onnxruntime"}  # backend -> Python package
AUTO_ORDER = ("openvino",)  # measured winner first; onnxruntime was slower than OpenVINO here


@dataclass(frozen=True)
class BackendChoice:
    """The resolved backend and the precision it computes in.

    name: "torch", "openvino" or "onnxruntime".
    precision: torch dtype of the computation (float32 or bfloat16); compiled backends load the
        weights in float32 and apply it as an inference hint.
    int8: weights compressed to int8 (OpenVINO + NNCF).
    """

    name: str
    precision: torch.dtype
    int8: bool = False

    @property
    def compiled(self) -> bool:
        return self.name != "torch"


def installed(backend: str) -> bool:
    """Whether the backend's Python package can be imported (checked without importing it)."""
    return backend == "torch" or importlib.util.find_spec(COMPILED[backend]) is not None


def resolve_backend(requested: str, device: torch.device, precision: torch.dtype, *,
                    explicit_dtype: bool, int8: bool = False) -> BackendChoice:
    """Validate ``TAG_BACKEND`` against the device, dtype and installed packages.

    ``explicit_dtype``: the precision was set by the user (TAG_DTYPE) rather than chosen from
    the preset; a compiled backend that cannot honour an explicit choice is an error, a preset
    preference it cannot honour falls back to float32.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in BACKENDS:
        raise ConfigError(f"invalid TAG_BACKEND {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "auto":
        name = "torch"
        if device.type == "cpu":
            name = next((b for b in AUTO_ORDER if installed(b)), "torch")
        if int8 and name != "openvino":
            raise ConfigError("TAG_BACKEND_INT8 needs the OpenVINO backend (CPU device and the "
                              "`openvino` and `nncf` packages installed)")
        requested = name
    if requested == "torch":
        if int8:
            raise ConfigError("TAG_BACKEND_INT8 needs TAG_BACKEND=openvino")
        return BackendChoice("torch", precision)
    if device.type != "cpu":
        raise ConfigError(f"TAG_BACKEND={requested} runs on CPU only; the device is {device} "
                          "(use TAG_BACKEND=torch or auto on GPUs)")
    if not installed(requested):
        raise ConfigError(f"TAG_BACKEND={requested} but the `{COMPILED[requested]}` package is not "
                          "installed (pip install -r requirements.txt)")
    if int8 and requested != "openvino":
        raise ConfigError("TAG_BACKEND_INT8 needs TAG_BACKEND=openvino")
    if int8 and importlib.util.find_spec("nncf") is None:
        raise ConfigError("TAG_BACKEND_INT8 needs the `nncf` package (pip install nncf)")
    if precision not in (torch.float32, torch.bfloat16):
        raise ConfigError(f"TAG_BACKEND={requested} computes in float32 or bfloat16, not {precision}")
    if requested == "onnxruntime" and precision == torch.bfloat16:
        if explicit_dtype:
            raise ConfigError("TAG_BACKEND=onnxruntime computes in float32 on CPU; unset TAG_DTYPE "
                              "or use TAG_BACKEND=openvino for bfloat16")
        precision = torch.float32
    return BackendChoice(requested, precision, int8)
