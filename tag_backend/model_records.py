"""What a loaded backbone looked like, keyed by its checkpoint, so a later process can skip building it.

A process whose backbone forwards run on compiled graphs (OpenVINO, ONNX Runtime) needs the torch
models only to export a graph the first time, or to encode a text the concept store has not
embedded yet. Everything else it needs from a model (patch size, normalisation, CLIP's encoder
id and temperature) is written here by the process that built it, with the size and
modification time of every file it was built from. A record is used only while each of those
files is unchanged, and a file that came from the Hugging Face cache still resolves to the same
path (a new revision downloaded under the same name is another file): otherwise the model is
built again, through the same loader, and the record rewritten.

Records are small JSON files, written to a temporary file and renamed, so a reader never sees
half of one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the meaning of a record's fields changes


@dataclass(frozen=True)
class SourceFile:
    """One checkpoint file; ``hub``: (repo id, file name) when it came from the Hugging Face cache."""

    path: str
    hub: tuple[str, str] | None = None


def hub_cached_file(repo: str, filename: str) -> str | None:
    """Path of ``filename`` of ``repo`` in the local Hugging Face cache (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) else None


class ModelRecords:
    """Records under ``root`` (one JSON file per model spec)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: Mapping[str, object]) -> Path:
        digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{digest}.json"

    def get(self, key: Mapping[str, object]) -> dict | None:
        """The recorded fields of ``key`` when every source file is unchanged, else None."""
        path = self._path(key)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable model record %s: %s", path, exc)
            return None
        if record.get("format") != FORMAT or record.get("key") != dict(key):
            return None
        for entry in record.get("files") or [None]:
            if not entry or not _unchanged(entry):
                return None
        return record["fields"]

    def put(self, key: Mapping[str, object], files: Sequence[SourceFile], fields: Mapping[str, object]) -> None:
        """Record ``fields`` for ``key``, with the current state of ``files``. Best effort: a
        record that cannot be written only means the next process builds the model again."""
        try:
            entries = [_describe(f) for f in files]
            text = json.dumps({"format": FORMAT, "key": dict(key), "files": entries, "fields": dict(fields)},
                              indent=1, sort_keys=True)
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.root)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(tmp, self._path(key))
        except OSError as exc:
            logger.warning("could not record the loaded model in %s: %s", self.root, exc)


def _describe(source: SourceFile) -> dict:
    stat = os.stat(source.path)
    return {"path": source.path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "hub": list(source.hub) if source.hub else None}


def _unchanged(entry: dict) -> bool:
    hub = entry.get("hub")
    if hub and hub_cached_file(*hub) != entry["path"]:
        return False
    try:
        stat = os.stat(entry["path"])
    except OSError:
        return False
    return stat.st_size == entry["size"] and stat.st_mtime_ns == entry["mtime_ns"]
