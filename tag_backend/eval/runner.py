"""``run_eval``: read a dataset, predict (cached), score under both protocols, write the report.

With ``simulate_corrections = N`` the first N images are replayed through the correction path
(:mod:`.simulate`) and the quality of the remaining images is measured after 0 .. N corrected
images (``curve_points`` checkpoints), on a scratch copy of the concept database.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import Settings
from ..errors import TagError
from ..services import Services
from .datasets import Dataset, Sample, SampleError, load_sample, read_dataset
from .mapping import DEFAULT_STRICT_THRESHOLD, NameMapper, encoder_kind, make_mapping_encoder
from .metrics import Protocol
from .predict import PredictionCache, config_hash, prediction_from_regions
from .report import Example, write_report
from .scoring import Scorer, default_protocols
from .simulate import CorrectionStep, annotator_names, record_correction, scratch_settings
from .synthetic import palette, write_synthetic

logger = logging.getLogger(__name__)


class EvalError(TagError):
    """The evaluation cannot run as asked (bad option combination)."""


@dataclass
class EvalConfig:
    """Options of one evaluation run (the CLI flags)."""

    dataset: str
    root: Path
    report_dir: Path
    split: str = "val"
    limit: int | None = None
    mapping_model: str | None = None
    strict_threshold: float | None = None
    simulate_corrections: int = 0
    curve_points: int = 3
    image_size: int | None = None
    n_segments: int | None = None
    grid_images: int = 6
    synthetic_count: int = 24
    synthetic_size: int = 224
    progress: bool = True


@dataclass
class EvalResult:
    summary: dict
    failures: list[tuple[str, str]]
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Pass:
    scorer: Scorer
    failures: list[tuple[str, str]]
    examples: list[Example]


def load_eval_dataset(config: EvalConfig) -> Dataset:
    if config.dataset == "synthetic":
        count = config.limit or config.synthetic_count
        write_synthetic(config.root, count=count, size=config.synthetic_size)
    dataset = read_dataset(config.dataset, config.root, config.split, config.limit)
    if config.dataset == "synthetic":
        dataset.rgb_palette = palette()
    return dataset


def _knobs(config: EvalConfig) -> dict:
    """Evaluation-only pipeline knobs (smaller input, fewer segments)."""
    knobs = {}
    if config.image_size is not None:
        knobs["image_size"] = config.image_size
    if config.n_segments is not None:
        if config.n_segments < 1:
            raise EvalError("--n-segments must be >= 1")
        knobs["n_segments"] = config.n_segments
    return knobs


def _with_knobs(services: Services, config: EvalConfig) -> Services:
    """``services``, or services on the same settings whose pipeline has the config's knobs."""
    knobs = _knobs(config)
    if "image_size" in knobs:
        models = services.models
        if knobs["image_size"] < max(models.dino.patch_size, models.clip.patch_size):
            raise EvalError(f"--image-size {config.image_size} is smaller than one patch")
    if all(services.pipeline_overrides.get(k) == v for k, v in knobs.items()):
        return services
    return Services(services.settings, pipeline_overrides={**services.pipeline_overrides, **knobs})


def _predict(services: Services, dataset: Dataset, sample: Sample, cache: PredictionCache):
    """(image, gt, prediction); raises SampleError for anything wrong with this image."""
    image, gt = load_sample(dataset, sample, services.settings.max_image_pixels)
    prediction = cache.get(sample.image_id, gt.shape)
    if prediction is None:
        start = time.perf_counter()
        try:
            regions = services.predictor.predict([image])[0]
            prediction = prediction_from_regions(regions, gt.shape, time.perf_counter() - start)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # one image must never end a long run; it is listed instead
            logger.debug("pipeline failed on %s", sample.image_id, exc_info=True)
            raise SampleError(f"{sample.image_id}: pipeline failed: {type(exc).__name__}: {exc}") from None
        cache.put(sample.image_id, prediction)
    return image, gt, prediction


def _cache_for(services: Services, config: EvalConfig, dataset: Dataset) -> PredictionCache:
    digest = config_hash(services, {"dataset": dataset.name, "split": config.split,
                                   "root": str(dataset.root.resolve())})
    return PredictionCache(config.report_dir / "cache" / digest)


def evaluate(services: Services, config: EvalConfig, dataset: Dataset, samples: list[Sample], mapper: NameMapper,
             protocols: list[Protocol], desc: str = "eval") -> _Pass:
    """Score ``samples`` with the services' current knowledge (per-image failures listed)."""
    cache = _cache_for(services, config, dataset)
    result = _Pass(Scorer(dataset, mapper, protocols), [], [])
    for sample in tqdm(samples, desc=desc, unit="img", disable=not config.progress):
        try:
            image, gt, prediction = _predict(services, dataset, sample, cache)
            result.scorer.add(sample.image_id, gt, prediction)
        except (SampleError, ValueError) as exc:
            logger.warning("skipped %s: %s", sample.image_id, exc)
            result.failures.append((sample.image_id, str(exc)))
            continue
        if len(result.examples) < config.grid_images:
            result.examples.append(Example(sample.image_id, image, gt, prediction))
    if cache.hits:
        logger.info("%d of %d predictions came from the cache %s", cache.hits, len(samples),
                    cache.directory)
    return result


