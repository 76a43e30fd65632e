"""Benchmark of interactive labelling and SAM 2 refinement (prints numbers; not a test).

    python -m benchmarks.interactive [--image PATH] [--clicks 12] [--scenes 8] [--no-sam3]

Random weights of the real architectures (the ``fast`` preset's DINOv2-S/14 + CLIP ViT-B/16, and
a SAM 2 of the SAM 2.1 Hiera-Tiny configuration) are written once under
``~/.cache/tag-backend-bench`` and loaded through the normal loaders, so timings are real and
masks/names are not (the mIoU part is a plumbing check: it shows refinement runs end to end and
what it changes, not how good SAM 2.1's trained weights would be).

1. **Per-click latency** through ``/predict`` with Label Studio's exact interactive payloads (fetch
   from a local file, prompt, mask, naming, brush RLE, JSON): the first click on a new image and
   clicks after it (features and segments kept), for a positive click, a positive + negative
   pair (segment split) and a box; without and with SAM. Goal: <= 300 ms per cached click.
2. **SAM refinement cost per image**: the engine with and without ``TAG_REFINE=sam2`` on the same
   image, measured in this run (stage times and the ratio).
3. **Synthetic suite**: Hungarian-matched mask mIoU with and without refinement.
4. **SAM 3 vision encoder** (unless ``--no-sam3``): one windowed and one global-attention layer of
   transformers' ``Sam3ViTModel`` at its 1008 px input, extrapolated to its 32 layers (28 + 4),
   beside the TAG backbones' time measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.engine import CACHE, _models

ROOT = Path(__file__).resolve().parent.parent
SAM_DIR = CACHE / "sam2.1-hiera-tiny-random"


def _sam_dir() -> str:
    from tag_backend.random_models import save_random_sam2

    if not (SAM_DIR / "model.safetensors").is_file():
        save_random_sam2(SAM_DIR, config=None)  # transformers' default = SAM 2.1 Hiera-Tiny sizes
    return str(SAM_DIR)


def _services(refine: str, data_dir: Path, image_dir: Path):
    from tag_backend.config import Settings
    from tag_backend.services import Services

    dino, clip = _models("fast")
    settings = Settings(preset="fast", dino_model=dino, clip_model=clip, device="cpu",
                        data_dir=str(data_dir), refine=refine,
                        sam_model=_sam_dir() if refine == "sam2" else None,
                        allowed_local_roots=str(image_dir), predict_budget_seconds=1e9)
    return Services(settings)


def _keypoint(x: float, y: float, size: tuple[int, int], positive: bool = True) -> dict:
    w, h = size
    return {"original_width": w, "original_height": h, "image_rotation": 0,
            "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 0.5, "keypointlabels": ["object"]},
            "is_positive": positive, "id": "k", "from_name": "click", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}


def _rectangle(box: tuple[float, float, float, float], size: tuple[int, int]) -> dict:
    (w, h), (x0, y0, x1, y1) = size, box
    return {"original_width": w, "original_height": h, "image_rotation": 0,
            "value": {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w,
                      "height": 100 * (y1 - y0) / h, "rotation": 0, "rectanglelabels": ["object"]},
            "id": "r", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "origin": "manual"}


def _body(path: Path, regions: list[dict]) -> dict:
    from tag_backend.ls import interactive_label_config

    return {"tasks": [{"id": 1, "data": {"image": str(path)}}], "project": "1.1",
            "label_config": interactive_label_config(),
            "params": {"login": None, "password": None,
                       "context": {"annotation_id": None, "draft_id": 0, "user_id": 1,
                                   "result": regions}}}


def _timed_post(client, body: dict) -> float:
    start = time.perf_counter()
    r = client.post("/predict", json=body)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"/predict answered {r.status_code}: {r.get_data(as_text=True)[:300]}")
    return elapsed


def bench_clicks(services, path: Path, clicks: int) -> dict:
    """First and cached click latency through /predict (one fresh image per 'first')."""
    from tag_backend.app import create_app

    client = create_app(services=services, start_worker=False).test_client()
    size = Image.open(path).size
    w, h = size
    # Warm-up on another image: model loading, lazy imports, text-embedding cache.
    warm = path.with_name("warm-up.png")
    Image.open(path).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(warm)
    _timed_post(client, _body(warm, [_keypoint(w / 2, h / 2, size)]))
    first = _timed_post(client, _body(path, [_keypoint(w / 2, h / 2, size)]))
    rng = np.random.default_rng(0)
    points = [(float(rng.uniform(0.05, 0.95) * w), float(rng.uniform(0.05, 0.95) * h))
              for _ in range(clicks)]
    positive = [_timed_post(client, _body(path, [_keypoint(x, y, size)])) for x, y in points]
    pairs = [_timed_post(client, _body(path, [_keypoint(x, y, size),
                                              _keypoint(w - x, h - y, size, positive=False)]))
             for x, y in points]
    boxes = [_timed_post(client, _body(path, [_rectangle(
        (min(x, w - x), min(y, h - y), max(x, w - x) + 1, max(y, h - y) + 1), size)]))
        for x, y in points]
    return {"first_s": first, "cached_click_median_s": statistics.median(positive),
            "cached_click_max_s": max(positive),
            "cached_pos_neg_median_s": statistics.median(pairs),
            "cached_box_median_s": statistics.median(boxes)}


def bench_refinement(plain, sam, image: Image.Image, runs: int = 3) -> dict:
    """The engine on one image without and with SAM refinement (no feature cache), interleaved."""
    def run(services) -> tuple[float, dict]:
        services.predictor.cache.clear()
        timings: dict[str, float] = {}
        start = time.perf_counter()
        services.predictor.predict([image], timings=timings)
        return time.perf_counter() - start, timings

    run(plain), run(sam)  # warm-up
    a, b, stages = [], [], []
    for _ in range(runs):
        a.append(run(plain)[0])
        seconds, timings = run(sam)
        b.append(seconds)
        stages.append(timings)
    median = {k: statistics.median(t.get(k, 0.0) for t in stages) for k in stages[0]}
    return {"engine_s": statistics.median(a), "engine_sam2_s": statistics.median(b),
            "ratio": statistics.median(b) / statistics.median(a),
            "sam_embed_s": median.get("sam_embed", 0.0), "sam_refine_s": median.get("sam_refine", 0.0),
            "backbones_s": median.get("dino", 0.0) + median.get("dense_clip", 0.0)}


def bench_miou(plain, sam, scenes: int, size: int = 320) -> dict:
    """Hungarian-matched mask mIoU on synthetic scenes, without and with refinement."""
    from tag_backend.eval.metrics import hungarian_ious, region_map_from_masks
    from tag_backend.eval.synthetic import make_scene

    out = {}
    for name, services in (("tag", plain), ("tag+sam2", sam)):
        ious = []
        for seed in range(scenes):
            scene = make_scene(1000 + seed, size=size)
            regions = services.predictor.predict([Image.fromarray(scene.image)])[0]
            region_map = region_map_from_masks([r.mask for r in regions], scene.gt.shape)
            ious += hungarian_ious(region_map, scene.gt.astype(np.int64), len(regions))
        out[name] = float(np.mean(ious))
    return out


def bench_sam3_encoder() -> dict:
    """SAM 3's vision encoder time, from one windowed and one global layer at its input size."""
    import torch
    from transformers import Sam3Config
    from transformers.models.sam3.modeling_sam3 import Sam3ViTLayer

    config = Sam3Config().vision_config.backbone_config
    side = config.image_size // config.patch_size
    x = torch.randn(1, side, side, config.hidden_size)
    out = {}
    with torch.inference_mode():
        for name, window in (("windowed", config.window_size), ("global", 0)):
            layer = Sam3ViTLayer(config, window_size=window).eval()
            layer(x)  # warm-up
            start = time.perf_counter()
            layer(x)
            out[name] = time.perf_counter() - start
    n_global = len(config.global_attn_indexes)
    total = out["windowed"] * (config.num_hidden_layers - n_global) + out["global"] * n_global
    return {"layer_windowed_s": out["windowed"], "layer_global_s": out["global"],
            "encoder_estimate_s": total, "tokens": side * side, "layers": config.num_hidden_layers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(ROOT / "data" / "examples" / "coffee.jpg"))
    parser.add_argument("--clicks", type=int, default=12)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--no-sam3", action="store_true", help="skip the SAM 3 encoder estimate")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = Image.open(args.image).convert("RGB")
        path = work / "image.png"
        image.save(path)
        # One data dir (store + index) for both: built once, read by both services.
        data = CACHE / "fast" / "data"  # the engine benchmark's store and index (same models)
        plain = _services("none", data, work)
        sam = _services("sam2", data, work)
        result = {"image": f"{image.width}x{image.height}"}
        result["clicks"] = bench_clicks(plain, path, args.clicks)
        result["clicks_sam2"] = bench_clicks(sam, path, args.clicks)
        result["refinement"] = bench_refinement(plain, sam, image)
        result["miou"] = bench_miou(plain, sam, args.scenes)
        if not args.no_sam3:
            result["sam3_encoder"] = bench_sam3_encoder()
    if args.json:
        print(json.dumps(result))
        return
    _print(result)


