"""Human-readable description of presets and weight locations (`tag-backend models`)."""
from __future__ import annotations

import os

from .config import Settings
from .presets import PRESETS


def describe_models(settings: Settings) -> str:
    from huggingface_hub import constants

    lines = []
    for preset in PRESETS.values():
        active = " (active)" if preset.name == settings.preset else ""
        lines += [
            f"{preset.name}{active}: {preset.description}",
            f"  DINOv2: {preset.dino_model}   (override: --dino / TAG_DINO_MODEL, a hub id or local dir)",
            f"  CLIP:   {preset.clip_model} pretrained={preset.clip_pretrained}   "
            "(override: --clip / TAG_CLIP_MODEL, --clip-pretrained / TAG_CLIP_PRETRAINED)",
            f"  input {preset.image_size} px, k={preset.n_segments}, CRF {'on' if preset.use_crf else 'off'}, "
            f"dense features {preset.dense_method}, {'bf16 when supported' if preset.prefer_bf16 else 'fp32'}",
            "",
        ]
    lines += [
        "Weights are looked up in:",
        f"  Hugging Face cache: {constants.HF_HUB_CACHE} (HF_HOME / HF_HUB_CACHE; offline: HF_HUB_OFFLINE=1)",
        f"  open_clip (OpenAI URLs): {os.path.expanduser('~/.cache/clip')}",
        "  or local paths: --dino DIR (save_pretrained layout), --clip local-dir:DIR "
        "(open_clip_config.json + open_clip_model.safetensors), --clip-pretrained FILE",
        "Nothing is downloaded until a command needs the model; missing weights stop with an error.",
        f"Active settings: preset={settings.preset} dino={settings.dino_model or '(preset)'} "
        f"clip={settings.clip_model or '(preset)'} device={settings.device or 'auto'}",
    ]
    return "\n".join(lines)
