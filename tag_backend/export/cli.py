"""`tag-backend export` (thin: parse, call :func:`tag_backend.export.project.export_project`, print)."""
from __future__ import annotations

import click

from ..cli_common import configure_logging, handle_errors, settings_with


@click.command("export")
@click.argument("export_file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write the dataset into.")
@click.option("--db", "db_url", metavar="URL", help="Concept database resolving the names [env TAG_DB_URL].")
@click.option("--segmentation", type=click.Choice(["polygon", "rle"]), default="polygon", show_default=True,
              help="COCO segmentation: simplified polygons (holes spliced in) or exact uncompressed RLE.")
@click.option("--tolerance", type=float, default=1.0, show_default=True,
              help="Polygon simplification: the most an outline strays from the mask, in pixels.")
@click.option("--image-field", metavar="NAME", help="Task data field holding the image (default: the first one).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def export_command(export_file, out, db_url, segmentation, tolerance, image_field, quiet) -> None:
    """Turn a Label Studio JSON export into COCO instances, PNG class masks and a class table.

    Region names (the per-region text, else the label) become categories, resolved through the
    concept database: merged, renamed and corrected names become one category with its concept id.
    """
    from .project import export_project

    settings = settings_with(db_url=db_url)
    configure_logging(settings.log_level, settings.log_format)
    report = export_project(export_file, out, settings, segmentation=segmentation, tolerance=tolerance,
                            image_field=image_field, progress=not quiet)
    for reason in report.skipped:
        click.echo(f"SKIPPED {reason}", err=True)
    click.echo(f"{report.images} image(s), {report.instances} instance(s), {len(report.categories)} "
               f"categor{'y' if len(report.categories) == 1 else 'ies'} -> {out}")
