"""The two backbone forwards as plain ``nn.Module`` graphs, ready to export.

Each graph maps normalised pixels ``(B, 3, h, w)`` float32 to one float32 tensor and wraps the
very functions the torch path runs (:func:`~tag_backend.stages.dense_clip.dense_clip_tokens`,
the transformers DINOv2 forward), so an exported graph computes what torch computes.
"""
from __future__ import annotations

import hashlib
import inspect
import sys
from contextlib import contextmanager

import torch
from torch import nn

from ..stages import dense_clip, dense_gem, dense_naclip
from ..stages.dense_clip import dense_clip_tokens


class DinoPatchGraph(nn.Module):
    """DINOv2 last-layer patch tokens ``(B, gh*gw, D)`` (CLS and register tokens dropped)."""

    def __init__(self, model: nn.Module, num_register_tokens: int) -> None:
        super().__init__()
        self.model = model
        self.skip = 1 + num_register_tokens

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, self.skip:]


class DenseClipGraph(nn.Module):
    """Dense CLIP patch features ``(B, gh*gw, D)`` of one method (GEM, NACLIP or plain) on a
    ``grid`` of patches.

    The position embedding of ``grid`` is resampled here, by torch, so that the traced forward
    finds it in :func:`~tag_backend.stages.dense_clip.position_embedding`'s cache and records
    it as a constant: traced, the antialiased bicubic resampling would be exported and
    computed by the runtime's own kernel, up to 2e-2 away from torch's.
    """

    def __init__(self, visual: nn.Module, method: str, gem_depth: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.visual, self.method, self.gem_depth = visual, method, gem_depth
        with torch.no_grad():
            dense_clip.position_embedding(visual, grid)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return dense_clip_tokens(self.visual, pixels, self.method, gem_depth=self.gem_depth).tokens[:, 1:]


@contextmanager
def exportable():
    """Trace the ordinary attention ops, not torch's fused inference fast path.

    ``nn.MultiheadAttention`` under inference mode dispatches to ``_native_multi_head_attention``,
    which exporters do not know; with the fast path off the same block runs as linear + SDPA,
    numerically the same computation.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def code_version() -> str:
    """Hash of the code that defines the graphs: a cached export is stale when it changes."""
    h = hashlib.sha256()
    for module in (dense_clip, dense_gem, dense_naclip, sys.modules[__name__]):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:16]


def weights_fingerprint(module: nn.Module) -> str:
    """Cheap identity of a module's weights: names, shapes and a strided sample of every tensor.

    Hashing every byte of a ViT-L would cost seconds at start-up; ~4k values per tensor tell
    any two trained or fine-tuned checkpoints apart.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
