"""Predict named masks for image files and build a Label Studio task list (the `predict` CLI)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image
from tqdm import tqdm

from .errors import ImageError, TagError
from .image_io import open_image
from .ls.layout import DEFAULT_LAYOUT
from .services import Services

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class PredictReport:
    """tasks: Label Studio tasks (one per image that worked); failures: (path, reason)."""

    tasks: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    regions: int = 0


def expand_inputs(inputs: Iterable[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files given directly are kept as they are; directories are searched for image files."""
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                errors.append((item, "directory contains no image files"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            errors.append((item, "no such file or directory"))
    return files, errors


def local_files_url(document_root: str | Path, prefix: str = "/data/local-files/?d=") -> Callable[[Path], str]:
    """Task image URL for Label Studio local-files storage rooted at ``document_root``."""
    root = Path(document_root).resolve()

    def url(path: Path) -> str:
        resolved = path.resolve()
        try:
            return prefix + resolved.relative_to(root).as_posix()
        except ValueError:
            return prefix + resolved.as_posix().lstrip("/") if prefix else str(resolved)

    return url


DEFAULT_BATCH_SIZE = 4


def predict_files(services: Services, inputs: Iterable[str], url_for: Callable[[Path], str],
                  progress: bool = True, batch_size: int = DEFAULT_BATCH_SIZE) -> PredictReport:
    """Run the predictor on every image, ``batch_size`` images per backbone forward, and
    serialize each as a task of the recommended config.

    A bad file is reported and skipped, the batch goes on; when a whole batch fails, its images
    are retried one by one so only the culprit is lost.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files, failures = expand_inputs(inputs)
    report = PredictReport(failures=failures)
    knowledge = services.knowledge()  # load models once, before the progress bar starts
    version = services.version_for(knowledge)  # no database query per image
    with tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar:
        batch: list[tuple[Path, Image.Image]] = []
        for path in files:
            try:
                batch.append((path, open_image(path, services.settings.max_image_pixels)))
            except (ImageError, TagError) as exc:
                report.failures.append((str(path), str(exc)))
                bar.update(1)
            if len(batch) == batch_size:
                _predict_batch(services, knowledge, batch, url_for, version, report)
                bar.update(len(batch))
                batch = []
        if batch:
            _predict_batch(services, knowledge, batch, url_for, version, report)
            bar.update(len(batch))
    return report


def _predict_batch(services: Services, knowledge, batch: list[tuple[Path, Image.Image]],
                   url_for: Callable[[Path], str], version: str, report: PredictReport) -> None:
    try:
        results = services.predictor.predict([image for _, image in batch], knowledge=knowledge)
    except (TagError, RuntimeError, ValueError, MemoryError) as exc:
        if len(batch) > 1:  # isolate the image that fails
            logger.warning("batch of %d failed (%s); predicting its images one by one", len(batch), exc)
            for item in batch:
                _predict_batch(services, knowledge, [item], url_for, version, report)
            return
        path = batch[0][0]
        if isinstance(exc, TagError):
            report.failures.append((str(path), str(exc)))
        else:  # one bad image must not stop the run
            logger.exception("prediction failed for %s", path)
            report.failures.append((str(path), f"prediction failed: {type(exc).__name__}: {exc}"))
        return
    for (path, image), regions in zip(batch, results):
        report.regions += len(regions)
        report.tasks.append(services.serializer.task(url_for(path), regions, image.width,
                                                     image.height, DEFAULT_LAYOUT, version))


def write_tasks(tasks: list[dict], out: str | Path) -> None:
    """Write the task list atomically (temp file + rename)."""
    import json

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(tasks))
    os.replace(tmp, out)
