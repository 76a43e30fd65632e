"""On-disk cache of exported backbone graphs, keyed by everything the graph depends on.

Layout: ``ROOT/<key>/`` holds the backend's files and ``meta.json`` (the key's fields, for
people reading the directory). An entry is built in a temporary sibling directory and renamed
into place, so a reader never sees half an export; a file lock per key makes concurrent
processes export once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 3600  # exporting a ViT-L on a loaded 2-core machine takes minutes


def cache_key(fields: Mapping[str, object]) -> str:
    """Stable hex key of the fields (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True, default=str).encode()).hexdigest()[:32]


class ExportCache:
    """Directory of exported graphs: :meth:`get_or_build` returns the entry's directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, fields: Mapping[str, object]) -> Path:
        return self.root / cache_key(fields)

    def get_or_build(self, fields: Mapping[str, object], build: Callable[[Path], None]) -> Path:
        """The entry of ``fields``; ``build(tmp_dir)`` writes it first when missing."""
        final = self.entry(fields)
        if (final / "meta.json").is_file():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock", timeout=LOCK_TIMEOUT_S):
            if (final / "meta.json").is_file():  # another process exported it meanwhile
                return final
            if final.exists():  # left by a crash between rename and meta (cannot happen) or by hand
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            try:
                build(tmp)
                (tmp / "meta.json").write_text(json.dumps(dict(fields), indent=1, sort_keys=True, default=str))
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        logger.info("exported %s graph to %s", fields.get("graph"), final)
        return final

    def discard(self, fields: Mapping[str, object]) -> None:
        """Remove an entry that could not be loaded (it is rebuilt on next use)."""
        final = self.entry(fields)
        with FileLock(str(final) + ".lock", timeout=LOCK_TIMEOUT_S):
            shutil.rmtree(final, ignore_errors=True)
