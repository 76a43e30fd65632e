"""Loading DINOv2 (transformers) and CLIP (open_clip), strictly, cached per process.

Nothing here runs at import time. Every loader refuses to run on random weights: when
pretrained weights were asked for and cannot be found, a :class:`WeightsNotFoundError` names
the cause and the flag / environment variable to set.

Given :class:`~tag_backend.model_records.ModelRecords` (the compiled backends pass them), a
loader whose checkpoint files are unchanged since a process built the model returns it
unbuilt: its description comes from the record, and the torch model is built, by the same
code, on first use of ``.model`` (exporting a graph, encoding a text the store has not
embedded). Such a process never imports transformers or open_clip when it needs neither.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError, WeightsNotFoundError
from .model_records import ModelRecords, SourceFile, hub_cached_file

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> cuda when available, else cpu. Refuses cuda on a machine without it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {device!r} (TAG_DEVICE / --device): {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available (TAG_DEVICE / --device)")
    return dev


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def resolve_dtype(dtype: str | None, device: torch.device, prefer_bf16: bool) -> torch.dtype:
    """Explicit dtype wins; otherwise bf16 when the preset prefers it and the device has it."""
    if dtype:
        try:
            chosen = _DTYPES[dtype.lower()]
        except KeyError:
            raise ConfigError(f"invalid dtype {dtype!r}; use float32, bfloat16 or float16 (TAG_DTYPE)") from None
        if chosen == torch.float16 and device.type == "cpu":
            raise ConfigError("float16 is not supported on CPU; use bfloat16 or float32 (TAG_DTYPE)")
        return chosen
    return torch.bfloat16 if prefer_bf16 and bf16_supported(device) else torch.float32


def _cached(key: tuple, build):
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def file_fingerprint(path: str | Path) -> str:
    """Cheap stable identity of a weights file: size + sha256 of its first and last 4 MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(4 << 20))
        if size > 8 << 20:
            f.seek(-(4 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:16]


def files_id(files: Sequence[SourceFile]) -> str:
    """Identity of a checkpoint: the names, sizes, modification times and
    :func:`file_fingerprint` of its files. The sampled bytes alone would miss a fine-tune of
    middle blocks written over the same path; writing it changes the modification time (a copy
    made elsewhere only costs one new export)."""
    h = hashlib.sha256()
    for source in sorted(files, key=lambda f: Path(f.path).name):
        stat = os.stat(source.path)
        h.update(f"{Path(source.path).name}:{stat.st_size}:{stat.st_mtime_ns}:"
                 f"{file_fingerprint(source.path)};".encode())
    return h.hexdigest()[:16]


class _LazyModel:
    """``.model`` built by ``build`` on first access, once, whichever thread asks first.

    Built as the loaders build at start, whatever the caller's mode: a model created under
    ``torch.inference_mode`` holds inference tensors, which take other kernels (last-bit
    differences in the text tower).
    """

    build: Callable[[], object]

    def _built(self):
        parts = getattr(self, "_parts", None)
        if parts is None:
            with self._build_lock:
                if getattr(self, "_parts", None) is None:
                    with torch.inference_mode(False), torch.enable_grad():
                        self._parts = self.build()
                parts = self._parts
        return parts

    @property
    def built(self) -> bool:
        """Whether the torch model exists in this process (False until first use when lazy)."""
        return getattr(self, "_parts", None) is not None


# ----------------------------------------------------------------------------- DINOv2
@dataclass(eq=False)
class LoadedDino(_LazyModel):
    """A DINOv2 backbone for inference (eval mode, on ``device`` in ``dtype``).

    weights_id: identity of the checkpoint files (config and weights; keys compiled graphs),
        None when they could not be located (then the graph cache hashes the loaded weights).
    build: returns the torch model (called once, on first use of :attr:`model`).
    """

    model_id: str
    patch_size: int
    num_register_tokens: int
    hidden_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype
    weights_id: str | None
    build: Callable[[], torch.nn.Module] = field(repr=False)

    def __post_init__(self) -> None:
        self._build_lock = threading.Lock()

    @property
    def model(self) -> torch.nn.Module:
        return self._built()


def _dino_error(model: str, cause: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"cannot load DINOv2 weights {model!r}: {cause}. Set TAG_DINO_MODEL / --dino to a local "
        "directory saved with `save_pretrained` (config.json + model.safetensors), or pre-fill the "
        f"Hugging Face cache on a machine with internet (`huggingface-cli download {model}`)."
    )


def hf_source(model: str, error) -> tuple[Path, bool]:
    """(path, is a local directory) of a Hugging Face model spec (hub id or local directory);
    ``error(model, cause)`` builds the exception for a missing directory or weights file."""
    local = Path(model).expanduser()
    is_dir = local.is_dir()
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1
    if not is_dir and looks_like_path:
        raise error(model, f"directory {local} does not exist")
    if is_dir and not any(local.glob("*.safetensors")) and not any(local.glob("*.bin")):
        raise error(model, f"no weights file (*.safetensors / *.bin) in {local}")
    return local, is_dir


def _dino_net(model: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, dict]:
    """The transformers DINOv2 model of a hub id or local directory, and its description."""
    from transformers import AutoConfig, AutoModel  # heavy import, only when loading

    local, is_dir = hf_source(model, _dino_error)
    source = str(local) if is_dir else model
    try:
        config = _from_pretrained(AutoConfig, source, offline_first=not is_dir)
        if config.model_type not in ("dinov2", "dinov2_with_registers"):
            raise ConfigError(f"{model!r} is a {config.model_type!r} model, not DINOv2 (TAG_DINO_MODEL)")
        net = _from_pretrained(AutoModel, source, offline_first=not is_dir)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        cause = "not in the local Hugging Face cache and the hub is unreachable (offline?)"
        if is_dir:
            cause = f"the directory {local} is not a valid model ({exc})"
        raise _dino_error(model, cause) from None
    net = net.to(device=device, dtype=dtype).eval()
    return net, {"patch_size": int(config.patch_size),
                 "num_register_tokens": int(getattr(config, "num_register_tokens", 0) or 0),
                 "hidden_size": int(config.hidden_size)}


def _dino_files(model: str) -> list[SourceFile] | None:
    """The files of a DINOv2 checkpoint: its directory, or its snapshot in the Hugging Face
    cache; None when that cannot be told without the hub."""
    local, is_dir = hf_source(model, _dino_error)
    if is_dir:
        return [SourceFile(str(p.resolve())) for p in sorted(local.iterdir()) if p.is_file()]
    config = hub_cached_file(model, "config.json")
    if config is None:
        return None
    folder = Path(config).parent
    return [SourceFile(str(folder / p.name), hub=(model, p.name)) for p in sorted(folder.iterdir())
            if p.is_file()]


def _load_dino(model: str, device: torch.device, dtype: torch.dtype,
               records: ModelRecords | None) -> LoadedDino:
    key = {"kind": "dino", "model": _spec(model), "device": str(device), "dtype": str(dtype)}
    fields = records.get(key) if records is not None else None
    if fields is not None:
        def build() -> torch.nn.Module:
            net, built = _dino_net(model, device, dtype)
            _check_record(f"DINOv2 {model!r}", built, fields)
            return net

        logger.debug("DINOv2 %s described by its record; built on first use", model)
        return _loaded_dino(model, device, dtype, fields, build)
    net, fields = _dino_net(model, device, dtype)
    _remember(records, key, _dino_files(model) if records is not None else None, fields)
    loaded = _loaded_dino(model, device, dtype, fields, lambda: net)
    _ = loaded.model  # built now: nothing left to defer
    return loaded


def _loaded_dino(model: str, device: torch.device, dtype: torch.dtype, fields: dict, build) -> LoadedDino:
    return LoadedDino(model_id=model, patch_size=fields["patch_size"],
                      num_register_tokens=fields["num_register_tokens"], hidden_size=fields["hidden_size"],
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device, dtype=dtype,
                      weights_id=fields["weights_id"], build=build)


def _remember(records: ModelRecords | None, key: dict, files: list[SourceFile] | None,
              fields: dict) -> None:
    """Give a just-built backbone its checkpoint identity (``weights_id``, the compiled graphs'
    key) and record it. Only compiled-backend processes keep records and graphs, so a torch
    process (``records`` None) reads no checkpoint bytes for it."""
    fields["weights_id"] = files_id(files) if files else None
    if records is not None and files:
        records.put(key, files, fields)


def _spec(model: str) -> str:
    """A model spec with a local directory made absolute (the same directory, one key)."""
    local = Path(model).expanduser()
    return str(local.resolve()) if local.is_dir() else model


def _check_record(what: str, built: dict, recorded: dict) -> None:
    """Refuse a model that no longer matches the record it was described by."""
    changed = {k: (recorded[k], v) for k, v in built.items() if recorded.get(k) != v}
    if changed:
        raise ConfigError(f"{what} changed on disk while this process was running ({changed}); restart it")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect (avoids minutes of retries offline)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(cls, source: str, offline_first: bool):
    """Try the local cache first (no network), then the hub if it is reachable."""
    if offline_first:
        try:
            return cls.from_pretrained(source, local_files_only=True)
        except OSError:
            if not hub_reachable():
                raise
    return cls.from_pretrained(source)


def load_dino(model: str, device: torch.device, dtype: torch.dtype,
              records: ModelRecords | None = None) -> LoadedDino:
    """Load (once per process) a DINOv2 model from a Hugging Face id or a local directory.

    ``records``: return it unbuilt when a record describes the unchanged checkpoint (module
    docstring), and record it when it is built.
    """
    key = ("dino", _spec(model), str(device), str(dtype))
    return _cached(key, lambda: _load_dino(model, device, dtype, records))


# ----------------------------------------------------------------------------- CLIP
@dataclass(eq=False)
class LoadedClip(_LazyModel):
    """An open_clip CLIP model for inference, with its tokenizer and normalisation.

    logit_scale: the model's ``logit_scale`` parameter (its dtype, on its device), or None.
    build: returns (model, tokenizer) (called once, on first use of either).
    """

    encoder_id: str
    patch_size: int
    image_size: tuple[int, int]
    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype
    logit_scale: torch.Tensor | None
    build: Callable[[], tuple[torch.nn.Module, object]] = field(repr=False)
    weights_id: str | None = None  # identity of the checkpoint files (keys compiled graphs)

    def __post_init__(self) -> None:
        self._build_lock = threading.Lock()

    @property
    def model(self) -> torch.nn.Module:
        return self._built()[0]

    @property
    def tokenizer(self):
        return self._built()[1]

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(n, embed_dim) float32 L2-normalised text embeddings, no prompt template (TAG).

        Texts are batched by token length and each batch is cut after its longest text: with
        CLIP's causal text mask the end-of-text embedding does not depend on later positions,
        so this equals open_clip's full 77-token forward at a fraction of the cost for names.
        """
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        if not len(texts):
            return out
        tokens = self.tokenizer(list(texts))
        lengths = (tokens != 0).sum(1)
        order = torch.argsort(lengths, stable=True)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            emb = self._text_forward(tokens[idx].to(self.device)).float()
            out[idx.numpy()] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
        return out

    def _text_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        mask = getattr(model, "attn_mask", None)
        if mask is None or getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos") \
                or not hasattr(model, "token_embedding"):
            return model.encode_text(tokens)  # not a causal CLIP text tower: no truncation
        from open_clip.transformer import text_global_pool

        n = max(1, int((tokens != 0).sum(1).max()))
        tokens = tokens[:, :n]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=mask[:n, :n]))
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        proj = model.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def text_encoder(self) -> "ClipTextEncoder":
        return ClipTextEncoder(self)


class ClipTextEncoder:
    """The ``TextEncoder`` protocol (docs/ARCHITECTURE.md) on a loaded CLIP text tower."""

    def __init__(self, clip: LoadedClip) -> None:
        self.clip = clip
        self.encoder_id = clip.encoder_id
        self.dim = clip.embed_dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.clip.encode_text(texts)


def _clip_error(model: str, pretrained: str | None, cause: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"cannot load CLIP weights for model {model!r} pretrained={pretrained!r}: {cause}. Set "
        "TAG_CLIP_PRETRAINED / --clip-pretrained to a local checkpoint file, or TAG_CLIP_MODEL / "
        "--clip to `local-dir:DIR` (open_clip_config.json + weights), or pre-fill the open_clip / "
        "Hugging Face cache on a machine with internet."
    )


def _clip_identity(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """(encoder_id, checkpoint path or None) for a model spec; validates files exist."""
    import open_clip

    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise _clip_error(model, pretrained, f"no open_clip_config.json in {folder}")
        from open_clip.factory import _find_checkpoint_in_dir

        ckpt = _find_checkpoint_in_dir(folder)
        if ckpt is None:
            raise _clip_error(model, pretrained, f"no weights file (*.safetensors/*.bin/*.pth) in {folder}")
        cfg_hash = hashlib.sha256((folder / "open_clip_config.json").read_bytes()).hexdigest()[:8]
        return f"open_clip/local-dir/{cfg_hash}-{file_fingerprint(ckpt)}", ckpt
    if model not in open_clip.list_models():
        hint = f" (for a local directory use `local-dir:{model}`)" if os.sep in model else ""
        raise ConfigError(f"unknown open_clip model {model!r}{hint} (TAG_CLIP_MODEL / --clip); see `tag-backend models`")
    if not pretrained:
        raise _clip_error(model, pretrained, "no pretrained weights configured (random weights are refused)")
    if Path(pretrained).expanduser().is_file():
        return f"open_clip/{model}/file-{file_fingerprint(Path(pretrained).expanduser())}", str(Path(pretrained).expanduser())
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise _clip_error(model, pretrained, f"checkpoint file {pretrained} does not exist")
    if pretrained not in open_clip.list_pretrained_tags_by_model(model):
        raise _clip_error(model, pretrained, f"{pretrained!r} is not a known pretrained tag of {model}")
    if not _open_clip_cached(model, pretrained) and not hub_reachable():
        raise _clip_error(model, pretrained, "not in the local cache and the hub is unreachable (offline?)")
    return f"open_clip/{model}/{pretrained}", None


def _open_clip_cached(model: str, pretrained: str) -> bool:
    """Whether the weights of a pretrained tag are already in the HF / open_clip cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    repo = (cfg.get("hf_hub") or "").strip("/")
    if repo:
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, name), str):
                return True
    url = cfg.get("url") or ""
    cache = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    return bool(url) and cache.is_file()