def _print(r: dict) -> None:
    print(f"image {r['image']}, fast preset, random weights of the real sizes, CPU")
    for key, label in (("clicks", "TAG segments"), ("clicks_sam2", "SAM 2 (TAG_REFINE=sam2)")):
        c = r[key]
        verdict = "OK" if c["cached_click_median_s"] <= 0.3 else "ABOVE GOAL"
        print(f"\n== per-click latency through /predict, {label}")
        print(f"first click on a new image   {c['first_s'] * 1000:8.0f} ms")
        print(f"cached click (median, max)   {c['cached_click_median_s'] * 1000:8.0f} ms "
              f"{c['cached_click_max_s'] * 1000:6.0f} ms   (goal <= 300 ms: {verdict})")
        print(f"cached click + negative      {c['cached_pos_neg_median_s'] * 1000:8.0f} ms")
        print(f"cached box                   {c['cached_box_median_s'] * 1000:8.0f} ms")
    f = r["refinement"]
    print("\n== SAM 2 refinement cost per image (engine, no feature cache)")
    print(f"engine {f['engine_s']:.2f} s, with SAM 2 {f['engine_sam2_s']:.2f} s "
          f"(x{f['ratio']:.2f}): SAM image encoder {f['sam_embed_s']:.2f} s, "
          f"prompts + decoding + overlaps {f['sam_refine_s']:.2f} s; "
          f"TAG backbones {f['backbones_s']:.2f} s")
    m = r["miou"]
    print("\n== synthetic suite, Hungarian-matched mask mIoU (random weights: plumbing check)")
    print(f"TAG {m['tag']:.3f}   TAG + SAM 2 {m['tag+sam2']:.3f}")
    if "sam3_encoder" in r:
        s = r["sam3_encoder"]
        print(f"\n== SAM 3 vision encoder ({s['layers']} layers, {s['tokens']} tokens)")
        print(f"one windowed layer {s['layer_windowed_s']:.2f} s, one global layer "
              f"{s['layer_global_s']:.2f} s -> encoder ~{s['encoder_estimate_s']:.1f} s per image "
              f"(x{s['encoder_estimate_s'] / max(f['backbones_s'], 1e-9):.1f} the TAG backbones)")


if __name__ == "__main__":
    main()
