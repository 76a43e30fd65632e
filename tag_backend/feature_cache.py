"""A bounded, thread-safe LRU of per-image backbone features, sized in bytes.

The backbone forwards are most of an image's cost; what follows them (k-means, CRF, pooling,
naming) is cheap. Keeping the features of recently seen images lets a second request on the
same image (an interactive click, a re-prediction after a correction) skip the forwards.
Entries are evicted least-recently-used first once ``max_bytes`` would be exceeded; an entry
larger than the whole budget is not kept. ``functools.lru_cache`` counts entries, not bytes,
and a feature map's size varies with the model, hence this small class.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

from PIL import Image

from .types import ImageFeatures

logger = logging.getLogger(__name__)


def image_digest(image: Image.Image) -> str:
    """Content hash of a decoded image (mode, size and pixels; not the file's bytes)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr((image.mode, image.size)).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class FeatureCache:
    """``key -> ImageFeatures``, least recently used evicted first, at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, ImageFeatures] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ImageFeatures | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: str, features: ImageFeatures) -> None:
        size = features.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = features
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries
