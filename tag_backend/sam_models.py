"""Loading SAM 2 / SAM 2.1 (transformers ``Sam2Model`` + ``Sam2Processor``), strictly, cached.

Same rules as :mod:`tag_backend.models`: a Hugging Face id (read from the local cache first,
the hub only when reachable) or a local directory saved with ``save_pretrained``; missing
weights raise :class:`WeightsNotFoundError` naming ``TAG_SAM_MODEL``; never random weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, WeightsNotFoundError
from .models import _cached, _from_pretrained, hf_source

logger = logging.getLogger(__name__)

#: SAM 2.1 Hiera-Tiny: the smallest SAM 2.1 checkpoint (39 M parameters).
DEFAULT_SAM_MODEL = "facebook/sam2.1-hiera-tiny"
SAM2_MODEL_TYPES = ("sam2",)


@dataclass
class LoadedSam:
    """A SAM 2 model and its processor, ready for inference (eval mode, on ``device``)."""

    model: torch.nn.Module
    processor: object
    model_id: str
    device: torch.device
    dtype: torch.dtype


def _sam_error(model: str, cause: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"cannot load SAM 2 weights {model!r}: {cause}. Set TAG_SAM_MODEL to a local directory "
        "saved with `save_pretrained` (config.json, model.safetensors, processor_config.json), or "
        f"pre-fill the Hugging Face cache on a machine with internet (`huggingface-cli download "
        f"{model}`), or turn refinement off (TAG_REFINE=none)."
    )


def _build_sam(model: str, device: torch.device, dtype: torch.dtype) -> LoadedSam:
    from transformers import AutoConfig, Sam2Model, Sam2Processor  # heavy import, only when loading

    local, is_dir = hf_source(model, _sam_error)
    source = str(local) if is_dir else model
    try:
        config = _from_pretrained(AutoConfig, source, offline_first=not is_dir)
        if config.model_type not in SAM2_MODEL_TYPES:
            raise ConfigError(
                f"{model!r} is a {config.model_type!r} model; TAG_SAM_MODEL needs a SAM 2 / SAM 2.1 "
                "checkpoint (model_type 'sam2', e.g. facebook/sam2.1-hiera-tiny)")
        net = _from_pretrained(Sam2Model, source, offline_first=not is_dir)
        processor = _from_pretrained(Sam2Processor, source, offline_first=not is_dir)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        cause = "not in the local Hugging Face cache and the hub is unreachable (offline?)"
        if is_dir:
            cause = f"the directory {local} is not a valid SAM 2 model ({exc})"
        raise _sam_error(model, cause) from None
    net = net.to(device=device, dtype=dtype).eval()
    logger.info("SAM 2 loaded: %s on %s (%s)", model, device, dtype)
    return LoadedSam(model=net, processor=processor, model_id=model, device=device, dtype=dtype)


def load_sam(model: str, device: torch.device, dtype: torch.dtype) -> LoadedSam:
    """Load (once per process) a SAM 2 model from a Hugging Face id or a local directory."""
    path = Path(model).expanduser()
    key = ("sam2", str(path.resolve()) if path.is_dir() else model, str(device), str(dtype))
    return _cached(key, lambda: _build_sam(model, device, dtype))