def _clip_net(model: str, pretrained: str | None, device: torch.device,
              dtype: torch.dtype) -> tuple[torch.nn.Module, object, dict]:
    """The open_clip model, its tokenizer and its description (encoder id, sizes, normalisation)."""
    import open_clip

    encoder_id, ckpt = _clip_identity(model, pretrained)
    try:
        net = open_clip.create_model(
            model, pretrained=None if model.startswith("local-dir:") else (ckpt or pretrained),
            device="cpu", require_pretrained=True, weights_only=True,
        )
    except (RuntimeError, OSError) as exc:
        raise _clip_error(model, pretrained, f"not cached and could not be downloaded (offline?): {exc}") from None
    tokenizer = open_clip.get_tokenizer(model)
    visual = net.visual
    pre = open_clip.get_model_preprocess_cfg(net) or {}
    patch = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    net = net.to(device=device, dtype=dtype).eval()
    scale = getattr(net, "logit_scale", None)
    return net, tokenizer, {
        "encoder_id": encoder_id, "patch_size": int(patch[0]), "image_size": [int(size[0]), int(size[1])],
        "embed_dim": int(visual.output_dim), "mean": list(pre.get("mean") or open_clip.OPENAI_DATASET_MEAN),
        "std": list(pre.get("std") or open_clip.OPENAI_DATASET_STD),
        # exact: a bf16 or float32 value is a Python float without rounding
        "logit_scale": float(scale.detach().reshape(())) if scale is not None else None,
    }


