"""Dense CLIP features (GEM / NACLIP / plain) on tiny random open_clip ViTs.

The models are saved to a temp dir and loaded through `tag_backend.models.load_clip`. GEM and
NACLIP are checked against test-local transcriptions of the reference code's tensor ops
(`WalBouss/GEM gem/gem_utils.py`, `sinahmr/NACLIP clip/model.py`), written the straightforward
way (explicit matmul + softmax, NACLIP's convolution-built kernel), and the unmodified stream
against open_clip's own forward.
"""
from __future__ import annotations

import copy
import math
import threading

import open_clip
import pytest
import torch
import torch.nn.functional as F

from tag_backend.models import load_clip
from tag_backend.random_models import save_random_clip
from tag_backend.stages.dense_clip import (
    dense_clip_features,
    dense_clip_tokens,
    position_embedding,
    resample_position_embedding,
)
from tag_backend.stages.dense_naclip import neighbourhood_kernel

LAYERS = 4
CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": LAYERS, "width": 64, "head_width": 32,
                   "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP; LayerNorm affines are randomised like trained ones (with the default
    1/0 init every LN'd token has norm sqrt(C) and GEM's adaptive temperature cannot vary)."""
    from safetensors.torch import load_file, save_file

    spec = save_random_clip(tmp_path_factory.mktemp("tiny_clip"), CFG, seed=3)
    path = spec[len("local-dir:"):] + "/open_clip_model.safetensors"
    state = load_file(path)
    gen = torch.Generator().manual_seed(3)
    for key, value in state.items():
        if ".ln_" in key or key.startswith("visual.ln_"):
            noise = torch.rand(value.shape, generator=gen)
            state[key] = (0.5 + noise) if key.endswith("weight") else (noise - 0.5) * 0.2
    save_file(state, path)
    return spec


@pytest.fixture(scope="module")
def visual(clip_dir):
    return load_clip(clip_dir, None, CPU, torch.float32).model.visual


def _pixels(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- reference transcriptions
def _ref_self_self(x, attn, ss_attn_iter, ss_attn_temp):
    """`SelfSelfAttention.forward` of gem_utils.py on a batch-first (B, N, C) input."""
    B, N, C = x.shape
    H = attn.num_heads
    scale = (C // H) ** -0.5
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn_ori = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    x_ori = (attn_ori @ v).transpose(1, 2).reshape(B, N, C)
    x_ori = F.linear(x_ori, attn.out_proj.weight, attn.out_proj.bias)
    xs1, xs2, xs3 = v, k, q
    if ss_attn_temp is None:
        inv_temp = torch.norm(x, dim=-1).mean(dim=-1, keepdim=True).unsqueeze(1).unsqueeze(-1)
        inv_temp = inv_temp * scale
    else:
        inv_temp = ss_attn_temp
    for _ in range(ss_attn_iter):
        xs1, xs2, xs3 = (F.normalize(t, dim=-1) for t in (xs1, xs2, xs3))
        a1, a2, a3 = (((t @ t.transpose(-2, -1)) * inv_temp).softmax(-1) for t in (xs1, xs2, xs3))
        xs1, xs2, xs3 = a1 @ xs1, a2 @ xs2, a3 @ xs3
    xs1, xs2, xs3 = (F.normalize(t, dim=-1) for t in (xs1, xs2, xs3))
    a1, a2, a3 = (((t @ t.transpose(-2, -1)) * inv_temp).softmax(-1) for t in (xs1, xs2, xs3))
    xs = (a1 @ v + a2 @ v + a3 @ v) / 3
    xs = F.linear(xs.transpose(1, 2).reshape(B, N, C), attn.out_proj.weight, attn.out_proj.bias)
    return xs, x_ori


def _ref_gem(visual, pixels, depth, ss_attn_iter=1, ss_attn_temp=None):
    """GEMWrapper.apply_gem + modified_vit_forward + GEMResidualBlock, kept batch-first."""
    x = visual._embeds(pixels) if pixels.shape[-1] == 64 == pixels.shape[-2] else None
    if x is None:  # resampled position embedding as in modified_vit_forward
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        grid = (pixels.shape[-2] // 16, pixels.shape[-1] // 16)
        pos = visual.positional_embedding
        patch = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=grid, mode="bicubic", antialias=True)
        x = x + torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])], 0)
        x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    gem_ids = {len(blocks) - i for i in range(1, depth)}
    x_gem = None
    for index, block in enumerate(blocks):
        if index not in gem_ids:
            x = block(x)
            continue
        x_gem = x if x_gem is None else x_gem
        gem_res, ori_res = _ref_self_self(block.ln_1(x), block.attn, ss_attn_iter, ss_attn_temp)
        x_ori = x + block.ls_1(ori_res)
        x = x_ori + block.ls_2(block.mlp(block.ln_2(x_ori)))
        x_gem = x_gem + block.ls_1(gem_res)
    return visual.ln_post(x_gem) @ visual.proj, visual.ln_post(x) @ visual.proj


def _ref_naclip_kernel(dim1, dim2, std):
    """NACLIP's `gaussian_window` + `get_attention_addition` (convolution of one-hot maps)."""
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in (2 * dim1 - 1, 2 * dim2 - 1):
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim))
    window = torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2)).permute((0, 3, 1, 2))
    out = F.conv2d(m.contiguous().view(-1, dim1, dim2).unsqueeze(1),
                   window.unsqueeze(0).unsqueeze(1), padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    out = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
    return torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), out])


