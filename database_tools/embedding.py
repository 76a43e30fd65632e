"""Text encoding with a persistent per-(encoder id, text) cache in the store.

Re-imports and index rebuilds never encode the same text twice with the same encoder; vectors
of different encoders live under different ``encoder_id`` keys and never mix.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from sqlalchemy import select
from tqdm.auto import tqdm

from .normalize import text_hash
from .schema import TextEmbedding
from .sql import chunks, insert_text_embeddings, vector_bytes

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger(__name__)


@runtime_checkable
class TextEncoder(Protocol):
    """Shared protocol (docs/ARCHITECTURE.md): L2-normalised float32 text vectors."""

    encoder_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class CachedTextEncoder:
    """A :class:`TextEncoder` that looks texts up in the store before encoding them.

    :param store: the store holding the ``text_embeddings`` cache.
    :param encoder: the real encoder; only texts missing from the cache reach it.
    :param batch_size: texts per encoder call (bounds memory and GPU batch size).
    :param progress: show a tqdm bar while encoding cache misses.
    """

    def __init__(
        self, store: Store, encoder: TextEncoder, *, batch_size: int = 256, progress: bool = False
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.store = store
        self.encoder = encoder
        self.encoder_id = encoder.encoder_id
        self.dim = int(encoder.dim)
        self.batch_size = batch_size
        self.progress = progress

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of ``texts`` (missing ones absent from the result)."""
        by_hash = {text_hash(t): t for t in texts}
        found: dict[str, np.ndarray] = {}
        with self.store.read() as session:
            for part in chunks(list(by_hash)):
                rows = session.execute(
                    select(TextEmbedding.text_hash, TextEmbedding.dim, TextEmbedding.vector).where(
                        TextEmbedding.encoder_id == self.encoder_id,
                        TextEmbedding.text_hash.in_(part),
                    )
                )
                for digest, dim, blob in rows:
                    if int(dim) == self.dim:
                        found[by_hash[digest]] = np.frombuffer(blob, dtype="<f4")
        return found

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, dim)`` float32 vectors of ``texts``, encoding and caching only the misses."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        cached = self.lookup(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in cached))
        bar = tqdm(total=len(missing), desc="encoding", unit="text", disable=not self.progress)
        with bar:
            for part in chunks(missing, self.batch_size):
                cached.update(self._encode_and_store(list(part)))
                bar.update(len(part))
        return np.stack([cached[t] for t in texts]).astype(np.float32, copy=False)

    def _encode_and_store(self, texts: list[str]) -> dict[str, np.ndarray]:
        vectors = np.asarray(self.encoder.encode(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(
                f"encoder {self.encoder_id!r} returned shape {vectors.shape}, "
                f"expected ({len(texts)}, {self.dim})"
            )
        rows = []
        for text, vec in zip(texts, vectors):
            blob, dim = vector_bytes(vec)
            rows.append((text_hash(text), text, blob, dim))
        with self.store.write() as txn:
            insert_text_embeddings(txn.session, self.encoder_id, rows)
        return dict(zip(texts, vectors))
