"""Resize and normalise an RGB image for DINOv2 and CLIP.

Resize policy (``resize_mode``):
- ``"squash"`` (paper): both sides resized to ``image_size`` (aspect ratio not kept).
- ``"keep_aspect"``: the longer side becomes ``image_size``, the shorter side keeps the ratio.
Each backbone then gets the image at the nearest multiple of its own patch size, normalised
with its own mean/std (TAG's released code forgot this normalisation).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError
from ..types import PreparedImage

RESIZE_MODES = ("squash", "keep_aspect")


def model_input_size(width: int, height: int, image_size: int, resize_mode: str) -> tuple[int, int]:
    """(h, w) of the model-input image."""
    if resize_mode == "squash":
        return image_size, image_size
    if resize_mode == "keep_aspect":
        scale = image_size / max(width, height)
        return max(1, round(height * scale)), max(1, round(width * scale))
    raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")


def _normalised(rgb: Image.Image, size: tuple[int, int], mean, std, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    h, w = size
    arr = np.asarray(rgb.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    t = (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return t.unsqueeze(0).to(device=device, dtype=dtype)


def _patch_multiple(size: tuple[int, int], patch: int) -> tuple[int, int]:
    return max(patch, round(size[0] / patch) * patch), max(patch, round(size[1] / patch) * patch)


def prepare_image(image: Image.Image, *, image_size: int, resize_mode: str, dino_patch: int,
                  dino_mean, dino_std, dino_dtype: torch.dtype, clip_patch: int, clip_mean, clip_std,
                  clip_dtype: torch.dtype, device: torch.device) -> PreparedImage:
    """Build the :class:`PreparedImage` for one RGB image."""
    width, height = image.size
    min_side = max(dino_patch, clip_patch)
    if min(width, height) < min_side:
        raise ImageError(
            f"image is {width}x{height} pixels, smaller than one {min_side}-pixel patch; nothing to segment"
        )
    h, w = model_input_size(width, height, image_size, resize_mode)
    model_rgb = np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.uint8)
    return PreparedImage(
        rgb=np.asarray(image, dtype=np.uint8),
        model_rgb=np.ascontiguousarray(model_rgb),
        dino_pixels=_normalised(image, _patch_multiple((h, w), dino_patch), dino_mean, dino_std,
                                dino_dtype, device),
        clip_pixels=_normalised(image, _patch_multiple((h, w), clip_patch), clip_mean, clip_std,
                                clip_dtype, device),
    )