def _ref_naclip(visual, pixels, std):
    """NACLIP `arch='reduced'`, `attn_strategy='naclip'`: sequence-first `custom_attn`."""
    grid = (pixels.shape[-2] // 16, pixels.shape[-1] // 16)
    x = visual._embeds(pixels)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    block = visual.transformer.resblocks[-1]
    x = block.ln_1(x).permute(1, 0, 2)  # NLD -> LND as in NACLIP
    _, bsz, embed_dim = x.shape
    heads = block.attn.num_heads
    head_dim = embed_dim // heads
    _, k, v = F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
    k = k.contiguous().view(-1, bsz * heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * heads, head_dim).transpose(0, 1)
    weights = torch.bmm(k, k.transpose(1, 2)) * head_dim**-0.5 + _ref_naclip_kernel(*grid, std)
    out = torch.bmm(F.softmax(weights, dim=-1), v)
    out = out.transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    out = block.attn.out_proj(out).permute(1, 0, 2)
    return visual.ln_post(out) @ visual.proj


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", ["plain", "gem", "naclip"])
def test_original_stream_equals_open_clip_forward_native(visual, method):
    pixels = _pixels(2, 64, 64)
    out = dense_clip_tokens(visual, pixels, method, gem_depth=3, return_original=True)
    with torch.no_grad():
        expected = visual(pixels)
    torch.testing.assert_close(out.original[:, 0], expected, atol=1e-5, rtol=1e-5)
    if method == "plain":
        assert out.tokens is out.original


@pytest.mark.parametrize("size", [(128, 128), (128, 96)])
def test_original_stream_equals_open_clip_resized_model(clip_dir, visual, size):
    """open_clip's loader resamples the position embedding itself when the image size differs."""
    resized = open_clip.create_model(clip_dir, force_image_size=size).eval().visual
    pixels = _pixels(2, *size, seed=1)
    with torch.no_grad():
        expected = resized(pixels)
    for method in ("plain", "gem"):
        out = dense_clip_tokens(visual, pixels, method, gem_depth=4, return_original=True)
        torch.testing.assert_close(out.original[:, 0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(position_embedding(visual, (size[0] // 16, size[1] // 16)),
                               resized.positional_embedding, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("ss_attn_iter,ss_attn_temp", [(1, None), (2, None), (0, None), (1, 3.0)])
@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_gem_matches_reference_ops(visual, size, ss_attn_iter, ss_attn_temp):
    pixels = _pixels(2, *size, seed=2)
    with torch.no_grad():
        ref_gem, ref_ori = _ref_gem(visual, pixels, 3, ss_attn_iter, ss_attn_temp)
    out = dense_clip_tokens(visual, pixels, "gem", gem_depth=3, ss_attn_iter=ss_attn_iter,
                            ss_attn_temp=ss_attn_temp, return_original=True)
    torch.testing.assert_close(out.tokens, ref_gem, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.original, ref_ori, atol=1e-5, rtol=1e-5)


def test_gem_depth(visual):
    pixels = _pixels(1, 64, 64, seed=4)
    plain = dense_clip_tokens(visual, pixels, "plain").tokens
    torch.testing.assert_close(dense_clip_tokens(visual, pixels, "gem", gem_depth=1).tokens, plain)
    outputs = [dense_clip_tokens(visual, pixels, "gem", gem_depth=d).tokens for d in (2, 3, 5)]
    for out in outputs:
        assert (out - plain).abs().max() > 1e-2
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
    with torch.no_grad():
        ref_all, _ = _ref_gem(visual, pixels, LAYERS + 1)
    torch.testing.assert_close(outputs[2], ref_all, atol=1e-5, rtol=1e-5)
    # deeper than the model: every block gets the GEM path (the reference would crash)
    torch.testing.assert_close(dense_clip_tokens(visual, pixels, "gem", gem_depth=7).tokens,
                               outputs[2])


@pytest.mark.parametrize("method", ["plain", "gem", "naclip"])
@pytest.mark.parametrize("size", [(64, 64), (128, 96), (48, 112)])
def test_shapes_grids_finite(visual, method, size):
    feats = dense_clip_features(visual, _pixels(2, *size), method, gem_depth=4)
    grid = (size[0] // 16, size[1] // 16)
    assert len(feats) == 2
    for f in feats:
        assert f.grid == grid
        assert f.features.shape == (grid[0] * grid[1], CFG["embed_dim"])
        assert f.features.dtype == torch.float32
        assert torch.isfinite(f.features).all()


@pytest.mark.parametrize("method, gem_depth", [("plain", 1), ("gem", 3), ("gem", 9), ("naclip", 1)])
def test_between_blocks_runs_before_every_block_and_changes_nothing(visual, method, gem_depth):
    pixels = _pixels(1, 64, 64)
    calls = []
    hooked = dense_clip_features(visual, pixels, method, gem_depth=gem_depth,
                                 between_blocks=lambda: calls.append(1))
    assert len(calls) == LAYERS  # NACLIP's last block and GEM's blocks count once each
    plain = dense_clip_features(visual, pixels, method, gem_depth=gem_depth)
    torch.testing.assert_close(hooked[0].features, plain[0].features)


def test_batch_equals_single_images(visual):
    pixels = _pixels(3, 96, 64, seed=5)
    batch = dense_clip_features(visual, pixels, "gem", gem_depth=3)
    for i in range(3):
        single = dense_clip_features(visual, pixels[i:i + 1], "gem", gem_depth=3)[0]
        torch.testing.assert_close(batch[i].features, single.features, atol=1e-5, rtol=1e-5)


def test_naclip_matches_reference(visual):
    for grid in [(4, 4), (3, 5)]:
        torch.testing.assert_close(neighbourhood_kernel(grid, 5.0), _ref_naclip_kernel(*grid, 5.0),
                                   atol=1e-6, rtol=1e-6)
    pixels = _pixels(2, 64, 64, seed=6)
    with torch.no_grad():
        expected = _ref_naclip(visual, pixels, 2.0)
    out = dense_clip_tokens(visual, pixels, "naclip", naclip_gaussian_std=2.0).tokens
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    gem = dense_clip_tokens(visual, pixels, "gem", gem_depth=3).tokens
    plain = dense_clip_tokens(visual, pixels, "plain").tokens
    assert (out - gem).abs().max() > 1e-2 and (out - plain).abs().max() > 1e-2


def test_bf16_close_to_fp32(clip_dir, visual):
    visual_bf16 = load_clip(clip_dir, None, CPU, torch.bfloat16).model.visual
    assert visual_bf16.conv1.weight.dtype == torch.bfloat16
    pixels = _pixels(2, 128, 96, seed=7)
    for method in ("plain", "gem", "naclip"):
        ref = dense_clip_tokens(visual, pixels, method, gem_depth=4).tokens
        low = dense_clip_tokens(visual_bf16, pixels, method, gem_depth=4).tokens
        assert low.dtype == torch.float32 and torch.isfinite(low).all()
        cosine = F.cosine_similarity(ref, low, dim=-1)
        assert cosine.min() > 0.99, (method, cosine.min())


def test_model_not_modified(clip_dir):
    model = load_clip(clip_dir, None, CPU, torch.float32).model
    visual = copy.deepcopy(model.visual)
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    modules_before = [type(m) for m in visual.modules()]
    pixels = _pixels(1, 96, 64, seed=8)
    with torch.no_grad():
        forward_before = visual(_pixels(1, 64, 64))
    for method in ("plain", "gem", "naclip"):
        dense_clip_features(visual, pixels, method, gem_depth=3)
    after = visual.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert [type(m) for m in visual.modules()] == modules_before
    assert "forward" not in vars(visual)
    with torch.no_grad():
        torch.testing.assert_close(visual(_pixels(1, 64, 64)), forward_before, atol=0, rtol=0)


def test_concurrent_threads_match_sequential(visual):
    jobs = [("gem", _pixels(1, 96, 64, seed=9)), ("naclip", _pixels(2, 64, 112, seed=10)),
            ("gem", _pixels(2, 128, 128, seed=11)), ("plain", _pixels(1, 64, 64, seed=12))]
    sequential = [dense_clip_tokens(visual, p, m, gem_depth=3).tokens for m, p in jobs]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(jobs))

    def run(index: int) -> None:
        barrier.wait()
        for _ in range(3):
            method, pixels = jobs[index]
            results[index] = dense_clip_tokens(visual, pixels, method, gem_depth=3).tokens

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index, expected in enumerate(sequential):
        torch.testing.assert_close(results[index], expected, atol=1e-6, rtol=1e-6)


def test_position_embedding_cached_and_matches_open_clip_resampler(visual):
    first = position_embedding(visual, (6, 8))
    assert position_embedding(visual, (6, 8)) is first
    assert position_embedding(visual, (4, 4)) is visual.positional_embedding
    state = {"visual.positional_embedding": visual.positional_embedding.detach().clone()}
    target = copy.deepcopy(visual)
    target.grid_size = (6, 8)
    holder = torch.nn.Module()
    holder.visual = target
    open_clip.model.resize_pos_embed(state, holder)
    torch.testing.assert_close(first, state["visual.positional_embedding"], atol=1e-6, rtol=1e-6)
    bf16 = resample_position_embedding(visual.positional_embedding.detach().bfloat16(), (4, 4),
                                       (6, 8))
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), first, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("pixels,kwargs,message", [
    (torch.zeros(1, 3, 64, 60), {}, "multiple of the patch size"),
    (torch.zeros(3, 64, 64), {}, r"\(B, 3, h, w\)"),
    (torch.zeros(1, 1, 64, 64), {}, r"\(B, 3, h, w\)"),
    (torch.zeros(0, 3, 64, 64), {}, "batch size 0"),
    (torch.zeros(1, 3, 64, 64), {"method": "maskclip"}, "unknown dense method"),
    (torch.zeros(1, 3, 64, 64), {"gem_depth": 0}, "gem_depth"),
    (torch.zeros(1, 3, 64, 64), {"ss_attn_iter": -1}, "ss_attn_iter"),
    (torch.zeros(1, 3, 64, 64), {"ss_attn_temp": 0.0}, "ss_attn_temp"),
    (torch.zeros(1, 3, 64, 64), {"naclip_gaussian_std": -1.0}, "naclip_gaussian_std"),
])
def test_bad_input_raises(visual, pixels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        dense_clip_features(visual, pixels, **kwargs)


def test_rejects_non_vit():
    with pytest.raises(TypeError, match="VisionTransformer"):
        dense_clip_features(torch.nn.Linear(2, 2), torch.zeros(1, 3, 64, 64))


def test_sequence_first_blocks_are_handled(visual):
    """A tower built sequence-first (open_clip <= 2.24 layout) gives the same features."""
    seq_first = copy.deepcopy(visual)
    seq_first.transformer.batch_first = False
    for block in seq_first.transformer.resblocks:
        block.attn.batch_first = False
    pixels = _pixels(2, 96, 64, seed=13)
    native = _pixels(2, 64, 64, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(seq_first(native), visual(native), atol=1e-5, rtol=1e-5)
    for method in ("plain", "gem", "naclip"):
        out = dense_clip_tokens(seq_first, pixels, method, gem_depth=3, return_original=True)
        ref = dense_clip_tokens(visual, pixels, method, gem_depth=3, return_original=True)
        torch.testing.assert_close(out.tokens, ref.tokens, atol=1e-5, rtol=1e-5)
