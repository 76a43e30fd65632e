"""The backbone forwards the pipeline calls: on torch, or on a compiled graph per input size.

Both implementations take a batch ``(B, 3, h, w)`` of normalised pixels and return one
:class:`~tag_backend.types.PatchFeatures` / :class:`~tag_backend.types.DenseFeatures` per image,
so the pipeline does not know which engine ran.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..models import LoadedClip, LoadedDino
from ..stages.dense_clip import dense_clip_features
from ..stages.dino import dino_patch_features
from ..types import DenseFeatures, PatchFeatures
from .cache import ExportCache
from .errors import InferenceBackendError
from .graphs import DenseClipGraph, DinoPatchGraph, code_version, exportable, weights_fingerprint
from .selection import BackendChoice

logger = logging.getLogger(__name__)


class BackboneForwards(Protocol):
    """DINOv2 patch tokens and dense CLIP features of a batch of same-size images."""

    backend: str
    signature: str

    def dino(self, pixels: torch.Tensor) -> list[PatchFeatures]: ...

    def dense(self, pixels: torch.Tensor, method: str, gem_depth: int,
              between_blocks: Callable[[], None] | None = None) -> list[DenseFeatures]: ...


class TorchForwards:
    """The forwards in torch, on the models' device and dtype (CPU or CUDA)."""

    backend = "torch"
    signature = "torch"

    def __init__(self, dino: LoadedDino, clip: LoadedClip) -> None:
        self._dino, self._clip = dino, clip

    def dino(self, pixels: torch.Tensor) -> list[PatchFeatures]:
        return dino_patch_features(self._dino, _to_device(pixels, self._dino.device, self._dino.dtype))

    def dense(self, pixels: torch.Tensor, method: str, gem_depth: int,
              between_blocks: Callable[[], None] | None = None) -> list[DenseFeatures]:
        return dense_clip_features(self._clip.model.visual, _to_device(pixels, self._clip.device, self._clip.dtype),
                                   method, gem_depth=gem_depth, between_blocks=between_blocks)


