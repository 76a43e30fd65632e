"""Engine benchmark: per-stage time and peak RSS on random weights of the real model sizes.

    python -m tag_backend.bench [--preset fast|paper|both] [--runs 3] [--image PATH]
    python -m tag_backend.bench --jobs 200      # job-engine throughput (tag_backend.jobs.bench)

Prints, measured in the same run and process, ``end_to_end / backbone_forwards`` where
backbone_forwards = the DINOv2 forward + the dense-CLIP (GEM/NACLIP) forward on the same input:
the physical floor of one prediction. Random weights of the real architectures are written once
to ``~/.cache/tag-backend-bench`` and loaded through the normal local-directory loaders.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("TAG_BENCH_CACHE", Path.home() / ".cache" / "tag-backend-bench"))
REAL_SIZES = {"fast": ("facebook/dinov2-small", "ViT-B-16-quickgelu"),
              "paper": ("facebook/dinov2-base", "ViT-L-14-quickgelu")}


def _models(preset: str) -> tuple[str, str]:
    from .random_models import save_random_clip, save_random_dino_named

    dino_id, clip_name = REAL_SIZES[preset]
    root = CACHE / preset
    if not (root / "dino" / "config.json").is_file():
        save_random_dino_named(root / "dino", dino_id)
    if not (root / "clip" / "open_clip_model.safetensors").is_file():
        save_random_clip(root / "clip", clip_name)
    return str(root / "dino"), f"local-dir:{root / 'clip'}"


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset: str, runs: int, image_path: str) -> dict:
    """Measure one preset in this process; returns a dict of seconds, ratio and peak RSS."""
    import torch
    from PIL import Image

    from .config import Settings
    from .services import Services
    from .stages.dense_clip import dense_clip_features
    from .stages.dino import dino_patch_features

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dino_dir, clip_dir = _models(preset)
    settings = Settings(preset=preset, dino_model=dino_dir, clip_model=clip_dir, device="cpu",
                        data_dir=str(CACHE / preset / "data"))
    services = Services(settings)
    pipeline = services.pipeline()
    image = Image.open(image_path).convert("RGB")
    pipeline.generate(image)  # warm-up: lazy imports, text-embedding cache, allocator
    prep = pipeline._prepare(image)

    def backbones():
        with torch.inference_mode():
            dino_patch_features(services.models.dino, prep.dino_pixels)
            dense_clip_features(services.models.clip.model.visual, prep.clip_pixels, pipeline.dense_method,
                                gem_depth=pipeline.gem_depth)

    stage_runs: list[dict] = []

    def end_to_end():
        timings: dict[str, float] = {}
        pipeline.generate(image, timings)
        stage_runs.append(timings)

    # Interleave so both measurements see the same machine state.
    b, e = [], []
    for _ in range(runs):
        b.append(_median_time(backbones, 1))
        e.append(_median_time(end_to_end, 1))
    stages = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
    return {
        "preset": preset, "dtype": str(services.models.dtype).replace("torch.", ""),
        "image": f"{image.width}x{image.height}", "backbone_forwards_s": statistics.median(b),
        "end_to_end_s": statistics.median(e), "ratio": statistics.median(e) / statistics.median(b),
        "stages_s": stages, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "crf": pipeline.use_crf, "dense_method": pipeline.dense_method,
    }


def _print(result: dict) -> None:
    targets = {"fast": 1.10, "paper": 1.15}
    print(f"\n== preset {result['preset']} ({result['dtype']}, image {result['image']}, "
          f"dense {result['dense_method']}, CRF {'on' if result['crf'] else 'off'})")
    print(f"{'stage':<14}{'seconds':>9}")
    for stage, sec in result["stages_s"].items():
        print(f"{stage:<14}{sec:>9.3f}")
    print(f"{'end_to_end':<14}{result['end_to_end_s']:>9.3f}")
    print(f"{'backbones':<14}{result['backbone_forwards_s']:>9.3f}   (DINOv2 + dense CLIP forwards alone)")
    target = targets[result["preset"]]
    verdict = "OK" if result["ratio"] <= target else "ABOVE TARGET"
    print(f"end_to_end / backbone_forwards = {result['ratio']:.3f}  (target <= {target}: {verdict})")
    print(f"peak RSS {result['peak_rss_gib']:.2f} GiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["fast", "paper", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default=str(Path(__file__).resolve().parent.parent / "data" / "examples" / "coffee.jpg"))
    parser.add_argument("--jobs", type=int, help="benchmark the job engine with N tasks instead")
    parser.add_argument("--json", action="store_true", help="print one JSON line per preset")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs:
        from .jobs.bench import run_jobs_bench

        run_jobs_bench(args.jobs)
        return
    presets = ["fast", "paper"] if args.preset == "both" else [args.preset]
    if args._child:
        print(json.dumps(bench_preset(presets[0], args.runs, args.image)))
        return
    for preset in presets:  # one process per preset: peak RSS is per preset
        out = subprocess.run([sys.executable, "-m", "tag_backend.bench", "--preset", preset, "--runs",
                              str(args.runs), "--image", args.image, "--_child"],
                             check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(result)) if args.json else _print(result)


if __name__ == "__main__":
    main()
