"""`tag-backend export`: a Label Studio JSON export -> COCO instances, PNG class masks, class table."""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import Settings
from .coco import ExportReport, write_export
from .regions import annotated_images, load_export, region_names

logger = logging.getLogger(__name__)


def resolve_with_store(settings: Settings, names: set[str]) -> dict[str, tuple[str, int | None]]:
    """Each name's (category name, concept id) through the concept database's merges and aliases.

    A missing default SQLite database is not created for an export: names are kept as written.
    """
    from database_tools.normalize import display_text
    from database_tools.resolve import resolve_names
    from database_tools.store import Store

    url = settings.resolved_db_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        logger.warning("no concept database at %s: names are exported as written (set TAG_DB_URL / --db)", url)
        return {n: (display_text(n, "concept"), None) for n in names}
    store = Store(url)
    try:
        return {name: (r.name, r.concept_id) for name, r in resolve_names(store, names).items()}
    finally:
        store.close()


def export_project(export_file: str | Path, out_dir: str | Path, settings: Settings, *, segmentation: str = "polygon",
                   tolerance: float = 1.0, image_field: str | None = None, progress: bool = True) -> ExportReport:
    """Read ``export_file`` (Label Studio "JSON" export) and write the dataset into ``out_dir``."""
    tasks = load_export(export_file)
    names = resolve_with_store(settings, region_names(tasks))
    annotated = sum(1 for t in tasks if any(not a.get("was_cancelled") for a in t.get("annotations") or []
                                            if isinstance(a, dict)))
    return write_export(annotated_images(tasks, image_field), names, out_dir, segmentation=segmentation,
                        tolerance=tolerance, progress=progress, total=annotated)
