"""GEM (Bousselham et al. 2023) self-self attention path, as a pure function of the block weights.

TAG uses GEM to turn CLIP's ViT into a dense feature extractor (``Valkyrja3607/TAG`` scripts/tag_utils/tag_wrapper.py). The reference code
(`WalBouss/GEM gem/gem_utils.py`) swaps modules inside the model and runs the blocks
sequence-first, which silently breaks on open_clip >= 2.26 (batch-first attention). Here every
tensor stays batch-first ``(B, N, C)`` and nothing in the model is replaced or mutated: the shared
model can serve several threads at once.

The helpers for splitting q/k/v into heads and for the output projection are shared with the
NACLIP path (`dense_naclip.py`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def split_qkv(attn: nn.MultiheadAttention, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Project a LayerNorm'd ``(B, N, C)`` sequence with the block's packed in-projection.

    Returns q, k, v as ``(B, heads, N, head_dim)``, the layout GEM's reference builds with
    ``qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)``.
    """
    batch, tokens, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def project_heads(attn: nn.MultiheadAttention, heads_out: torch.Tensor) -> torch.Tensor:
    """Merge ``(B, heads, N, head_dim)`` back to ``(B, N, C)`` and apply the out-projection."""
    batch, heads, tokens, head_dim = heads_out.shape
    merged = heads_out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    return F.linear(merged, attn.out_proj.weight, attn.out_proj.bias)


def adaptive_inverse_temperature(h: torch.Tensor, head_dim: int) -> torch.Tensor:
    """GEM's adaptive inverse temperature, one per image: mean token norm of the LN'd input
    (all tokens, CLS included, full width) times ``head_dim ** -0.5``. Shape ``(B, 1, 1, 1)``.

    Computed in float32 so bf16 models get the same temperature as fp32 ones.
    """
    mean_norm = h.float().norm(dim=-1).mean(dim=-1)
    return (mean_norm * head_dim**-0.5).to(h.dtype).view(-1, 1, 1, 1)


def _attend(queries: torch.Tensor, values: torch.Tensor, inv_temp: torch.Tensor | float):
    """softmax(inv_temp * queries @ queries^T) @ values on ``(S, B, H, N, d)`` stacks.

    Uses the fused scaled-dot-product kernel (the temperature is folded into the query, so the
    kernel's own scale is 1): same maths as the reference's explicit matmul + softmax, with less
    memory traffic on CPU.
    """
    stack, batch, heads, tokens, dim = queries.shape
    scaled = queries * inv_temp
    out = F.scaled_dot_product_attention(
        scaled.reshape(stack * batch, heads, tokens, dim),
        queries.reshape(stack * batch, heads, tokens, dim),
        values.reshape(stack * batch, heads, tokens, values.shape[-1]),
        scale=1.0,
    )
    return out.view(stack, batch, heads, tokens, values.shape[-1])


def self_self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inv_temp: torch.Tensor | float,
    ss_attn_iter: int,
) -> torch.Tensor:
    """GEM's self-self attention for one block: ``(B, H, N, d)`` q, k, v -> ``(B, H, N, d)``.

    Exactly `SelfSelfAttention.forward` of the reference: the three streams (v, k, q) are
    L2-normalised and refined ``ss_attn_iter`` times by attending to themselves; then each
    stream's self-similarity (normalised again) is applied to the raw v and the three are averaged.
    """
    streams = torch.stack((v, k, q))  # reference order: xs1 = v, xs2 = k, xs3 = q
    for _ in range(ss_attn_iter):
        streams = F.normalize(streams, dim=-1)
        streams = _attend(streams, streams, inv_temp)
    streams = F.normalize(streams, dim=-1)
    out = _attend(streams, v.unsqueeze(0).expand_as(streams), inv_temp)
    return (out[0] + out[1] + out[2]) / 3


def gem_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    *,
    start: int,
    ss_attn_iter: int,
    ss_attn_temp: float | None,
    keep_original: bool,
    between_blocks: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run blocks ``start..L-1`` with the parallel GEM stream; ``x`` is the state entering ``start``.

    The GEM stream starts equal to ``x``. In each block the GEM path reads ``ln_1`` of the
    *original* stream, adds ``ls_1(out_proj(self-self attention))`` to the GEM stream and skips
    the MLP. The original stream runs the block normally, sharing the q/k/v projection with the
    GEM path. Its last block is skipped unless ``keep_original`` (the GEM output does not need it).

    Returns ``(gem_stream, original_stream or None)``, both ``(B, N, C)`` before ``ln_post``.
    """
    x_gem = x
    last = len(blocks) - 1
    for index in range(start, len(blocks)):
        if between_blocks is not None:
            between_blocks()
        block = blocks[index]
        h = block.ln_1(x)
        q, k, v = split_qkv(block.attn, h)
        head_dim = q.shape[-1]
        if ss_attn_temp is None:
            inv_temp: torch.Tensor | float = adaptive_inverse_temperature(h, head_dim)
        else:
            inv_temp = ss_attn_temp
        gem = self_self_attention(q, k, v, inv_temp, ss_attn_iter)
        x_gem = x_gem + block.ls_1(project_heads(block.attn, gem))
        if index < last or keep_original:
            ori = F.scaled_dot_product_attention(q, k, v)
            x = x + block.ls_1(project_heads(block.attn, ori))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x_gem, (x if keep_original else None)
