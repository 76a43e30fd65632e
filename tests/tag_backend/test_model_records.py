"""Backbones described by a record of an earlier build: not built until used, then the same model."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tag_backend import models
from tag_backend.eval.synthetic import make_scene
from tag_backend.model_records import ModelRecords
from tag_backend.services import Services

CPU = torch.device("cpu")


@pytest.fixture()
def fresh_process(monkeypatch):
    """What a new process sees: nothing loaded yet."""
    monkeypatch.setattr(models, "_cache", {})
    return lambda: monkeypatch.setattr(models, "_cache", {})


def test_a_recorded_backbone_is_described_without_building_it(tiny_dino_dir, tiny_clip_dir, tmp_path,
                                                                 fresh_process):
    records = ModelRecords(tmp_path)
    dino = models.load_dino(tiny_dino_dir, CPU, torch.float32, records)
    clip = models.load_clip(tiny_clip_dir, None, CPU, torch.float32, records)
    assert dino.built and clip.built and dino.weights_id and len(list(tmp_path.glob("*.json"))) == 2

    fresh_process()
    lazy_dino = models.load_dino(tiny_dino_dir, CPU, torch.float32, records)
    lazy_clip = models.load_clip(tiny_clip_dir, None, CPU, torch.float32, records)
    assert not lazy_dino.built and not lazy_clip.built
    for name in ("model_id", "patch_size", "num_register_tokens", "hidden_size", "mean", "std", "weights_id"):
        assert getattr(lazy_dino, name) == getattr(dino, name), name
    for name in ("encoder_id", "patch_size", "image_size", "embed_dim", "mean", "std"):
        assert getattr(lazy_clip, name) == getattr(clip, name), name
    assert lazy_clip.logit_scale.dtype == torch.float32 and torch.equal(lazy_clip.logit_scale,
                                                                          clip.model.logit_scale.detach())
    assert not lazy_dino.built and not lazy_clip.built

    # First use builds the very same models, through the same loaders.
    pixels = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(lazy_dino.model(pixel_values=pixels).last_hidden_state,
                           dino.model(pixel_values=pixels).last_hidden_state)
        assert np.array_equal(lazy_clip.encode_text(["a dog", "sofa"]), clip.encode_text(["a dog", "sofa"]))
    assert lazy_dino.built and lazy_clip.built


def test_a_changed_checkpoint_or_another_dtype_is_built_again(tiny_dino_dir, tmp_path, fresh_process):
    folder = tmp_path / "dino"
    shutil.copytree(tiny_dino_dir, folder)
    records = ModelRecords(tmp_path / "records")
    first = models.load_dino(str(folder), CPU, torch.float32, records)

    fresh_process()
    assert models.load_dino(str(folder), CPU, torch.bfloat16, records).built  # a record per dtype

    fresh_process()
    with torch.no_grad():
        first.model.embeddings.cls_token.add_(1.0)
    first.model.save_pretrained(folder)  # other weights under the same name
    again = models.load_dino(str(folder), CPU, torch.float32, records)
    assert again.built and again.weights_id != first.weights_id

    fresh_process()
    assert not models.load_dino(str(folder), CPU, torch.float32, records).built  # recorded again


def test_records_are_ignored_when_unreadable_or_missing_files(tiny_dino_dir, tmp_path, fresh_process):
    folder = tmp_path / "dino"
    shutil.copytree(tiny_dino_dir, folder)
    records = ModelRecords(tmp_path / "records")
    models.load_dino(str(folder), CPU, torch.float32, records)
    (record,) = (tmp_path / "records").glob("*.json")
    record.write_text("{not json")
    fresh_process()
    assert models.load_dino(str(folder), CPU, torch.float32, records).built

    fresh_process()
    (folder / "config.json").unlink()
    with pytest.raises(models.WeightsNotFoundError):  # the loader's own error, not a stale record
        models.load_dino(str(folder), CPU, torch.float32, records)


def test_predicting_on_compiled_graphs_needs_no_torch_model(tiny_settings, tmp_path, fresh_process):
    """A second process with the graphs exported and the names embedded builds neither backbone,
    and predicts exactly what the first one did."""
    settings = tiny_settings.replace(backend="openvino", backend_cache_dir=str(tmp_path / "compiled"))
    image = Image.fromarray(make_scene(0).image)
    results = []
    for process in range(2):
        fresh_process()
        services = Services(settings)
        try:
            results.append(services.pipeline().generate(image))
            built = services.models.dino.built, services.models.clip.built
        finally:
            services.close()
        assert built == ((True, True) if process == 0 else (False, False))
    first, second = results
    assert [r.name for r in first] == [r.name for r in second] and len(first) > 0
    assert all(np.array_equal(a.mask, b.mask) and a.score == b.score for a, b in zip(first, second))
