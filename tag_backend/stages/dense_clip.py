"""Dense CLIP image features on the patch grid, as TAG uses them: GEM, NACLIP or the plain forward.

A pure functional forward over open_clip's `VisionTransformer`: it reads the block weights and
calls the blocks' own sub-modules, but never replaces, patches or mutates anything in the model,
so one loaded model can serve concurrent requests on several threads. Everything is batch-first
(open_clip >= 2.26), which avoids the silent sequence-first bug of GEM's reference forward.

Methods:
- ``"gem"``: GEM's parallel self-self attention stream in the last ``gem_depth - 1`` blocks
  (TAG's choice, `dense_gem.py`).
- ``"naclip"``: NACLIP's neighbourhood-aware, residual-free last block (`dense_naclip.py`).
- ``"plain"``: the ordinary open_clip forward's patch tokens after ``ln_post`` and ``proj``.
"""
from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tag_backend.stages.dense_gem import gem_blocks
from tag_backend.stages.dense_naclip import naclip_last_block
from tag_backend.types import DenseFeatures

logger = logging.getLogger(__name__)

METHODS = ("gem", "naclip", "plain")
_POS_CACHE_SIZE = 16
_pos_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_pos_lock = threading.Lock()


@dataclass
class DenseTokens:
    """All output tokens of one dense forward, CLS first, after ``ln_post`` and ``proj``.

    tokens: (B, 1 + gh*gw, D) float32 of the chosen method's stream.
    original: (B, 1 + gh*gw, D) float32 of the unmodified stream (open_clip's forward), when
        asked for; ``original[:, 0]`` is open_clip's pooled image embedding ("tok" pooling).
    """

    tokens: torch.Tensor
    original: torch.Tensor | None
    grid: tuple[int, int]


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value),) * 2


def check_visual(visual: nn.Module) -> None:
    """Refuse vision towers this functional forward does not reproduce exactly."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"dense CLIP features need an open_clip VisionTransformer, got {type(visual).__name__} "
            "(ResNet and timm towers are not supported)"
        )
    if visual.attn_pool is not None:
        raise ValueError("dense CLIP features do not support attentional-pooling vision towers")
    for block in visual.transformer.resblocks:
        if not isinstance(block, ResidualAttentionBlock) or hasattr(block, "ln_1_kv"):
            raise ValueError(
                "dense CLIP features need standard open_clip residual attention blocks "
                f"(got {type(block).__name__}; qk-norm / scaled-cosine variants are not supported)"
            )
        if not block.attn._qkv_same_embed_dim or block.attn.in_proj_bias is None:
            raise ValueError("dense CLIP features need packed q/k/v projections with bias")


def _check_pixels(visual: nn.Module, pixels: torch.Tensor) -> tuple[int, int]:
    """Validate ``(B, 3, h, w)`` input and return the patch grid ``(gh, gw)``."""
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"pixels must be a (B, 3, h, w) tensor, got {shape}")
    if pixels.shape[0] == 0:
        raise ValueError("pixels holds no image (batch size 0)")
    patch_h, patch_w = _pair(visual.patch_size)
    height, width = int(pixels.shape[2]), int(pixels.shape[3])
    if height < patch_h or width < patch_w or height % patch_h or width % patch_w:
        raise ValueError(
            f"input size {height}x{width} must be a positive multiple of the patch size "
            f"{patch_h}x{patch_w}"
        )
    return height // patch_h, width // patch_w


def _check_knobs(method, gem_depth, ss_attn_iter, ss_attn_temp, std) -> None:
    """Clear errors for bad knob values (they come from settings and CLI flags)."""
    if method not in METHODS:
        raise ValueError(f"unknown dense method {method!r}; expected one of {', '.join(METHODS)}")
    if isinstance(gem_depth, bool) or not isinstance(gem_depth, int) or gem_depth < 1:
        raise ValueError(f"gem_depth must be an integer >= 1, got {gem_depth!r}")
    if not isinstance(ss_attn_iter, int) or ss_attn_iter < 0:
        raise ValueError(f"ss_attn_iter must be an integer >= 0, got {ss_attn_iter!r}")
    if ss_attn_temp is not None and not (math.isfinite(ss_attn_temp) and ss_attn_temp > 0):
        raise ValueError(f"ss_attn_temp must be None (adaptive) or > 0, got {ss_attn_temp!r}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"naclip_gaussian_std must be > 0, got {std!r}")


def resample_position_embedding(posemb: torch.Tensor, old: tuple[int, int], new: tuple[int, int]):
    """``(1 + old_h*old_w, C)`` -> ``(1 + new_h*new_w, C)``: bicubic + antialias on the patch part.

    Same maths as GEM's `resample_abs_pos_embed` and open_clip's `resize_pos_embed`. Done in
    float32 (no bf16 CPU kernel for antialiased bicubic), returned in the embedding's dtype.
    """
    prefix, patches = posemb[:1], posemb[1:]
    grid = patches.float().reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", antialias=True, align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1).to(posemb.dtype)
    return torch.cat([prefix, patches], dim=0)


def position_embedding(visual: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The model's position embedding for a patch grid, resampled once per (model, grid).

    The cache is keyed weakly on the model and checks the parameter's version counter, so
    loading new weights in place invalidates it; a small LRU bounds memory.
    """
    posemb = visual.positional_embedding
    native = _pair(visual.grid_size)
    if grid == native:
        return posemb
    key = (grid, posemb._version, posemb.dtype, posemb.device)
    with _pos_lock:
        per_model = _pos_cache.setdefault(visual, OrderedDict())
        cached = per_model.get(key)
        if cached is not None:
            per_model.move_to_end(key)
            return cached
    resampled = resample_position_embedding(posemb.detach(), native, grid)
    with _pos_lock:
        per_model[key] = resampled
        while len(per_model) > _POS_CACHE_SIZE:
            per_model.popitem(last=False)
    return resampled


