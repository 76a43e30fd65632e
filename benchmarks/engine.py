"""Engine benchmark: torch against the compiled backend, per stage and end to end.

    python -m benchmarks.engine [--preset fast|paper|both] [--backends torch,openvino] [--runs 3]
        [--batches 1,8,32] [--startup] [--crf-scales 1.0,0.5] [--dtype float32|bfloat16]

Random weights of the real architectures are written once to ``~/.cache/tag-backend-bench``
(``TAG_BENCH_CACHE``) and loaded through the normal local-directory loaders. Every number of
one preset comes from one child process in which the backends are interleaved run by run, so
they see the same machine state; compare the ratios, absolute times drift with machine load.

Printed per preset and image (``coffee.jpg`` and a generated textured image): the stages, end
to end, the backbone forwards alone (DINOv2 + dense CLIP on the same input) and
``end_to_end / backbone_forwards``; beside them the feature-equality check of each compiled
backend against torch (minimum per-patch cosine of DINOv2 tokens and dense CLIP features, and
whether the segment labels are identical). ``--batches``: seconds per image when N images go
through ``generate_batch`` at once. ``--startup``: wall time of ``tag-backend predict`` on one
image per backend with warm caches (after one untimed run), and its stages. ``--crf-scales``: end-to-end time and synthetic-scene mask
mIoU per CRF resolution (decides the preset's ``crf_scale``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("TAG_BENCH_CACHE", Path.home() / ".cache" / "tag-backend-bench"))
REAL_SIZES = {"fast": ("facebook/dinov2-small", "ViT-B-16-quickgelu"),
              "paper": ("facebook/dinov2-base", "ViT-L-14-quickgelu")}
ROOT = Path(__file__).resolve().parent.parent
COFFEE = ROOT / "data" / "examples" / "coffee.jpg"
TARGET_RATIO = {"fast": 1.10, "paper": 1.15}
TARGET_SECONDS = {"fast": 2.6, "paper": 10.5}


def _models(preset: str) -> tuple[str, str]:
    from tag_backend.random_models import save_random_clip, save_random_dino_named

    dino_id, clip_name = REAL_SIZES[preset]
    root = CACHE / preset
    if not (root / "dino" / "config.json").is_file():
        save_random_dino_named(root / "dino", dino_id)
    if not (root / "clip" / "open_clip_model.safetensors").is_file():
        save_random_clip(root / "clip", clip_name)
    return str(root / "dino"), f"local-dir:{root / 'clip'}"


def textured_image() -> Path:
    """A 640x480 noisy textured image (stripes, checks, noise): the CRF's worst case."""
    import numpy as np
    from PIL import Image

    path = CACHE / "textured.png"
    if not path.is_file():
        rng = np.random.default_rng(7)
        yy, xx = np.mgrid[:480, :640]
        img = rng.normal(128, 40, (480, 640, 3))
        img[(xx // 9 + yy // 9) % 2 == 0] += 60
        img[:, 320:][((xx[:, 320:] + yy[:, 320:]) // 5) % 2 == 0] -= 90
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def settings_for(preset: str, backend: str, dtype: str, **changes):
    from tag_backend.config import Settings

    dino_dir, clip_dir = _models(preset)
    return Settings(preset=preset, dino_model=dino_dir, clip_model=clip_dir, device="cpu", dtype=dtype,
                    backend=backend, data_dir=str(CACHE / preset / "data"), **changes)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _min_cosine(a, b) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


def bench_preset(preset: str, backends: list[str], runs: int, images: list[str], batches: list[int],
                 dtype: str) -> dict:
    """One preset in this process: every backend interleaved run by run."""
    import numpy as np
    import torch
    from PIL import Image

    from tag_backend.services import Services

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    services = {b: Services(settings_for(preset, b, dtype)) for b in backends}
    pipelines = {b: s.pipeline() for b, s in services.items()}  # builds the index once (shared data dir)
    result: dict = {"preset": preset, "dtype": dtype, "backends": backends, "images": {},
                    "batches": {}, "threads": torch.get_num_threads()}
    for image_path in images:
        image = Image.open(image_path).convert("RGB")
        for pipeline in pipelines.values():
            pipeline.generate(image)  # warm-up: exports/compiles, lazy imports, caches
        prep = pipelines[backends[0]]._prepare(image)
        per: dict = {b: {"backbones": [], "end_to_end": [], "stages": []} for b in backends}
        for _ in range(runs):
            for b, pipeline in pipelines.items():
                fw = pipeline.forwards
                with torch.inference_mode():
                    per[b]["backbones"].append(_timed(lambda: (
                        fw.dino(prep.dino_pixels), fw.dense(prep.clip_pixels, pipeline.dense_method,
                                                            pipeline.gem_depth))))
                timings: dict[str, float] = {}
                per[b]["end_to_end"].append(_timed(lambda: pipeline.generate(image, timings)))
                per[b]["stages"].append(timings)
        summary = {}
        for b in backends:
            stages = {k: statistics.median(r[k] for r in per[b]["stages"]) for k in per[b]["stages"][0]}
            e2e, bb = statistics.median(per[b]["end_to_end"]), statistics.median(per[b]["backbones"])
            summary[b] = {"end_to_end_s": e2e, "backbone_forwards_s": bb, "ratio": e2e / bb, "stages_s": stages}
        reference = pipelines["torch"] if "torch" in pipelines else None
        if reference is not None:
            with torch.inference_mode():
                want_d = reference.forwards.dino(prep.dino_pixels)[0].tokens
                want_c = reference.forwards.dense(prep.clip_pixels, reference.dense_method,
                                                  reference.gem_depth)[0].features
                want_regions = reference.generate(image)
                for b, pipeline in pipelines.items():
                    if b == "torch":
                        continue
                    got_regions = pipeline.generate(image)
                    summary[b]["equality"] = {
                        "dino_min_cos": _min_cosine(pipeline.forwards.dino(prep.dino_pixels)[0].tokens, want_d),
                        "dense_min_cos": _min_cosine(pipeline.forwards.dense(
                            prep.clip_pixels, pipeline.dense_method, pipeline.gem_depth)[0].features, want_c),
                        "same_regions": len(got_regions) == len(want_regions) and all(
                            np.array_equal(g.mask, w.mask) for g, w in zip(got_regions, want_regions)),
                    }
        result["images"][f"{Path(image_path).name} {image.width}x{image.height}"] = summary
    image = Image.open(images[0]).convert("RGB")
    for size in batches:
        for b, pipeline in pipelines.items():
            seconds = _timed(lambda: pipeline.generate_batch([image] * size))
            result["batches"].setdefault(str(size), {})[b] = seconds / size
    result["crf"] = pipelines[backends[0]].use_crf
    result["dense_method"] = pipelines[backends[0]].dense_method
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def bench_crf_scales(preset: str, backend: str, dtype: str, scales: list[float], scenes: int) -> dict:
    """End-to-end seconds and synthetic mask mIoU (Hungarian-matched) per CRF scale."""
    import numpy as np
    import torch
    from PIL import Image

    from tag_backend.eval.metrics import hungarian_ious, region_map_from_masks
    from tag_backend.eval.synthetic import make_scene
    from tag_backend.services import Services
    from tag_backend.stages.crf import CrfParams

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pipeline = Services(settings_for(preset, backend, dtype)).pipeline()
    data = [make_scene(seed, size=448) for seed in range(scenes)]
    out = {}
    pipeline.generate(Image.fromarray(data[0].image))
    for scale in scales:
        pipeline.crf_params = CrfParams(iterations=pipeline.crf_params.iterations, scale=scale)
        seconds, ious = [], []
        for scene in data:
            timings: dict[str, float] = {}
            seconds.append(_timed(lambda: pipeline.generate(Image.fromarray(scene.image), timings)))
            regions = pipeline.generate(Image.fromarray(scene.image))
            region_map = region_map_from_masks([r.mask for r in regions], scene.gt.shape)
            ious.append(float(np.mean(hungarian_ious(region_map, scene.gt, len(regions)))))
        out[str(scale)] = {"seconds": statistics.median(seconds), "miou": float(np.mean(ious))}
    return out


def bench_startup(preset: str, backend: str, dtype: str, image: str) -> dict:
    """Wall time of `tag-backend predict IMAGE` in a fresh process, and its stages.

    Caches warm, as for a user's second run: one untimed run first exports the graphs, writes
    the backbone records (docs/inference-backends.md) and fills the page cache.
    """
    settings = settings_for(preset, backend, dtype)
    env = {**os.environ, "TAG_PRESET": preset, "TAG_DINO_MODEL": settings.dino_model,
           "TAG_CLIP_MODEL": settings.clip_model, "TAG_DEVICE": "cpu", "TAG_DTYPE": dtype,
           "TAG_BACKEND": backend, "TAG_DATA_DIR": settings.data_dir, "TAG_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "tag_backend", "predict", image, "--out", f"{tmp}/t.json", "--quiet"]
        subprocess.run(command, env=env, check=True, capture_output=True)
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
    stages = subprocess.run([sys.executable, "-m", "benchmarks.engine", "--_startup_stages", image],
                            env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    return {"predict_wall_s": wall, "stages_s": json.loads(stages.stdout.strip().splitlines()[-1])}


def startup_stages(image: str) -> dict:
    """The steps of `tag-backend predict` one by one, timed (run in a fresh process)."""
    marks: dict[str, float] = {}
    last = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        marks[name] = now - last
        last = now

    import tag_backend.cli  # noqa: F401
    mark("import cli")
    from tag_backend.cli_common import settings_with
    from tag_backend.image_io import open_image
    from tag_backend.predict_files import predict_files  # noqa: F401
    from tag_backend.services import Services
    mark("import engine (torch)")
    services = Services(settings_with())
    services.models.dino
    mark("load DINOv2 (or its record)")
    services.models.clip
    mark("load CLIP (or its record)")
    pipeline = services.pipeline()
    mark("store + index + exemplars")
    services.version_for(services.knowledge())
    mark("model_version")
    picture = open_image(image)
    timings: dict[str, float] = {}
    pipeline.generate_batch([picture], timings)
    mark("first image (incl. compile)")
    return {**marks, **{f"  {k}": v for k, v in timings.items()}}


def _print(result: dict) -> None:
    preset = result["preset"]
    print(f"\n== preset {preset} ({result['dtype']}, {result['threads']} threads, dense "
          f"{result['dense_method']}, CRF {'on' if result['crf'] else 'off'}, peak RSS "
          f"{result['peak_rss_gib']:.2f} GiB)")
    backends = result["backends"]
    for image, summary in result["images"].items():
        print(f"-- {image}")
        print(f"{'stage':<16}" + "".join(f"{b:>13}" for b in backends))
        for stage in summary[backends[0]]["stages_s"]:
            print(f"{stage:<16}" + "".join(f"{summary[b]['stages_s'].get(stage, 0):>13.3f}" for b in backends))
        for key, label in (("end_to_end_s", "end_to_end"), ("backbone_forwards_s", "backbones"),
                           ("ratio", "e2e/backbones")):
            print(f"{label:<16}" + "".join(f"{summary[b][key]:>13.3f}" for b in backends))
        if "torch" in summary:
            for b in backends:
                if b != "torch":
                    print(f"{b} / torch end to end: {summary[b]['end_to_end_s'] / summary['torch']['end_to_end_s']:.3f}"
                          f"  (goal {TARGET_SECONDS[preset]} s/image; e2e/backbones goal <= {TARGET_RATIO[preset]})")
                    eq = summary[b].get("equality")
                    if eq:
                        print(f"{b} equality: DINOv2 min cos {eq['dino_min_cos']:.6f}, dense CLIP min cos "
                              f"{eq['dense_min_cos']:.6f} (tolerance >= 0.999), identical regions: {eq['same_regions']}")
    if result["batches"]:
        print("batch   " + "".join(f"{b + ' s/img':>18}" for b in backends))
        for size, per in result["batches"].items():
            print(f"{size:<8}" + "".join(f"{per[b]:>18.3f}" for b in backends))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["fast", "paper", "both"], default="both")
    parser.add_argument("--backends", default="torch,openvino", help="comma-separated; torch is the reference")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--image", action="append", help="image(s) (default: coffee.jpg + a textured image)")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes for throughput ('' = skip)")
    parser.add_argument("--startup", action="store_true", help="time `tag-backend predict` on one image")
    parser.add_argument("--crf-scales", default="", help="e.g. 1.0,0.5,0.35: CRF resolution vs time and mIoU")
    parser.add_argument("--crf-scenes", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="print one JSON line per preset")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_startup_stages", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._startup_stages:
        print(json.dumps(startup_stages(args._startup_stages)))
        return
    presets = ["fast", "paper"] if args.preset == "both" else [args.preset]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    images = args.image or [str(COFFEE), str(textured_image())]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args._child:
        print(json.dumps(bench_preset(presets[0], backends, args.runs, images, batches, args.dtype)))
        return
    for preset in presets:  # one process per preset: peak RSS is per preset
        command = [sys.executable, "-m", "benchmarks.engine", "--preset", preset, "--runs", str(args.runs),
                   "--backends", ",".join(backends), "--dtype", args.dtype, "--batches", args.batches,
                   "--_child"] + [f"--image={i}" for i in images]
        out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(result)) if args.json else _print(result)
        if args.crf_scales:
            scales = [float(s) for s in args.crf_scales.split(",")]
            for backend in backends:
                crf = bench_crf_scales(preset, backend, args.dtype, scales, args.crf_scenes)
                print(f"CRF scale ({preset}, {backend}): " + ", ".join(
                    f"{s}: {v['seconds']:.2f} s/image, mIoU {v['miou']:.3f}" for s, v in crf.items()))
        if args.startup:
            for backend in backends:
                start = bench_startup(preset, backend, args.dtype, images[0])
                print(f"startup ({preset}, {backend}): `tag-backend predict` one image "
                      f"{start['predict_wall_s']:.2f} s wall (goal <= 8 s); stages: " + ", ".join(
                          f"{k.strip()} {v:.2f}" for k, v in start["stages_s"].items()))
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