def _replay(services: Services, config: EvalConfig, dataset: Dataset, samples: list[Sample], mapper: NameMapper,
            strict: Protocol, state_file: Path) -> list[CorrectionStep]:
    """Correct ``samples`` one by one (resumable: finished images are listed in ``state_file``)."""
    done = json.loads(state_file.read_text()) if state_file.exists() else []
    finished = {d["image_id"] for d in done}
    steps = [CorrectionStep(**d) for d in done]
    for sample in tqdm(samples, desc="corrections", unit="img", disable=not config.progress):
        if sample.image_id in finished:
            continue
        cache = PredictionCache(None)
        try:
            image, gt, prediction = _predict(services, dataset, sample, cache)
            final, judged, corrected = annotator_names(prediction, gt, dataset, mapper, strict)
            record_correction(services, image, sample.image_id, prediction, final)
        except (SampleError, ValueError) as exc:
            logger.warning("correction of %s skipped: %s", sample.image_id, exc)
            continue
        acc = (judged - corrected) / judged if judged else float("nan")
        steps.append(CorrectionStep(sample.image_id, judged, corrected, acc))
        state_file.write_text(json.dumps([s.__dict__ for s in steps], indent=1))
    return steps


def _checkpoints(n: int, points: int) -> list[int]:
    if points < 2:
        raise EvalError("--curve-points must be >= 2 (0 and N corrections at least)")
    return sorted({round(n * i / (points - 1)) for i in range(points)})


def _curve_row(images: int, steps: list[CorrectionStep], summary: dict) -> dict:
    p = summary["protocols"]
    return {"corrected_images": images, "corrected_regions": sum(s.corrected for s in steps),
            "tag_miou": p["tag"]["miou"], "strict_miou": p["strict"]["miou"],
            "tag_region_accuracy": p["tag"]["region_name_accuracy"],
            "strict_region_accuracy": p["strict"]["region_name_accuracy"],
            "mask_miou": summary["mask_quality"]["hungarian_miou"]}


def _simulation_services(settings: Settings, config: EvalConfig) -> tuple[Services, Path]:
    key = json.dumps([settings.resolved_db_url, settings.preset, settings.clip_model,
                      settings.dino_model, config.dataset, str(config.root), config.simulate_corrections])
    scratch = config.report_dir / f"simulation-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return Services(scratch_settings(settings, scratch), pipeline_overrides=_knobs(config)), scratch


def _run_with_corrections(services, config, dataset, mapper, protocols, scratch: Path):
    n = config.simulate_corrections
    if n >= len(dataset.samples):
        raise EvalError(f"--simulate-corrections {n} leaves no image to evaluate "
                        f"({len(dataset.samples)} images)")
    train, held = dataset.samples[:n], dataset.samples[n:]
    strict = next(p for p in protocols if p.name == "strict")
    curve_file = scratch / "curve.json"
    saved = {row["corrected_images"]: row for row in
             (json.loads(curve_file.read_text()) if curve_file.exists() else [])}
    points = _checkpoints(n, config.curve_points)
    curve, steps, last = [], [], None
    for k in points:
        steps = _replay(services, config, dataset, train[:k], mapper, strict, scratch / "replayed.json")
        if k in saved and k != points[-1]:  # resumed run: earlier checkpoints are history
            curve.append(saved[k])
            continue
        last = evaluate(services, config, dataset, held, mapper, protocols, desc=f"eval@{k}")
        curve.append(_curve_row(k, steps, last.scorer.summary()))
        curve_file.write_text(json.dumps(curve, indent=1))
    return last, curve, steps


def run_eval(config: EvalConfig, settings: Settings, services: Services | None = None
             ) -> EvalResult:
    """Run one evaluation and write ``report.md``, ``report.json`` and ``examples.png``.

    ``services``: the process's services (built from ``settings`` when not given); simulated
    corrections always run on services of a scratch copy of the database.
    """
    config.report_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_eval_dataset(config)
    scratch = None
    if config.simulate_corrections:
        if config.simulate_corrections < 0:
            raise EvalError("--simulate-corrections must be >= 0")
        services, scratch = _simulation_services(settings, config)
    services = _with_knobs(services or Services(settings), config)
    encoder = make_mapping_encoder(config.mapping_model, services.models.clip.text_encoder(),
                                   settings.device)
    threshold = config.strict_threshold
    if threshold is None:
        threshold = DEFAULT_STRICT_THRESHOLD[encoder_kind(encoder)]
    mapper = NameMapper(encoder, dataset.classes)
    protocols = default_protocols(dataset, threshold)
    curve, steps = None, None
    if scratch is not None:
        final, curve, steps = _run_with_corrections(services, config, dataset, mapper, protocols, scratch)
    else:
        final = evaluate(services, config, dataset, dataset.samples, mapper, protocols)
    summary = final.scorer.summary()
    summary.update(_run_info(config, dataset, services, encoder, final))
    if curve is not None:
        summary["corrections"] = {"curve": curve, "steps": [s.__dict__ for s in steps]}
    files = write_report(config.report_dir, summary, final.failures, final.examples, dataset,
                         mapper, protocols)
    return EvalResult(summary, final.failures, files)


def _run_info(config: EvalConfig, dataset: Dataset, services: Services, encoder,
              final: _Pass) -> dict:
    import torch

    pipeline = services.pipeline()
    return {
        "dataset": {"name": dataset.name, "root": str(dataset.root), "split": config.split,
                    "classes": len(dataset.classes), "images_listed": len(dataset.samples)},
        "failures": {"count": len(final.failures),
                     "items": [{"image_id": i, "reason": r} for i, r in final.failures]},
        "model_version": services.model_version(),
        "encoder_id": services.models.clip.encoder_id,
        "mapping_encoder": encoder.encoder_id,
        "pipeline": {"image_size": pipeline.image_size, "n_segments": pipeline.n_segments,
                     "use_crf": pipeline.use_crf, "dense_method": pipeline.dense_method},
        "environment": {"device": str(services.models.device), "torch": torch.__version__,
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "mask_quality_note": "Hungarian-matched IoU per ground-truth segment (all classes incl. "
                             "background), mean over segments",
        "nan_note": "NaN = undefined (nothing to score)",
        "numpy": np.__version__,
    }