def _to_device(pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One host-to-device copy per batch; pinned and asynchronous towards a GPU."""
    if pixels.device == device:
        return pixels.to(dtype=dtype)
    if device.type == "cuda" and pixels.device.type == "cpu":
        pixels = pixels.pin_memory()
    return pixels.to(device=device, dtype=dtype, non_blocking=True)


class CompiledForwards:
    """The forwards on a compiled backend: one graph per (backbone, input size, method).

    A graph is exported from the loaded float32 weights at first use, cached on disk
    (:class:`ExportCache`) and compiled once per process. Batches of any size share a graph.
    ``fallback``: when exporting or compiling a graph fails, log it and run that graph in torch
    (``TAG_BACKEND=auto``) instead of raising :class:`InferenceBackendError`.
    ``max_batch``: most images per call of a compiled graph; larger batches run in chunks. The
    runtimes size their working memory to the largest batch they have seen and keep it (OpenVINO
    about 1 GB per 448² image of a call, docs/inference-backends.md), while batching beyond a
    couple of images gains little on a CPU.
    """

    def __init__(self, dino: LoadedDino, clip: LoadedClip, choice: BackendChoice, cache: ExportCache,
                 *, threads: int | None = None, fallback: bool = False, max_batch: int = 2) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        for what, loaded in (("DINOv2", dino), ("CLIP", clip)):
            if loaded.device.type != "cpu" or loaded.dtype != torch.float32:
                raise InferenceBackendError(
                    f"{choice.name} exports from float32 CPU weights; the {what} model is "
                    f"{loaded.dtype} on {loaded.device}")
        self._dino, self._clip, self.choice, self.cache = dino, clip, choice, cache
        self.backend = choice.name
        # What besides the weights decides the features (part of the pipeline's feature-cache key).
        self.signature = f"{choice.name}/{choice.precision}{'/int8' if choice.int8 else ''}"
        self._impl = _backend_impl(choice.name)
        self._threads, self.max_batch = threads, max_batch
        self._fallback = TorchForwards(dino, clip) if fallback else None
        self._graphs: dict[tuple, Callable | None] = {}
        self._lock = threading.Lock()
        self._fingerprints: dict[str, str] = {}

    # ------------------------------------------------------------------ forwards
    def dino(self, pixels: torch.Tensor) -> list[PatchFeatures]:
        grid = (pixels.shape[-2] // self._dino.patch_size, pixels.shape[-1] // self._dino.patch_size)
        graph = self._graph(("dino", *pixels.shape[1:]), pixels, lambda: DinoPatchGraph(
            self._dino.model, self._dino.num_register_tokens), {"weights": self._fingerprint("dino")})
        if graph is None:
            return self._fallback.dino(pixels)
        tokens = self._run(graph, pixels)
        return [PatchFeatures(tokens=t, grid=grid) for t in tokens]

    def dense(self, pixels: torch.Tensor, method: str, gem_depth: int,
              between_blocks: Callable[[], None] | None = None) -> list[DenseFeatures]:
        """``between_blocks`` is not called: a compiled forward cannot be paused between blocks."""
        patch = self._clip.patch_size
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        graph = self._graph(("dense", *pixels.shape[1:], method, gem_depth), pixels,
                            lambda: DenseClipGraph(self._clip.model.visual, method, gem_depth, grid),
                            {"weights": self._fingerprint("clip"), "method": method, "gem_depth": gem_depth})
        if graph is None:
            return self._fallback.dense(pixels, method, gem_depth)
        feats = self._run(graph, pixels)
        return [DenseFeatures(features=f, grid=grid) for f in feats]

    def _run(self, graph: Callable, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        chunks = [graph(array[i:i + self.max_batch]) for i in range(0, len(array), self.max_batch)]
        return torch.from_numpy(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))

    # ------------------------------------------------------------------ graphs
    def _fingerprint(self, which: str) -> str:
        """The weights' part of a graph's key: the checkpoint's identity (its files, which needs
        no model built), else a hash of the loaded weights."""
        if which not in self._fingerprints:
            checkpoint = self._dino.weights_id if which == "dino" else self._clip.encoder_id
            if checkpoint:
                self._fingerprints[which] = f"checkpoint:{checkpoint}"
            else:
                module = self._dino.model if which == "dino" else self._clip.model.visual
                self._fingerprints[which] = weights_fingerprint(module)
        return self._fingerprints[which]

    def _graph(self, key: tuple, pixels: torch.Tensor, make: Callable[[], nn.Module], fields: dict):
        with self._lock:
            if key not in self._graphs:
                self._graphs[key] = self._build(key, pixels, make, fields)
            return self._graphs[key]

    def _build(self, key: tuple, pixels: torch.Tensor, make: Callable[[], nn.Module], fields: dict):
        fields = {
            "graph": key[0], "input": list(pixels.shape[1:]), **fields, "backend": self._impl.name,
            "backend_version": self._impl.version(), "int8": self.choice.int8, "code": code_version(),
            # read from the installed packages' metadata: importing them costs seconds
            "torch": torch.__version__, "transformers": metadata.version("transformers"),
            "open_clip": metadata.version("open_clip_torch"),
        }
        example = pixels[:1].detach().to(device="cpu", dtype=torch.float32)
        threads = self._threads or torch.get_num_threads()

        def export(directory):
            logger.info("exporting the %s graph for input %s to %s (first use; cached afterwards)",
                        key[0], tuple(pixels.shape[1:]), self._impl.name)
            with torch.no_grad(), exportable():
                self._impl.export(make().eval(), example, directory, self.choice.int8)

        try:
            for attempt in (1, 2):
                directory = self.cache.get_or_build(fields, export)
                try:
                    return self._impl.load(directory, self.choice.precision, threads)
                except Exception as exc:  # noqa: BLE001 - a damaged entry is rebuilt once
                    if attempt == 2:
                        raise
                    logger.warning("cached %s graph at %s unusable (%s); exporting again",
                                   key[0], directory, exc)
                    self.cache.discard(fields)
        except Exception as exc:  # noqa: BLE001 - exporters raise anything
            message = f"{self._impl.name} could not export or compile the {key[0]} graph: {type(exc).__name__}: {exc}"
            if self._fallback is None:
                raise InferenceBackendError(message + " (set TAG_BACKEND=torch to run without it)") from exc
            logger.warning("%s; this graph runs in torch", message)
            return None


def _backend_impl(name: str):
    if name == "openvino":
        from .openvino_backend import OpenVinoBackend

        return OpenVinoBackend()
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    raise InferenceBackendError(f"no compiled backend named {name!r}")


def build_forwards(dino: LoadedDino, clip: LoadedClip, choice: BackendChoice, cache_dir: str,
                   *, fallback: bool = False, max_batch: int = 2) -> BackboneForwards:
    """The forwards for a resolved backend choice (``max_batch``: see :class:`CompiledForwards`)."""
    if not choice.compiled:
        return TorchForwards(dino, clip)
    return CompiledForwards(dino, clip, choice, ExportCache(cache_dir), fallback=fallback,
                            max_batch=max_batch)
