"""DINOv2 last-layer patch tokens (after the final LayerNorm; CLS and register tokens dropped)."""
from __future__ import annotations

import torch

from ..models import LoadedDino
from ..types import PatchFeatures


@torch.inference_mode()
def dino_patch_features(dino: LoadedDino, pixels: torch.Tensor) -> list[PatchFeatures]:
    """pixels: (B, 3, h, w) normalised, h and w multiples of the patch size."""
    out = dino.model(pixel_values=pixels)
    hidden = out.last_hidden_state  # (B, 1 + R + N, D), already layer-normed by Dinov2Model
    grid = (pixels.shape[-2] // dino.patch_size, pixels.shape[-1] // dino.patch_size)
    skip = 1 + dino.num_register_tokens
    return [PatchFeatures(tokens=h[skip:].float(), grid=grid) for h in hidden]
