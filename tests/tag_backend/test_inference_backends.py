"""Compiled backbone forwards (OpenVINO, ONNX Runtime) against torch on tiny random-weight models.

Tolerance (docs/inference-backends.md): every patch's feature vector has cosine >= 0.999 with
torch's, and the whole engine gives identical segment labels on the synthetic scenes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tag_backend.config import Settings, settings_from_env
from tag_backend.errors import ConfigError
from tag_backend.eval.synthetic import make_scene
from tag_backend.inference import BackendChoice, InferenceBackendError, TorchForwards, build_forwards
from tag_backend.inference.cache import ExportCache
from tag_backend.inference.forwards import CompiledForwards
from tag_backend.inference.selection import resolve_backend
from tag_backend.models import load_clip, load_dino
from tag_backend.services import Services

CPU = torch.device("cpu")
COSINE = 0.999


@pytest.fixture(scope="module")
def models(tiny_dino_dir, tiny_clip_dir):
    return load_dino(tiny_dino_dir, CPU, torch.float32), load_clip(tiny_clip_dir, None, CPU, torch.float32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("compiled")


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


@pytest.mark.parametrize("backend, methods", [("openvino", ("gem", "naclip")),
                                              ("onnxruntime", ("gem", "naclip", "plain"))])
def test_compiled_features_equal_torch_per_patch_on_a_batch(models, cache_dir, backend, methods):
    dino, clip = models
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 224, 224)
    reference = TorchForwards(dino, clip)
    compiled = build_forwards(dino, clip, BackendChoice(backend, torch.float32), str(cache_dir))
    got, want = compiled.dino(pixels), reference.dino(pixels)
    assert len(got) == 3 and all(g.grid == w.grid == (16, 16) for g, w in zip(got, want))
    assert min(_min_cosine(g.tokens, w.tokens) for g, w in zip(got, want)) >= COSINE
    for method in methods:
        got, want = compiled.dense(pixels, method, 7), reference.dense(pixels, method, 7)
        assert [g.features.shape for g in got] == [w.features.shape for w in want]
        assert min(_min_cosine(g.features, w.features) for g, w in zip(got, want)) >= COSINE, method
    # One image through the graph exported for a batch of three: the batch size is dynamic.
    single = compiled.dense(pixels[1:2], methods[0], 7)[0].features
    assert _min_cosine(single, reference.dense(pixels[1:2], methods[0], 7)[0].features) >= COSINE


def test_graphs_are_cached_on_disk_keyed_by_input_size_and_weights(models, tmp_path, tmp_path_factory,
                                                                    monkeypatch):
    dino, clip = models
    choice = BackendChoice("onnxruntime", torch.float32)
    cache = ExportCache(tmp_path)
    pixels = torch.randn(1, 3, 224, 224)
    first = CompiledForwards(dino, clip, choice, cache).dino(pixels)[0].tokens
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1

    exports = []
    from tag_backend.inference.onnxruntime_backend import OnnxRuntimeBackend

    real_export = OnnxRuntimeBackend.export
    monkeypatch.setattr(OnnxRuntimeBackend, "export", lambda self, *a: (exports.append(a[1].shape),
                                                                           real_export(self, *a)))
    again = CompiledForwards(dino, clip, choice, cache).dino(pixels)[0].tokens  # a new process's view
    assert exports == [] and torch.equal(first, again)

    CompiledForwards(dino, clip, choice, cache).dino(torch.randn(1, 3, 252, 224))  # another input size
    assert exports == [(1, 3, 252, 224)]

    # A damaged entry is exported again instead of failing the prediction.
    (entry,) = [p for p in tmp_path.iterdir()
                if p.is_dir() and json.loads((p / "meta.json").read_text())["input"] == [3, 224, 224]]
    (entry / "model.onnx").write_bytes(b"not a model")
    repaired = CompiledForwards(dino, clip, choice, cache).dino(pixels)[0].tokens
    assert len(exports) == 2 and torch.equal(first, repaired)

    # Another checkpoint of the same architecture gets its own entry.
    other = tmp_path_factory.mktemp("other-dino")
    cls_token = dino.model.embeddings.cls_token
    saved = cls_token.detach().clone()
    with torch.no_grad():
        cls_token.add_(1.0)
        try:
            dino.model.save_pretrained(other)
        finally:
            cls_token.copy_(saved)
    CompiledForwards(load_dino(str(other), CPU, torch.float32), clip, choice, cache).dino(pixels)
    assert len(exports) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_resampled_position_embedding_is_exported_as_torch_computes_it(models, tmp_path):
    """Exported by a process that never ran torch's forward at that size (nothing cached)."""
    from tag_backend.stages import dense_clip

    dino, clip = models
    dense_clip._pos_cache.pop(clip.model.visual, None)
    pixels = torch.randn(1, 3, 256, 256)  # a 16x16 grid: the tiny CLIP's own is 14x14
    compiled = CompiledForwards(dino, clip, BackendChoice("openvino", torch.float32), ExportCache(tmp_path))
    got = compiled.dense(pixels, "plain", 7)[0].features
    want = TorchForwards(dino, clip).dense(pixels, "plain", 7)[0].features
    assert (got - want).abs().max() < 1e-4


