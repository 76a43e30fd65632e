"""CachedTextEncoder: encodes each (encoder, text) once, never mixes encoders."""
from __future__ import annotations

import numpy as np
import pytest

from database_tools.embedding import CachedTextEncoder
from database_tools.store import Store


def test_cache_hits_across_instances_and_reopen(store, encoder):
    cached = CachedTextEncoder(store, encoder, batch_size=2)
    first = cached.encode(["dog", "cat", "dog", "bird"])
    assert first.shape == (4, 16) and first.dtype == np.float32
    assert encoder.texts_encoded == 3 and encoder.calls == 2  # batches of 2 unique misses
    np.testing.assert_allclose(first, encoder.encode(["dog", "cat", "dog", "bird"]))
    encoder.texts_encoded = 0
    again = CachedTextEncoder(Store(store.url), encoder).encode(["bird", "dog", "fish"])
    assert encoder.texts_encoded == 1  # only "fish" was new
    np.testing.assert_array_equal(again[0], first[3])


def test_encoders_never_mix(store, make_encoder):
    a, b = make_encoder(encoder_id="enc/a"), make_encoder(encoder_id="enc/b")
    CachedTextEncoder(store, a).encode(["dog"])
    CachedTextEncoder(store, b).encode(["dog"])
    assert a.texts_encoded == 1 and b.texts_encoded == 1


def test_bad_encoder_output_is_refused(store, make_encoder):
    class Broken(make_encoder):
        def encode(self, texts):
            return np.zeros((len(texts), 3), dtype=np.float32)

    with pytest.raises(ValueError, match="returned shape"):
        CachedTextEncoder(store, Broken()).encode(["dog"])
    assert CachedTextEncoder(store, make_encoder()).encode([]).shape == (0, 16)
