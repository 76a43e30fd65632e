"""Write random-weight checkpoints of the real architectures to a directory.

Used by the test-suite (tiny configurations) and the benchmark (real sizes): the checkpoints
are then loaded through the normal loaders in :mod:`tag_backend.models`, exactly like a
user's local weights. Nothing in the product loads random weights by itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_DINO = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                 patch_size=14, image_size=224)
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_random_dino(directory: str | Path, seed: int = 0, **config_overrides) -> Path:
    """A DINOv2 (transformers) with random weights, saved with ``save_pretrained``."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(**{**TINY_DINO, **config_overrides})
    model = Dinov2Model(config)
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


def save_random_dino_named(directory: str | Path, hf_id: str, seed: int = 0) -> Path:
    """Random weights with the configuration of a published DINOv2 size (for benchmarks)."""
    sizes = {
        "facebook/dinov2-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                      intermediate_size=1536),
        "facebook/dinov2-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072),
        "facebook/dinov2-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                      intermediate_size=4096),
    }
    return save_random_dino(directory, seed=seed, patch_size=14, image_size=518, **sizes[hf_id])


def save_random_clip(directory: str | Path, model_cfg: dict | str = TINY_CLIP, seed: int = 0) -> str:
    """An open_clip model with random weights in ``local-dir`` layout; returns ``local-dir:DIR``."""
    import open_clip
    from safetensors.torch import save_file

    if isinstance(model_cfg, str):
        model_cfg = open_clip.get_model_config(model_cfg)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return f"local-dir:{directory}"


#: A SAM 2 small enough for tests: 256 px input, 4 Hiera blocks, 32-wide prompt encoder and decoder.
TINY_SAM2 = {
    "vision_config": {
        "backbone_config": {
            "model_type": "sam2_hiera_det_model", "hidden_size": 16, "num_attention_heads": 1,
            "image_size": [256, 256], "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [16, 32, 64, 128], "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [8, 4, 4, 4], "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [4, 4],
        },
        "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
        "fpn_hidden_size": 32,
    },
    "prompt_encoder_config": {"hidden_size": 32, "image_size": 256, "patch_size": 16},
    "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2,
                            "iou_head_hidden_dim": 32},
}


def save_random_sam2(directory: str | Path, config: dict | None = TINY_SAM2, seed: int = 0) -> Path:
    """A SAM 2 (transformers ``Sam2Model`` + ``Sam2Processor``) with random weights.

    ``config=None`` gives transformers' default configuration, the size of SAM 2.1 Hiera-Tiny
    (1024 px input), for benchmarks.
    """
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(seed)
    sam_config = Sam2Config(**(config or {}))
    side = int(sam_config.prompt_encoder_config.image_size)
    directory = Path(directory)
    Sam2Model(sam_config).save_pretrained(directory)
    Sam2Processor(Sam2ImageProcessor(size={"height": side, "width": side})).save_pretrained(directory)
    return directory


if __name__ == "__main__":  # python -m tag_backend.random_models DIR  (the `make demo` models)
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "random-models")
    save_random_dino(target / "dino")
    print(save_random_clip(target / "clip"))
