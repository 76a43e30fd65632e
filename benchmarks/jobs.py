"""Job-engine benchmark: end-to-end tasks/s through the queue vs the engine alone, peak RSS.

``python -m benchmarks.jobs --jobs 200`` (run from the repository root). Images are synthetic PNG files read through the normal media path (local
files under ``TAG_ALLOWED_LOCAL_ROOTS``); the queue is a fresh SQLite store; pushes are off (no
Label Studio), so the number is "queue + fetch/decode + engine + masks/RLE + record".
Models come from the environment (``TAG_*``); without ``TAG_DINO_MODEL``/``TAG_CLIP_MODEL``
random-weight tiny models of the real architectures are built in a temp dir.
Target: end-to-end >= 0.9x the engine's own throughput (prefetch overlaps fetching with model
work; the engine is batched the same way in both runs).
"""
from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tag_backend.config import Settings, settings_from_env

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobsBenchResult:
    n_jobs: int
    batch_size: int
    engine_tasks_per_s: float
    end_to_end_tasks_per_s: float
    peak_rss_mb: float
    engine_batch1_tasks_per_s: float

    @property
    def ratio(self) -> float:
        return self.end_to_end_tasks_per_s / self.engine_tasks_per_s


def _images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
            box = (x0, y0, x0 + rng.integers(20, size[0] // 2), y0 + rng.integers(20, size[1] // 2))
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = root / f"bench{i:05d}.png"
        image.save(path)
        paths.append(path)
    return paths


def _settings(root: Path, real_sizes: bool = False) -> Settings:
    settings = settings_from_env()
    changes: dict = {"data_dir": str(root / "data"), "allowed_local_roots": str(root / "images"),
                     "label_studio_url": None, "label_studio_api_key": None, "db_url": None}
    if not (settings.dino_model and settings.clip_model):
        from tag_backend.random_models import save_random_clip, save_random_dino, save_random_dino_named

        if real_sizes:  # the `fast` preset's architectures (DINOv2-S/14, CLIP ViT-B/16)
            save_random_dino_named(root / "dino", "facebook/dinov2-small")
            clip = save_random_clip(root / "clip", "ViT-B-16")
        else:
            save_random_dino(root / "dino")
            clip = save_random_clip(root / "clip")
        changes.update(dino_model=str(root / "dino"), clip_model=clip,
                       device=settings.device or "cpu", dtype=settings.dtype or "float32")
        print(f"models: random weights, {'fast-preset sizes' if real_sizes else 'tiny'} "
              "(set TAG_DINO_MODEL/TAG_CLIP_MODEL for real ones)")
    import dataclasses

    return dataclasses.replace(settings, **{k: v for k, v in changes.items()})


def _engine_alone(services, paths: list[Path], batch_size: int) -> float:
    """Tasks/s of ``generate_batch`` alone on pre-decoded images (the pipeline itself, so no
    feature cache: every image runs the backbones, as in the worker where each task is new).

    Runs on a helper thread like the worker's compute thread: on a loaded 2-core machine the
    same calls were measured 3-4x slower from the main thread than from any other thread (the
    OpenMP pool of the main thread), so both sides of the comparison use a non-main thread.
    """
    import threading

    from tag_backend.image_io import open_image

    images = [open_image(p) for p in paths]  # decoded up front: pure model throughput
    out: dict[str, float] = {}

    def run() -> None:
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            services.pipeline().generate_batch(images[i:i + batch_size])
        out["rate"] = len(images) / (time.perf_counter() - start)

    thread = threading.Thread(target=run, name="bench-engine")
    thread.start()
    thread.join()
    if "rate" not in out:
        raise RuntimeError("the engine failed during the benchmark (see the log)")
    return out["rate"]


def _end_to_end(services, paths: list[Path], batch_size: int) -> float:
    from tag_backend.jobs.worker import Worker, WorkerOptions
    from tag_backend.ls import recommended_label_config

    queue = services.jobs.queue
    tasks = [{"id": i + 1, "data": {"image": str(p)}} for i, p in enumerate(paths)]
    job = queue.create_job("prelabel", tasks, label_config=recommended_label_config(),
                           model_version=services.model_version(), push=False)
    worker = Worker(queue, services, None,
                    WorkerOptions(batch_size=batch_size, prefetch=2 * batch_size,
                                  poll_seconds=0.05, push=False))
    start = time.perf_counter()
    worker.start()
    try:
        while True:
            progress = queue.progress(job)
            if progress.queued == 0 and progress.running == 0:
                break
            time.sleep(0.05)
    finally:
        worker.stop()
    elapsed = time.perf_counter() - start
    if progress.failed:
        print(f"warning: {progress.failed} task(s) failed")
    return progress.done / elapsed


def _stage_totals() -> dict[str, float]:
    """Seconds summed per ``tag_stage_seconds`` stage so far in this process."""
    from tag_backend import metrics

    totals: dict[str, float] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "tag_stage_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                totals[sample.labels["stage"]] = sample.value
    return totals


def run_jobs_bench(n_jobs: int, batch_size: int = 4, image_size: tuple[int, int] = (640, 480),
                   real_sizes: bool = True) -> JobsBenchResult:
    """Run both measurements on ``n_jobs`` synthetic images and print the numbers."""
    if n_jobs < 1:
        raise ValueError("n_jobs must be >= 1")
    from tag_backend.services import Services

    with tempfile.TemporaryDirectory(prefix="tag-jobs-bench-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        paths = _images(root / "images", n_jobs, image_size)
        services = Services(_settings(root, real_sizes))
        # Untimed pass: loads the models and fills the per-process text caches with the names
        # these images produce, so neither timed run profits from the other's warm caches.
        _engine_alone(services, paths, batch_size)
        first = _engine_alone(services, paths, batch_size)
        before = _stage_totals()
        end_to_end = _end_to_end(services, paths, batch_size)
        stages = {k: v - before.get(k, 0.0) for k, v in _stage_totals().items()}
        second = _engine_alone(services, paths, batch_size)  # before and after: load drift
        engine = (first + second) / 2
        single = _engine_alone(services, paths[:16], 1) if batch_size > 1 else engine
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = JobsBenchResult(n_jobs, batch_size, engine, end_to_end, rss_mb, single)
        services.close()
    print(f"jobs: {n_jobs} tasks of {image_size[0]}x{image_size[1]}, batch {batch_size}")
    print(f"engine alone:  {result.engine_tasks_per_s:.3f} tasks/s "
          f"(batch 1: {result.engine_batch1_tasks_per_s:.3f} tasks/s on up to 16 images)")
    print(f"end to end:    {result.end_to_end_tasks_per_s:.3f} tasks/s "
          f"({result.ratio:.2f}x the engine; target >= 0.90x)")
    print(f"peak RSS:      {result.peak_rss_mb:.0f} MB")
    print("end-to-end seconds per task by stage: " + ", ".join(
        f"{k} {v / n_jobs:.3f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]) if v))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="number of tasks")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny random models instead of the fast preset's sizes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run_jobs_bench(args.jobs, args.batch_size, (args.width, args.height),
                   real_sizes=not args.tiny)


if __name__ == "__main__":
    main()
