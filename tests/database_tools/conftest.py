"""Fixtures of the store tests: every store test runs on SQLite and on a real PostgreSQL.

The PostgreSQL server and the ``db_url`` / ``store`` fixtures live in tests/pg_server.py
(shared with the job-engine tests through tests/conftest.py).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pytest

from pg_server import new_pg_database  # noqa: F401  (re-exported for the store tests)

class HashEncoder:
    """Deterministic test text encoder: L2-normalised vectors seeded by the text's sha256.

    Counts encoded texts so tests can prove the embedding cache works.
    """

    def __init__(self, dim: int = 16, encoder_id: str = "test/hash-16") -> None:
        self.dim = dim
        self.encoder_id = encoder_id
        self.calls = 0
        self.texts_encoded = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts_encoded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = vec / np.linalg.norm(vec)
        return out


@pytest.fixture()
def encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture()
def make_encoder():
    """The :class:`HashEncoder` class (tests build encoders with other ids or dims)."""
    return HashEncoder
