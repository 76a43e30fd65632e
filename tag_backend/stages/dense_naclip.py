"""NACLIP (Hajimiri et al., arXiv 2404.08181) training-free last block for dense CLIP features.

Follows the authors' code (`sinahmr/NACLIP clip/model.py`, ``arch='reduced'``,
``attn_strategy='naclip'``, ``gaussian_std=5``) on open_clip's batch-first blocks:

- attention logits = ``k @ k^T * head_dim^-0.5`` plus a Gaussian neighbourhood kernel
  ``exp(-d^2 / (2 std^2))`` over patch-grid distance ``d`` (the CLS row and column get 0),
  added to the logits *unscaled*, as in the authors' current code;
- output = ``out_proj(softmax(...) @ v)`` only: no residual connection and no MLP in the last
  block (the "reduced" architecture); then ``ln_post`` and ``proj`` as usual.

Differences from the authors' code, on purpose: the block's ``ls_1`` layer scale is applied to the
attention output (it is the identity in OpenAI/LAION CLIP, so the numbers are unchanged for them);
position embeddings are resampled like GEM/open_clip (bicubic, antialias) instead of NACLIP's
``scale_factor + 0.1`` bicubic; no sliding window and no PAMR (the caller pools per segment).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from tag_backend.stages.dense_gem import project_heads, split_qkv

logger = logging.getLogger(__name__)

_KERNEL_CACHE_SIZE = 8
_kernel_cache: OrderedDict[tuple[int, int, float], torch.Tensor] = OrderedDict()
_kernel_lock = threading.Lock()


def _build_neighbourhood_kernel(grid: tuple[int, int], std: float) -> torch.Tensor:
    """``(1 + gh*gw, 1 + gh*gw)`` float32 Gaussian of patch-grid distance, CLS row/column 0."""
    rows, cols = grid
    ys, xs = torch.meshgrid(
        torch.arange(rows, dtype=torch.float32),
        torch.arange(cols, dtype=torch.float32),
        indexing="ij",
    )
    coords = torch.stack((ys.reshape(-1), xs.reshape(-1)), dim=1)
    squared = torch.cdist(coords, coords).square()
    kernel = torch.exp(-squared / (2.0 * std * std))
    return F.pad(kernel, (1, 0, 1, 0))


def neighbourhood_kernel(grid: tuple[int, int], std: float) -> torch.Tensor:
    """The cached NACLIP neighbourhood kernel for a patch grid (float32, CPU).

    Cached because it is O(N^2) to build (1M entries at 32x32) and identical for every image of
    the same grid; a small LRU bounds memory when aspect-preserving resizes produce many grids.
    """
    key = (int(grid[0]), int(grid[1]), float(std))
    with _kernel_lock:
        kernel = _kernel_cache.get(key)
        if kernel is not None:
            _kernel_cache.move_to_end(key)
            return kernel
    kernel = _build_neighbourhood_kernel(grid, std)
    with _kernel_lock:
        _kernel_cache[key] = kernel
        while len(_kernel_cache) > _KERNEL_CACHE_SIZE:
            _kernel_cache.popitem(last=False)
    return kernel


def naclip_last_block(
    block: nn.Module, x: torch.Tensor, grid: tuple[int, int], gaussian_std: float
) -> torch.Tensor:
    """NACLIP's "reduced" last block on the ``(B, 1 + gh*gw, C)`` state entering it.

    Returns the block output ``(B, 1 + gh*gw, C)`` before ``ln_post``: attention output only.
    """
    h = block.ln_1(x)
    _, k, v = split_qkv(block.attn, h)
    omega = neighbourhood_kernel(grid, gaussian_std).to(device=x.device, dtype=x.dtype)
    out = F.scaled_dot_product_attention(k, k, v, attn_mask=omega, scale=k.shape[-1] ** -0.5)
    return block.ls_1(project_heads(block.attn, out))
