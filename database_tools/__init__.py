"""Concept/caption database of the TAG backend: store, importers, corrections, index, CLI.

Import the submodules directly (``from database_tools.store import Store``); the names below
are re-exported lazily so ``import database_tools`` stays cheap.
"""
from __future__ import annotations

from typing import Any

__all__ = ["CachedTextEncoder", "Store", "StoreUnavailable", "record_annotation"]

_LAZY = {
    "Store": ("database_tools.store", "Store"),
    "StoreUnavailable": ("database_tools.errors", "StoreUnavailable"),
    "CachedTextEncoder": ("database_tools.embedding", "CachedTextEncoder"),
    "record_annotation": ("database_tools.corrections", "record_annotation"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'database_tools' has no attribute {name!r}")
