"""A bounded, thread-safe in-process cache in front of any ``TextEncoder``."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np


class MemoryCachedEncoder:
    """Caches embeddings per text (the wrapped encoder's id is part of the identity)."""

    def __init__(self, encoder, max_entries: int = 200_000) -> None:
        self.encoder = encoder
        self.encoder_id = encoder.encoder_id
        self.dim = encoder.dim
        self.max_entries = max_entries
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing: list[str] = []
        with self._lock:
            for i, t in enumerate(texts):
                vec = self._cache.get(t)
                if vec is None:
                    missing.append(t)
                else:
                    self._cache.move_to_end(t)
                    out[i] = vec
        if missing:
            unique = list(dict.fromkeys(missing))
            vectors = dict(zip(unique, self.encoder.encode(unique)))
            with self._lock:
                for t, v in vectors.items():
                    self._cache[t] = v
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
            for i, t in enumerate(texts):
                if t in vectors:
                    out[i] = vectors[t]
        return out
