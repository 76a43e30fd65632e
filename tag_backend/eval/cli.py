"""`tag-backend eval`: measure label quality on a dataset (thin wrapper over run_eval)."""
from __future__ import annotations

import math
from pathlib import Path

import click

from ..cli_common import engine_options, handle_errors, settings_with
from .datasets import DATASETS


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


@click.command("eval")
@click.option("--dataset", type=click.Choice(DATASETS), required=True,
              help="voc20 | context59 | ade150 (standard layouts), folder (images/ masks/ "
                   "classes.txt) or synthetic (generated into --root if missing).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset folder (or its parent, e.g. the folder holding VOCdevkit).")
@click.option("--split", default="val", show_default=True, help="Split file / folder to read.")
@click.option("--limit", type=int, help="Evaluate only the first N images.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("eval-report"), show_default=True,
              help="Where report.md/json, examples.png and the per-image cache go (rerun to resume).")
@click.option("--mapping-model", metavar="clip|DIR", default="clip", show_default=True,
              help="Name->class encoder: CLIP's text tower, or a local sentence-transformers "
                   "model directory (TAG used all-mpnet-base-v2).")
@click.option("--strict-threshold", type=float,
              help="Cosine a name needs to match a class in the strict protocol "
                   "[default 0.85 with CLIP, 0.5 with sentence-transformers].")
@click.option("--simulate-corrections", type=int, default=0, show_default=True,
              help="Replay an annotator correcting the first N images (on a scratch copy of the "
                   "database), then evaluate the rest.")
@click.option("--curve-points", type=int, default=3, show_default=True,
              help="Checkpoints of the quality-vs-corrections curve (0 .. N corrected images).")
@click.option("--image-size", type=int, help="Override the model input size (default: preset's).")
@click.option("--n-segments", type=int, help="Override k of the k-means (default: preset's).")
@click.option("--grid-images", type=int, default=6, show_default=True,
              help="Images drawn in examples.png.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@engine_options
@handle_errors
def eval_command(dataset, root, split, limit, report_dir, mapping_model, strict_threshold,
                 simulate_corrections, curve_points, image_size, n_segments, grid_images, quiet,
                 **flags) -> None:
    """Evaluate label quality: mIoU under TAG's and a strict protocol, mask quality, names."""
    from .runner import EvalConfig, run_eval

    config = EvalConfig(dataset=dataset, root=root, report_dir=report_dir, split=split, limit=limit,
                        mapping_model=mapping_model, strict_threshold=strict_threshold,
                        simulate_corrections=simulate_corrections, curve_points=curve_points,
                        image_size=image_size, n_segments=n_segments, grid_images=grid_images,
                        progress=not quiet)
    result = run_eval(config, settings_with(**flags))
    s = result.summary
    for name, p in s["protocols"].items():
        click.echo(f"{name:>6}: mIoU {_pct(p['miou'])}  pixel acc {_pct(p['pixel_accuracy'])}  "
                   f"region names right {_pct(p['region_name_accuracy'])}")
    click.echo(f"  mask: Hungarian-matched mIoU {_pct(s['mask_quality']['hungarian_miou'])} "
               f"({s['images']} images, {len(result.failures)} failed)")
    for row in s.get("corrections", {}).get("curve", []):
        click.echo(f"  after {row['corrected_images']} corrected images: TAG mIoU {_pct(row['tag_miou'])}, "
                   f"strict names right {_pct(row['strict_region_accuracy'])}")
    click.echo(f"report: {result.files['markdown']}")
