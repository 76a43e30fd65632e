"""Text normalisation: the key that makes entries unique per kind.

Two spellings that only differ in case, Unicode form or whitespace are the same concept or
caption; normalising once here keeps imports, corrections and curation consistent.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

_WS = re.compile(r"\s+")
_CONCEPT_STRIP = " \t\"'`.,;:!?"

KINDS = ("caption", "concept")


def clean_text(text: str) -> str:
    """Display form: Unicode NFKC, control characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return _WS.sub(" ", text).strip()


def normalize_text(text: str, kind: str = "concept") -> str:
    """Uniqueness key: the cleaned text, case-folded; concepts also lose edge punctuation."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    norm = clean_text(text).casefold()
    if kind == "concept":
        norm = norm.strip(_CONCEPT_STRIP)
    return norm


def display_text(text: str, kind: str) -> str:
    """The text stored and encoded: concepts in normalised (lower-case) form, captions as written."""
    return normalize_text(text, kind) if kind == "concept" else clean_text(text)


def count_texts(texts: Iterable[str], kind: str) -> dict[str, tuple[str, int]]:
    """Normalised text -> (shown text of its first occurrence, occurrences); empty texts dropped.

    The row shape :func:`database_tools.sql.upsert_entries` takes.
    """
    rows: dict[str, tuple[str, int]] = {}
    for text in texts:
        norm = normalize_text(text, kind) if text else ""
        if norm:
            shown, count = rows.get(norm, (display_text(text, kind), 0))
            rows[norm] = (shown, count + 1)
    return rows


def text_hash(text: str) -> str:
    """Stable key of an exact text for the embedding cache (sha256 hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
