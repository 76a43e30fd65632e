"""Benchmarks of the Label Studio backend (prints numbers; not a test).

    python -m benchmarks.label_studio --dino DIR --clip local-dir:DIR [--tasks 50]
        [--memory-runs 1000]

1. ``/predict`` on N tasks vs the engine alone on the same images: per-task time and overhead
   (fetching, mask cleaning, RLE, JSON). Target: overhead <= 10 %.
2. Webhook latency while a ``/predict`` runs in another thread: p50/p99. Target: p99 <= 200 ms.
3. RSS over many sequential single-task ``/predict`` calls: memory must stay flat.
4. ``--parts rle`` (needs no models): brush RLE of clean and speckled masks, the SDK's encoder vs
   ours (:mod:`tag_backend.ls.rle`), same bytes checked.
Use small images and the tiny test models (``tag_backend.random_models``) to run in minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _images(root: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = np.full((size, size, 3), 120, np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        arr[y : y + size // 2, x : x + size // 2] = rng.integers(0, 255, 3)
        path = root / f"b{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def bench_overhead(client, services, config: str, paths: list[Path]) -> dict:
    """Engine (the pipeline itself, no feature cache) vs ``/predict`` on the same new images."""
    from tag_backend.image_io import open_image

    images = [open_image(p) for p in paths]
    pipeline = services.pipeline()
    pipeline.generate_batch([images[0]])  # warm-up
    start = time.perf_counter()
    for img in images:
        pipeline.generate_batch([img])
    engine = (time.perf_counter() - start) / len(images)
    tasks = [{"id": i, "data": {"image": str(p)}} for i, p in enumerate(paths)]
    start = time.perf_counter()
    r = client.post("/predict", json={"tasks": tasks, "label_config": config})
    served = (time.perf_counter() - start) / len(paths)
    if r.status_code != 200 or len(r.json["results"]) != len(tasks):
        raise RuntimeError(f"/predict failed: {r.status_code}")
    return {
        "engine_s_per_task": engine,
        "predict_s_per_task": served,
        "overhead_pct": 100 * (served - engine) / engine,
    }


def bench_webhook(client, config: str, paths: list[Path], n: int = 200) -> dict:
    tasks = [{"id": i, "data": {"image": str(p)}} for i, p in enumerate(paths)]
    worker = threading.Thread(
        target=lambda: client.application.test_client().post(
            "/predict", json={"tasks": tasks, "label_config": config}
        )
    )
    worker.start()
    latencies = []
    for i in range(n):
        payload = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": 1},
            "annotation": {"id": 10_000 + i, "result": [], "updated_at": "2024-01-01"},
            "task": {"id": 1, "data": {}},
        }
        start = time.perf_counter()
        r = client.post("/webhook", json=payload)
        latencies.append(time.perf_counter() - start)
        if r.status_code != 201:
            raise RuntimeError(f"/webhook failed: {r.status_code}")
        if not worker.is_alive():
            break
        time.sleep(0.01)
    worker.join()
    ms = sorted(x * 1000 for x in latencies)
    return {
        "webhooks": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
    }


def bench_memory(client, config: str, path: Path, runs: int) -> dict:
    task = {"tasks": [{"id": 1, "data": {"image": str(path)}}], "label_config": config}
    samples = []
    for i in range(runs):
        client.post("/predict", json=task)
        if i % max(1, runs // 10) == 0 or i == runs - 1:
            samples.append((i + 1, _rss_mb()))
    first = samples[min(1, len(samples) - 1)][1]
    return {"runs": runs, "rss_mb": samples, "growth_mb_after_warmup": samples[-1][1] - first}


def bench_rle(repeats: int = 5) -> dict:
    """Milliseconds per mask: label_studio_sdk's ``mask2rle`` vs :func:`~tag_backend.ls.rle.mask_to_rle`."""
    from label_studio_sdk.converter.brush import mask2rle

    from tag_backend.ls.rle import mask_to_rle

    yy, xx = np.mgrid[:1024, :1024]
    masks = {
        "disc 1024x1024": (yy - 500) ** 2 + (xx - 480) ** 2 < 300**2,
        "disc 2048x2048": np.kron((yy - 500) ** 2 + (xx - 480) ** 2 < 300**2, np.ones((2, 2), bool)),
        "speckle 1024x1024": np.random.default_rng(0).random((1024, 1024)) < 0.5,
    }
    out = {}
    for name, mask in masks.items():
        sdk_ms, ours_ms = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sdk = [int(v) for v in mask2rle(np.where(mask, 255, 0).astype(np.uint8))]
            t1 = time.perf_counter()
            ours = mask_to_rle(mask)
            t2 = time.perf_counter()
            sdk_ms.append((t1 - t0) * 1000)
            ours_ms.append((t2 - t1) * 1000)
        if sdk != ours:
            raise AssertionError(f"RLE differs from the SDK's on {name}")
        sdk_med, ours_med = statistics.median(sdk_ms), statistics.median(ours_ms)
        out[name] = {"sdk_ms": round(sdk_med, 1), "ours_ms": round(ours_med, 2),
                     "speedup": round(sdk_med / ours_med, 1), "bytes": len(ours)}
    return out


def main() -> None:
    from tag_backend.app import create_app
    from tag_backend.config import settings_from_env
    from tag_backend.ls import recommended_label_config
    from tag_backend.services import Services

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dino")
    parser.add_argument("--clip")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--memory-runs", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--parts",
        default="overhead,webhook,memory",
        help="Comma-separated subset of: overhead, webhook, memory, rle.",
    )
    parser.add_argument(
        "--no-crf",
        action="store_true",
        help="Disable the dense CRF (pydensecrf2 holds the GIL while it runs).",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "rle" in parts:
        for name, row in bench_rle().items():
            print(f"rle {name}: {row}", flush=True)
        parts.discard("rle")
        if not parts:
            return
    if not (args.dino and args.clip):
        parser.error("--dino and --clip are required for the overhead, webhook and memory parts")
    root = Path(tempfile.mkdtemp(prefix="tag-ls-bench-"))
    settings = settings_from_env().replace(
        dino_model=args.dino,
        clip_model=args.clip,
        device="cpu",
        dtype="float32",
        data_dir=args.data_dir or str(root / "data"),
        allowed_local_roots=str(root),
        predict_budget_seconds=1e9,  # measure computing every task, not the job queue
    )
    services = Services(settings, pipeline_overrides={"use_crf": False} if args.no_crf else None)
    app = create_app(services=services, start_worker=False)
    client = app.test_client()
    config = recommended_label_config()
    paths = _images(root, args.tasks, args.size)
    if "overhead" in parts:
        print("overhead:", bench_overhead(client, services, config, paths), flush=True)
    services.predictor.cache.clear()  # the parts below compute every image again
    if "webhook" in parts:
        print("webhook:", bench_webhook(client, config, paths[:20]), flush=True)
    if "memory" in parts:
        print("memory:", bench_memory(client, config, paths[0], args.memory_runs), flush=True)


if __name__ == "__main__":
    main()
