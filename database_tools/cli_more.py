"""``tag-db`` commands for curation, corrections and bundles (registered on the main group)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def register(cli: click.Group, pass_app: Callable, handle_errors: Callable) -> None:
    """Attach the ``concepts`` group, ``ingest-corrections``, ``export``, ``import-bundle``."""
    _register_concepts(cli, pass_app, handle_errors)
    _register_exchange(cli, pass_app, handle_errors)


def _register_concepts(cli: click.Group, pass_app: Callable, handle_errors: Callable) -> None:
    @cli.group()
    def concepts() -> None:
        """List, approve, reject, merge and rename concepts."""

    @concepts.command(name="list")
    @click.option("--status", type=click.Choice(["active", "pending", "rejected"]), default=None,
                  help="Only this status (default: all three).")
    @click.option("--source", default=None, help="Only sources starting with this text.")
    @click.option("--limit", type=click.IntRange(1), default=50, help="Most rows shown.")
    @pass_app
    @handle_errors
    def list_(app: Any, status: str | None, source: str | None, limit: int) -> None:
        """Concepts, most supported first."""
        from .curation import list_concepts

        for e in list_concepts(app.store, status=status, source=source, limit=limit):
            click.echo(f"{e.text}\t{e.status}\t{e.support}\t{e.source}")

    @concepts.command()
    @click.argument("names", nargs=-1, required=True)
    @pass_app
    @handle_errors
    def approve(app: Any, names: tuple[str, ...]) -> None:
        """Set concepts NAMES active (used for retrieval)."""
        from .curation import set_concept_status

        click.echo(f"{set_concept_status(app.store, names, 'active')} concepts approved")

    @concepts.command()
    @click.argument("names", nargs=-1, required=True)
    @pass_app
    @handle_errors
    def reject(app: Any, names: tuple[str, ...]) -> None:
        """Set concepts NAMES rejected (never used, kept so they are not re-added)."""
        from .curation import set_concept_status

        click.echo(f"{set_concept_status(app.store, names, 'rejected')} concepts rejected")

    @concepts.command()
    @click.argument("names", nargs=-1, required=True)
    @pass_app
    @handle_errors
    def merge(app: Any, names: tuple[str, ...]) -> None:
        """Merge concepts into the last name given: tag-db concepts merge FROM [FROM...] INTO."""
        from .curation import merge_concepts

        if len(names) < 2:
            raise click.UsageError("give at least one FROM concept and the INTO concept")
        click.echo(f"{merge_concepts(app.store, names[:-1], names[-1])} concepts merged "
                   f"into {names[-1]!r}")

    @concepts.command()
    @click.argument("old")
    @click.argument("new")
    @pass_app
    @handle_errors
    def rename(app: Any, old: str, new: str) -> None:
        """Rename concept OLD to NEW (merges when NEW exists; OLD becomes an alias)."""
        from .curation import rename_concept

        click.echo(f"renamed {old!r} to {rename_concept(app.store, old, new)!r}")


def _register_exchange(cli: click.Group, pass_app: Callable, handle_errors: Callable) -> None:
    @cli.command(name="ingest-corrections")
    @click.argument("export_json", type=click.Path(exists=True, dir_okay=False))
    @click.option("--new-concept-status", type=click.Choice(["active", "pending"]), default=None,
                  help="Status of new names (default TAG_NEW_CONCEPT_STATUS).")
    @pass_app
    @handle_errors
    def ingest_corrections(app: Any, export_json: str, new_concept_status: str | None) -> None:
        """Learn from a Label Studio JSON export (names, aliases; no images, no exemplars)."""
        from .corrections import ingest_export

        status = new_concept_status or app.defaults.new_concept_status
        report = ingest_export(app.store, export_json, new_concept_status=status, progress=True)
        click.echo(report.summary())

    @cli.command()
    @click.argument("bundle", type=click.Path(file_okay=False))
    @click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet",
                  help="Row file format.")
    @click.option("--with-index", is_flag=True, help="Also copy the index directory.")
    @click.option("--index-dir", default=None, help="Index directory (default TAG_INDEX_DIR).")
    @pass_app
    @handle_errors
    def export(app: Any, bundle: str, fmt: str, with_index: bool, index_dir: str | None) -> None:
        """Write entries, aliases and exemplars (+ manifest with checksums) to BUNDLE."""
        from .bundle import export_bundle

        idx = app.index_dir(index_dir) if with_index else None
        click.echo(export_bundle(app.store, bundle, fmt=fmt, index_dir=idx).summary())

    @cli.command(name="import-bundle")
    @click.argument("bundle", type=click.Path(exists=True, file_okay=False))
    @pass_app
    @handle_errors
    def import_bundle_cmd(app: Any, bundle: str) -> None:
        """Merge BUNDLE into the database (verified first; all or nothing; once)."""
        from .bundle import import_bundle

        click.echo(import_bundle(app.store, bundle).summary())