def _embed(visual: nn.Module, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """open_clip's `_embeds` with a resampled position embedding: ``(B, 1 + gh*gw, C)``."""
    x = visual.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    x = x + position_embedding(visual, grid).to(x.dtype)
    return visual.ln_pre(x)


def _run_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One unmodified open_clip block on a batch-first sequence, whatever the block's layout."""
    if block.attn.batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def _project(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ln_post`` then ``proj`` on every token, as float32."""
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    return x.float()


def dense_clip_tokens(
    visual: nn.Module,
    pixels: torch.Tensor,
    method: str = "gem",
    *,
    gem_depth: int = 7,
    ss_attn_iter: int = 1,
    ss_attn_temp: float | None = None,
    naclip_gaussian_std: float = 5.0,
    return_original: bool = False,
    between_blocks: Callable[[], None] | None = None,
) -> DenseTokens:
    """Every token (CLS first) of a dense forward; see `dense_clip_features` for the knobs.

    ``return_original`` also returns the unmodified stream (costs the last block once more for
    GEM/NACLIP); it is what open_clip's own forward computes, used to check the implementation.
    ``between_blocks`` is called before every block (the pipeline rebalances CPU threads there).
    """
    check_visual(visual)
    grid = _check_pixels(visual, pixels)
    blocks = visual.transformer.resblocks
    _check_knobs(method, gem_depth, ss_attn_iter, ss_attn_temp, naclip_gaussian_std)
    if method == "gem" and gem_depth > len(blocks) + 1:
        level = logging.WARNING if _warn_once(len(blocks)) else logging.DEBUG
        logger.log(level, "gem_depth=%d exceeds the %d-block model: every block gets the GEM path",
                   gem_depth, len(blocks))
        gem_depth = len(blocks) + 1
    weight = visual.conv1.weight
    with torch.no_grad():
        x = _embed(visual, pixels.to(device=weight.device, dtype=weight.dtype), grid)
        start = {"gem": len(blocks) - (gem_depth - 1), "naclip": len(blocks) - 1}.get(
            method, len(blocks))
        tick = between_blocks or _nothing
        for block in blocks[:start]:
            tick()
            x = _run_block(block, x)
        original = x
        if method == "gem":
            chosen, original = gem_blocks(
                blocks, x, start=start, ss_attn_iter=ss_attn_iter, ss_attn_temp=ss_attn_temp,
                keep_original=return_original or start == len(blocks), between_blocks=tick,
            )
        elif method == "naclip":
            tick()
            chosen = naclip_last_block(blocks[-1], x, grid, naclip_gaussian_std)
            original = _run_block(blocks[-1], x) if return_original else None
        else:
            chosen = x
        tokens = _project(visual, chosen)
        if not return_original:
            return DenseTokens(tokens=tokens, original=None, grid=grid)
        same = original is chosen
        return DenseTokens(tokens, tokens if same else _project(visual, original), grid)


def _nothing() -> None:
    return None


_warned_depths: set[int] = set()


def _warn_once(n_blocks: int) -> bool:
    """Log the gem_depth clamp once per model depth, not on every image."""
    if n_blocks in _warned_depths:
        return False
    _warned_depths.add(n_blocks)
    return True


def dense_clip_features(
    visual: nn.Module,
    pixels: torch.Tensor,
    method: str = "gem",
    *,
    gem_depth: int = 7,
    ss_attn_iter: int = 1,
    ss_attn_temp: float | None = None,
    naclip_gaussian_std: float = 5.0,
    between_blocks: Callable[[], None] | None = None,
) -> list[DenseFeatures]:
    """Dense CLIP features of a batch of images, one `DenseFeatures` per image (CLS dropped).

    Args:
        visual: open_clip ``VisionTransformer`` (fp32 or bf16 weights, any device); not modified.
        pixels: (B, 3, h, w) normalised with the CLIP model's mean/std; h and w multiples of the
            patch size (non-square is fine). Other sizes than the training size resample the
            position embedding (bicubic, antialias; cached per grid).
        method: "gem" (TAG's default), "naclip" (better VOC numbers in the literature, cheaper)
            or "plain" (open_clip's own patch tokens: no dense-prediction fix).
        gem_depth: GEM's ``depth``: the last ``gem_depth - 1`` blocks get the self-self path
            (7 = the last 6, TAG/GEM default); 1 disables GEM (the output equals "plain").
        ss_attn_iter: self-self refinement iterations (GEM default 1).
        ss_attn_temp: fixed inverse temperature of the self-self attentions; None = GEM's
            adaptive (mean token norm x head_dim^-0.5).
        naclip_gaussian_std: std in patches of NACLIP's neighbourhood kernel (paper: 5).
        between_blocks: called before every transformer block.

    Returns:
        per image, features (gh*gw, D) float32 (row-major over the grid, not normalised) on the
        model's device, and grid (gh, gw).
    """
    out = dense_clip_tokens(
        visual, pixels, method, gem_depth=gem_depth, ss_attn_iter=ss_attn_iter,
        ss_attn_temp=ss_attn_temp, naclip_gaussian_std=naclip_gaussian_std,
        between_blocks=between_blocks,
    )
    patches = out.tokens[:, 1:]
    return [DenseFeatures(features=patches[i].contiguous(), grid=out.grid)
            for i in range(patches.shape[0])]
