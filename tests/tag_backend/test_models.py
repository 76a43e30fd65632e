"""Model loading: local dirs, checkpoint files, strictness, caching, device/dtype resolution."""
from __future__ import annotations

import json

import pytest
import torch

from tag_backend import models
from tag_backend.config import settings_from_env
from tag_backend.errors import ConfigError, WeightsNotFoundError

CPU = torch.device("cpu")


def test_local_dirs_load_and_cache(tiny_dino_dir, tiny_clip_dir):
    dino = models.load_dino(tiny_dino_dir, CPU, torch.float32)
    assert dino is models.load_dino(tiny_dino_dir, CPU, torch.float32)
    assert dino.patch_size == 14 and dino.num_register_tokens == 0 and not dino.model.training
    clip = models.load_clip(tiny_clip_dir, None, CPU, torch.float32)
    assert clip is models.load_clip(tiny_clip_dir, None, CPU, torch.float32)
    assert clip.encoder_id.startswith("open_clip/local-dir/")
    emb = clip.encode_text(["a dog", "a cat", "a dog"])
    assert emb.shape == (3, clip.embed_dim)
    assert torch.allclose(torch.from_numpy(emb).norm(dim=1), torch.ones(3), atol=1e-5)
    assert (emb[0] == emb[2]).all()


def test_bf16_weights_are_a_separate_cache_entry(tiny_clip_dir):
    a = models.load_clip(tiny_clip_dir, None, CPU, torch.float32)
    b = models.load_clip(tiny_clip_dir, None, CPU, torch.bfloat16)
    assert a is not b and next(b.model.parameters()).dtype == torch.bfloat16
    cos = (torch.from_numpy(a.encode_text(["tree"])) * torch.from_numpy(b.encode_text(["tree"]))).sum()
    assert float(cos) > 0.99


def test_checkpoint_file_with_registered_architecture(tmp_path, tiny_models_dir):
    import open_clip
    from safetensors.torch import load_file, save_file

    folder = tiny_models_dir["clip"].split(":", 1)[1]
    cfg = json.loads(open(f"{folder}/open_clip_config.json").read())["model_cfg"]
    (tmp_path / "TinyTest-ViT.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "TinyTest-ViT.json")
    ckpt = tmp_path / "weights.safetensors"
    save_file(load_file(f"{folder}/open_clip_model.safetensors"), str(ckpt))
    clip = models.load_clip("TinyTest-ViT", str(ckpt), CPU, torch.float32)
    assert clip.encoder_id.startswith("open_clip/TinyTest-ViT/file-")
    ref = models.load_clip(tiny_models_dir["clip"], None, CPU, torch.float32)
    assert (clip.encode_text(["boat"]) == ref.encode_text(["boat"])).all()


def test_strict_loading_errors_name_the_cause_and_the_setting(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"does not exist.*TAG_DINO_MODEL"):
        models.load_dino(str(tmp_path / "missing" / "dir"), CPU, torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"no weights file.*--dino"):
        models.load_dino(str(tmp_path / "empty"), CPU, torch.float32)
    with pytest.raises(WeightsNotFoundError, match=r"offline.*TAG_DINO_MODEL"):
        models.load_dino("facebook/dinov2-small", CPU, torch.float32)
    with pytest.raises(WeightsNotFoundError, match=r"random weights are refused"):
        models.load_clip("ViT-B-16", None, CPU, torch.float32)
    with pytest.raises(WeightsNotFoundError, match=r"offline.*TAG_CLIP_PRETRAINED"):
        models.load_clip("ViT-B-16-quickgelu", "openai", CPU, torch.float32)
    with pytest.raises(WeightsNotFoundError, match=r"does not exist"):
        models.load_clip("ViT-B-16", str(tmp_path / "nope.pt"), CPU, torch.float32)
    with pytest.raises(WeightsNotFoundError, match=r"no open_clip_config.json"):
        models.load_clip(f"local-dir:{tmp_path / 'empty'}", None, CPU, torch.float32)
    with pytest.raises(ConfigError, match=r"local-dir:"):
        models.load_clip(str(tmp_path / "x" / "y"), None, CPU, torch.float32)
    with pytest.raises(WeightsNotFoundError, match="not a known pretrained tag"):
        models.load_clip("ViT-B-16", "no-such-tag", CPU, torch.float32)


def test_clip_local_dir_without_weights_is_refused(tmp_path, tiny_models_dir):
    folder = tiny_models_dir["clip"].split(":", 1)[1]
    (tmp_path / "open_clip_config.json").write_text(open(f"{folder}/open_clip_config.json").read())
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        models.load_clip(f"local-dir:{tmp_path}", None, CPU, torch.float32)


def test_not_a_dino_directory(tmp_path, tiny_models_dir):
    folder = tiny_models_dir["clip"].split(":", 1)[1]
    with pytest.raises(WeightsNotFoundError, match="not a valid model"):
        models.load_dino(folder, CPU, torch.float32)


def test_device_and_dtype_resolution():
    assert models.resolve_device(None).type in ("cpu", "cuda")
    assert models.resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            models.resolve_device("cuda")
    with pytest.raises(ConfigError):
        models.resolve_device("tpu-ish")
    assert models.resolve_dtype("float32", CPU, True) == torch.float32
    assert models.resolve_dtype(None, CPU, False) == torch.float32
    expected = torch.bfloat16 if models.bf16_supported(CPU) else torch.float32
    assert models.resolve_dtype(None, CPU, True) == expected
    with pytest.raises(ConfigError, match="float16 is not supported on CPU"):
        models.resolve_dtype("float16", CPU, False)
    with pytest.raises(ConfigError):
        models.resolve_dtype("int8", CPU, False)


def test_settings_from_env_reads_every_flag_and_rejects_bad_values():
    env = {"TAG_PRESET": "paper", "TAG_DINO_MODEL": "/m/dino", "TAG_CLIP_MODEL": "local-dir:/m/clip",
           "TAG_CLIP_PRETRAINED": "openai", "TAG_DB_URL": "sqlite:///x.db", "TAG_INDEX_DIR": "/i",
           "TAG_DEVICE": "cpu", "TAG_MAX_REGIONS": "7", "TAG_ALLOW_HTTP_URLS": "false"}
    s = settings_from_env(env)
    assert (s.preset, s.dino_model, s.clip_model, s.clip_pretrained, s.resolved_db_url, s.resolved_index_dir,
            s.device, s.max_regions, s.allow_http_urls) == (
        "paper", "/m/dino", "local-dir:/m/clip", "openai", "sqlite:///x.db", "/i", "cpu", 7, False)
    with pytest.raises(ConfigError, match="TAG_MAX_REGIONS"):
        settings_from_env({"TAG_MAX_REGIONS": "many"})


def test_truncated_text_forward_equals_open_clip_encode_text(tiny_clip_dir):
    clip = models.load_clip(tiny_clip_dir, None, CPU, torch.float32)
    texts = ["a", "dog", "golden retriever puppy on a sofa", "leaning tower of pisa", ""]
    ours = clip.encode_text(texts, batch_size=2)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer(texts)).float(), dim=-1)
    assert torch.allclose(torch.from_numpy(ours), ref, atol=1e-5)