def _clip_files(model: str, pretrained: str | None) -> list[SourceFile] | None:
    """The files a CLIP model is built from (config and checkpoint), or None when unknown."""
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):]).expanduser()
        return [SourceFile(str(p.resolve())) for p in sorted(folder.iterdir()) if p.is_file()]
    if pretrained and Path(pretrained).expanduser().is_file():
        return [SourceFile(str(Path(pretrained).expanduser().resolve()))]
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    repo = (cfg.get("hf_hub") or "").strip("/")
    found = [SourceFile(path, hub=(repo, name)) for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
             if repo and (path := hub_cached_file(repo, name))]
    url = cfg.get("url") or ""
    cache = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    if not repo and url and cache.is_file():
        found.append(SourceFile(str(cache)))
    return found or None


def _load_clip(model: str, pretrained: str | None, device: torch.device, dtype: torch.dtype,
               records: ModelRecords | None) -> LoadedClip:
    key = {"kind": "clip", "model": model, "pretrained": pretrained, "device": str(device), "dtype": str(dtype)}
    fields = records.get(key) if records is not None else None
    if fields is not None:
        def build() -> tuple[torch.nn.Module, object]:
            net, tokenizer, built = _clip_net(model, pretrained, device, dtype)
            _check_record(f"CLIP {model!r}", built, fields)
            return net, tokenizer

        logger.debug("CLIP %s described by its record; built on first use", model)
        return _loaded_clip(device, dtype, fields, build)
    net, tokenizer, fields = _clip_net(model, pretrained, device, dtype)
    _remember(records, key, _clip_files(model, pretrained) if records is not None else None, fields)
    loaded = _loaded_clip(device, dtype, fields, lambda: (net, tokenizer))
    _ = loaded.model  # built now: nothing left to defer
    return loaded


def _loaded_clip(device: torch.device, dtype: torch.dtype, fields: dict, build) -> LoadedClip:
    scale = fields["logit_scale"]
    return LoadedClip(
        encoder_id=fields["encoder_id"], patch_size=fields["patch_size"],
        image_size=tuple(fields["image_size"]), embed_dim=fields["embed_dim"],
        mean=tuple(fields["mean"]), std=tuple(fields["std"]), device=device, dtype=dtype,
        logit_scale=None if scale is None else torch.tensor(scale, dtype=dtype, device=device),
        build=build, weights_id=fields.get("weights_id"),
    )


def load_clip(model: str, pretrained: str | None, device: torch.device, dtype: torch.dtype,
              records: ModelRecords | None = None) -> LoadedClip:
    """Load (once per process) an open_clip model by name + tag/file, or ``local-dir:DIR``.

    ``records``: as for :func:`load_dino`.
    """
    key = ("clip", model, pretrained, str(device), str(dtype))
    return _cached(key, lambda: _load_clip(model, pretrained, device, dtype, records))