def test_openvino_imports_the_blob_it_compiled_in_an_earlier_process(models, tmp_path):
    from tag_backend.inference.openvino_backend import COMPILED_DIR, OpenVinoBackend

    dino, clip = models
    choice = BackendChoice("openvino", torch.float32)
    pixels = torch.randn(1, 3, 224, 224)
    first = CompiledForwards(dino, clip, choice, ExportCache(tmp_path)).dino(pixels)[0].tokens
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    blobs = sorted((entry / COMPILED_DIR).glob("*.blob"))
    assert len(blobs) == 1, "the compiled graph is kept in its entry"
    graph = OpenVinoBackend().load(entry, torch.float32, torch.get_num_threads())
    assert graph._compiled.get_property("LOADED_FROM_CACHE")
    assert torch.equal(torch.from_numpy(graph(pixels.numpy())[0]), first)
    assert sorted((entry / COMPILED_DIR).glob("*.blob")) == blobs
    # OpenVINO applies the precision when it imports the blob: bf16 from the blob computes
    # exactly what a fresh bf16 compilation computes.
    import openvino as ov

    fresh = ov.Core().compile_model(str(entry / "model.xml"), "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1})
    want = fresh.create_infer_request().infer({0: pixels.numpy()})[0]
    assert np.array_equal(OpenVinoBackend().load(entry, torch.bfloat16, 1)(pixels.numpy()), want)


def test_export_failure_is_a_clear_error_or_falls_back_to_torch(models, tmp_path, monkeypatch):
    dino, clip = models
    from tag_backend.inference.onnxruntime_backend import OnnxRuntimeBackend

    def broken(self, *args):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(OnnxRuntimeBackend, "export", broken)
    pixels = torch.randn(1, 3, 224, 224)
    choice = BackendChoice("onnxruntime", torch.float32)
    with pytest.raises(InferenceBackendError, match="unsupported operator.*TAG_BACKEND=torch"):
        CompiledForwards(dino, clip, choice, ExportCache(tmp_path)).dino(pixels)
    fallback = CompiledForwards(dino, clip, choice, ExportCache(tmp_path), fallback=True)
    assert torch.equal(fallback.dino(pixels)[0].tokens, TorchForwards(dino, clip).dino(pixels)[0].tokens)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "nothing half-written is left"


def test_compiled_backends_refuse_non_float32_weights(models, tiny_dino_dir, tmp_path):
    _, clip = models
    bf16 = load_dino(tiny_dino_dir, CPU, torch.bfloat16)
    with pytest.raises(InferenceBackendError, match="float32"):
        CompiledForwards(bf16, clip, BackendChoice("openvino", torch.bfloat16), ExportCache(tmp_path))


def test_engine_gives_identical_segment_labels_on_synthetic_scenes(models, cache_dir, tiny_services_session):
    """The whole pipeline, batched: the same regions (masks and names) on torch and OpenVINO."""
    from PIL import Image

    from tag_backend.pipeline import TagPipeline

    dino, clip = models
    knowledge = tiny_services_session.knowledge()
    scenes = [Image.fromarray(make_scene(seed).image) for seed in range(4)]
    results = []
    for forwards in (TorchForwards(dino, clip),
                     build_forwards(dino, clip, BackendChoice("openvino", torch.float32), str(cache_dir))):
        pipeline = TagPipeline(dino, clip, knowledge.index, forwards=forwards,
                               text_encoder=tiny_services_session.text_encoder, image_size=224, n_segments=5)
        results.append(pipeline.generate_batch(scenes))
    for got, want in zip(*results):
        assert len(got) == len(want) > 1
        for g, w in zip(got, want):
            assert np.array_equal(g.mask, w.mask) and g.name == w.name


def test_backend_setting_is_validated():
    assert settings_from_env({"TAG_BACKEND": "openvino", "TAG_BACKEND_INT8": "1"}).backend_int8
    fp32, bf16 = torch.float32, torch.bfloat16
    assert resolve_backend("auto", CPU, fp32, explicit_dtype=False).name == "openvino"
    assert resolve_backend("auto", torch.device("cuda"), bf16, explicit_dtype=False) == BackendChoice("torch", bf16)
    assert resolve_backend("openvino", CPU, bf16, explicit_dtype=True) == BackendChoice("openvino", bf16)
    assert resolve_backend("onnxruntime", CPU, bf16, explicit_dtype=False).precision == fp32
    for requested, device, dtype, explicit, int8, message in [
        ("tensorrt", CPU, fp32, False, False, "invalid TAG_BACKEND"),
        ("openvino", torch.device("cuda"), fp32, False, False, "CPU only"),
        ("onnxruntime", CPU, bf16, True, False, "float32 on CPU"),
        ("torch", CPU, fp32, False, True, "TAG_BACKEND_INT8 needs"),
        ("onnxruntime", CPU, fp32, False, True, "TAG_BACKEND_INT8 needs"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_backend(requested, device, dtype, explicit_dtype=explicit, int8=int8)


def test_runtime_loads_float32_weights_for_a_compiled_backend(tiny_settings):
    models = Services(tiny_settings.replace(backend="openvino", dtype="bfloat16")).models
    assert models.backend == BackendChoice("openvino", torch.bfloat16)
    assert models.dtype == torch.float32 and models.dino.dtype == torch.float32
    assert models.forwards.backend == "openvino" and models.forwards.signature == "openvino/torch.bfloat16"
    services = Services(tiny_settings.replace(backend="torch"))
    assert services.models.forwards.backend == "torch" and services.pipeline().forwards is services.models.forwards
    assert Settings().backend_cache_dir.endswith("tag-backend/compiled")


def test_int8_weights_stay_close_to_torch(models, tmp_path):
    """NNCF int8 weight compression: a separate cache entry, features within cosine 0.99."""
    dino, clip = models
    pixels = torch.randn(2, 3, 224, 224)
    int8 = build_forwards(dino, clip, BackendChoice("openvino", torch.float32, int8=True), str(tmp_path))
    assert int8.signature == "openvino/torch.float32/int8"
    got, want = int8.dino(pixels), TorchForwards(dino, clip).dino(pixels)
    assert min(_min_cosine(g.tokens, w.tokens) for g, w in zip(got, want)) >= 0.99
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((entry / "meta.json").read_text())["int8"] is True


def test_a_large_batch_runs_through_a_compiled_graph_in_chunks(models, cache_dir):
    """The runtimes keep working memory sized to the largest batch they ran, so a batch larger
    than ``max_batch`` goes through in chunks, in order, with the same result."""
    dino, clip = models
    compiled = CompiledForwards(dino, clip, BackendChoice("openvino", torch.float32),
                                ExportCache(str(cache_dir)), max_batch=2)
    seen: list[int] = []

    def graph(array):
        seen.append(len(array))
        return array[:, :1, 0, 0] * 2

    pixels = torch.randn(5, 3, 4, 4)
    out = compiled._run(graph, pixels)
    assert seen == [2, 2, 1]
    assert torch.equal(out, pixels[:, :1, 0, 0] * 2)
    with pytest.raises(ValueError, match="max_batch"):
        CompiledForwards(dino, clip, BackendChoice("openvino", torch.float32),
                         ExportCache(str(cache_dir)), max_batch=0)


def test_backend_max_batch_setting_reaches_the_forwards(tiny_settings, monkeypatch):
    monkeypatch.setenv("TAG_BACKEND_MAX_BATCH", "3")
    assert settings_from_env().backend_max_batch == 3
    monkeypatch.setenv("TAG_BACKEND_MAX_BATCH", "0")
    with pytest.raises(ConfigError, match="TAG_BACKEND_MAX_BATCH"):
        settings_from_env()
    services = Services(tiny_settings.replace(backend="openvino", backend_max_batch=3))
    try:
        assert services.models.forwards.max_batch == 3
    finally:
        services.close()
