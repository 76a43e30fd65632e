"""`tag-backend` command line (also `python -m tag_backend`)."""
from __future__ import annotations

import sys

import click

from .cli_common import (ProcessGroup, configure_logging, engine_options, handle_errors, settings_with,
                         skip_teardown)
from .eval.cli import eval_command
from .export.cli import export_command
from .jobs.cli import jobs, prelabel
from .ls.connect_cli import ls_connect
from .serve_cli import download_weights, serve


@click.group(cls=ProcessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tag-backend")
def main() -> None:
    """Guidance-free open-vocabulary segmentation (TAG) for Label Studio pre-labelling."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Task list to write (JSON).")
@click.option("--document-root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Image URLs are written relative to this directory (Label Studio local-files root).")
@click.option("--url-prefix", default="/data/local-files/?d=", show_default=True,
              help="Prefix of each task's image URL.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images per backbone forward (same-size inputs share one forward).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@engine_options
@handle_errors
def predict(inputs, out, document_root, url_prefix, batch_size, quiet, **flags) -> None:
    """Predict named masks for images and write a Label Studio-importable task list."""
    from .predict_files import local_files_url, predict_files, write_tasks
    from .services import Services

    settings = settings_with(**flags)
    configure_logging(settings.log_level, settings.log_format)
    services = Services(settings)
    try:
        report = predict_files(services, inputs, local_files_url(document_root, url_prefix),
                               progress=not quiet, batch_size=batch_size)
        write_tasks(report.tasks, out)
    finally:
        services.close()
    for path, reason in report.failures:
        click.echo(f"FAILED {path}: {reason}", err=True)
    click.echo(f"{len(report.tasks)} image(s) predicted, {report.regions} region(s), "
               f"{len(report.failures)} failed -> {out}")
    skip_teardown()  # everything is written and closed
    if report.failures:
        sys.exit(1)


@main.command()
@handle_errors
def models() -> None:
    """List presets, what each needs, and where weights are looked up."""
    from .models_info import describe_models

    click.echo(describe_models(settings_with()))


# Commands in their own modules, imported plainly: their modules import only click and light
# helpers at the top (numpy at most, which `predict` loads anyway); the heavy work is imported
# inside each command.
for command in (serve, download_weights, eval_command, prelabel, jobs, ls_connect, export_command):
    main.add_command(command)
