"""``tag-db`` commands of the learning loop: knowledge releases and index compaction."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def register(cli: click.Group, pass_app: Callable, handle_errors: Callable) -> None:
    """Attach ``release``, ``releases`` and ``compact``."""

    @cli.command()
    @click.option("--note", default="", help="What this release contains (shown by releases).")
    @click.option("--force", is_flag=True, help="Cut a release even if nothing was learnt.")
    @pass_app
    @handle_errors
    def release(app: Any, note: str, force: bool) -> None:
        """Cut a knowledge release: model_version moves to the next r<N>."""
        from .releases import cut_release

        cut, created = cut_release(app.store, note=note, source="cli", force=force)
        if created:
            click.echo(f"release {cut.label} at store sequence {cut.db_seq}")
        else:
            click.echo(f"nothing learnt since release {cut.label}: no new release "
                       "(--force to cut one anyway)")

    @cli.command()
    @click.option("--limit", type=click.IntRange(1), default=20, help="Most rows shown.")
    @pass_app
    @handle_errors
    def releases(app: Any, limit: int) -> None:
        """Knowledge releases, newest first."""
        from .releases import list_releases

        for r in list_releases(app.store, limit=limit):
            created = r.created_at.isoformat(timespec="seconds") if r.created_at else "-"
            click.echo(f"{r.label}\t{created}\tseq {r.db_seq}\t{r.source}\t{r.note}")

    @cli.command()
    @click.option("--index-dir", default=None, help="Index directory (default TAG_INDEX_DIR).")
    @pass_app
    @handle_errors
    def compact(app: Any, index_dir: str | None) -> None:
        """Fold what corrections added (the delta) into a new base index version.

        Builds the new version next to the serving one and switches CURRENT atomically;
        serving processes pick it up on their next refresh. Run it off-peak.
        """
        from .index_build import build_index

        index = build_index(app.store, app.text_encoder(), app.index_dir(index_dir))
        m = index.manifest
        click.echo(f"index {m.version}: {m.count} entries, {m.factory}, store sequence "
                   f"{m.db_version}")
