"""``tag-db``: the command line of the concept database (thin: one library call per command)."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import DatabaseToolsError
from .plugin import ENTRY_POINT_GROUP, DatabaseDefaults, EncoderProvider, load_provider

logger = logging.getLogger(__name__)


class AppContext:
    """Options, the encoder provider and the store, created on first use so ``--help`` never
    touches the database or loads a model."""

    def __init__(self, db_url: str | None, encoder: str | None) -> None:
        self._db_url = db_url
        self._encoder = encoder
        self._provider: EncoderProvider | None = None
        self._store: Any = None

    @property
    def provider(self) -> EncoderProvider:
        if self._provider is None:
            self._provider = load_provider(self._encoder)
        return self._provider

    @property
    def defaults(self) -> DatabaseDefaults:
        return self.provider.defaults()

    @property
    def store(self) -> Any:
        if self._store is None:
            from .store import Store

            self._store = Store(self._db_url or self.defaults.db_url)
        return self._store

    def index_dir(self, override: str | None) -> str:
        return override or self.defaults.index_dir

    def text_encoder(self, progress: bool = True) -> Any:
        """The provider's text encoder behind the store's embedding cache."""
        from .embedding import CachedTextEncoder

        return CachedTextEncoder(self.store, self.provider.text_encoder(), progress=progress)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn typed library errors into ``click.ClickException`` (clear message, exit code 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (DatabaseToolsError, ValueError, TypeError, OSError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper


pass_app = click.make_pass_decorator(AppContext)


@click.group()
@click.option("--db", "db_url", metavar="URL", default=None,
              help="Database URL (sqlite:///file.db or postgresql://...); default: the text "
                   "encoder provider's (tag-backend: TAG_DB_URL or a SQLite file in TAG_DATA_DIR).")
@click.option("--encoder", default=None, metavar="NAME",
              help=f"Text encoder provider (entry point in {ENTRY_POINT_GROUP}); default: the "
                   "only one installed (tag-backend: the configured CLIP text tower).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, encoder: str | None, verbose: bool) -> None:
    """Manage the TAG concept database: import, curate, correct, index, export."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    app = AppContext(db_url, encoder)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
@pass_app
@handle_errors
def init(app: AppContext) -> None:
    """Create the database (or migrate it to the newest schema)."""
    from .migrate import head_revision

    store = app.store
    click.echo(f"{store.safe_url}: schema {head_revision()}, db_version {store.db_version()}")


@cli.command(name="import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(["caption", "concept"]), default=None,
              help="Entry kind (default: concept for .txt, caption otherwise).")
@click.option("--format", "fmt", type=click.Choice(["txt", "tsv", "csv", "jsonl", "coco",
              "parquet"]), default=None, help="Input format (default: from the extension).")
@click.option("--source", default=None, help="Source label stored with new entries.")
@click.option("--column", default=None, help="CSV/TSV/Parquet column or JSON field of the text.")
@click.option("--encoding-errors", type=click.Choice(["skip", "replace"]), default="skip",
              help="Non-UTF-8 lines: skip and report (default) or replace bad bytes.")
@click.option("--status", type=click.Choice(["active", "pending"]), default="active",
              help="Status of new entries.")
@pass_app
@handle_errors
def import_(app: AppContext, files: tuple[str, ...], kind: str | None, fmt: str | None,
            source: str | None, column: str | None, encoding_errors: str, status: str) -> None:
    """Import caption/concept files (txt, tsv/csv, jsonl, COCO json, parquet); idempotent."""
    from .importers import import_file
    from .readers import detect_format

    for name in files:
        file_kind = kind or ("concept" if (fmt or detect_format(Path(name))) == "txt"
                             else "caption")
        report = import_file(app.store, name, kind=file_kind, fmt=fmt, source=source,
                             column=column, encoding_errors=encoding_errors, status=status,
                             progress=True)
        click.echo(report.summary())
        for line, error in report.errors[:20]:
            click.echo(f"  line {line}: {error}", err=True)


@cli.command(name="build-index")
@click.option("--index-dir", default=None, help="Index directory (default TAG_INDEX_DIR).")
@click.option("--factory", default=None,
              help="faiss factory string (default: chosen from the number of entries).")
@click.option("--incremental", is_flag=True,
              help="Only add/remove entries changed since the current version.")
@pass_app
@handle_errors
def build_index_cmd(app: AppContext, index_dir: str | None, factory: str | None,
                    incremental: bool) -> None:
    """Encode the active entries with the configured CLIP and publish a new index version."""
    from .index_build import build_index, update_index

    encoder, directory = app.text_encoder(), app.index_dir(index_dir)
    if incremental:
        index = update_index(app.store, encoder, directory)
    else:
        index = build_index(app.store, encoder, directory, factory=factory)
    m = index.manifest
    click.echo(f"index {m.version}: {m.count} entries, {m.factory}, encoder {m.encoder_id}, "
               f"db_version {m.db_version} -> {directory}")


@cli.command()
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, help="Number of hits.")
@click.option("--index-dir", default=None, help="Index directory (default TAG_INDEX_DIR).")
@pass_app
@handle_errors
def search(app: AppContext, text: str, k: int, index_dir: str | None) -> None:
    """Debug query: the entries nearest to TEXT (encoded by the configured CLIP)."""
    from .index import ConceptIndex

    encoder = app.text_encoder(progress=False)
    index = ConceptIndex.open(app.index_dir(index_dir), encoder.encoder_id)
    for hit in index.search(encoder.encode([text]), k)[0]:
        click.echo(f"{hit.score:.4f}  {hit.kind:<8} {hit.text}")


@cli.command()
@click.option("--top", type=click.IntRange(1, 1000), default=10, help="Rows per top list.")
@pass_app
@handle_errors
def stats(app: AppContext, top: int) -> None:
    """Counts by kind/status and source, most corrected concepts, recent additions."""
    from .curation import stats as compute

    s = compute(app.store, top=top)
    click.echo(f"db_version: {s.db_version}")
    click.echo("entries by kind/status:")
    for (kind, status), n in sorted(s.by_kind_status.items()):
        click.echo(f"  {kind:<8} {status:<9} {n}")
    click.echo("entries by source:")
    for source, n in s.by_source.items():
        click.echo(f"  {source or '-'}: {n}")
    click.echo(f"aliases: {s.aliases}; exemplars: "
               + (", ".join(f"{e}={n}" for e, n in s.exemplars.items()) or "0"))
    click.echo("most corrected concepts:")
    for text, n in s.most_corrected:
        click.echo(f"  {text}: {n}")
    click.echo("recent additions:")
    for kind, text, created in s.recent:
        click.echo(f"  {created[:19]} {kind:<8} {text}")


from .cli_learning import register as register_learning
from .cli_more import register

register(cli, pass_app, handle_errors)
register_learning(cli, pass_app, handle_errors)


def main() -> None:
    """Console-script entry point ``tag-db``."""
    cli(prog_name="tag-db")
