"""Naming stage on a fake index: candidates, scores, shown names."""
from __future__ import annotations

import numpy as np
import pytest

from database_tools.index import SearchHit
from tag_backend.stages.naming import display_name, name_segments


class _Index:
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def search(self, queries, k, return_vectors=False):
        return [[SearchHit(i, t, "concept", 0.5) for i, t in enumerate(self.texts[:k])] for _ in queries]


class _Encoder:
    """Text embeddings chosen per text, so the scores are known."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts):
        return np.array([self.table[t] for t in texts], dtype=np.float32)


@pytest.mark.parametrize("text, shown", [
    ("bat (animal)", "bat"), ("apse (indoor)", "apse"), ("car", "car"),
    ("leaning tower of pisa", "leaning tower of pisa"), ("(other)", "(other)"), ("a (b) c", "a (b) c"),
])
def test_display_name_drops_a_trailing_qualifier(text, shown):
    assert display_name(text) == shown


def test_qualified_variants_become_one_candidate_with_the_best_score():
    texts = ["car (automobile)", "car", "bat (animal)", "bus"]
    encoder = _Encoder({"car (automobile)": [0.9, 0.1], "car": [0.8, 0.2], "bat (animal)": [0.1, 0.9],
                        "bus": [0.5, 0.5]})
    names = name_segments(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), _Index(texts), encoder,
                          max_alternatives=5)
    first = [(c.name, round(c.score, 3)) for c in names[0].candidates]
    assert first == [("car", 0.9), ("bus", 0.5), ("bat", 0.1)]  # "car" once, with its best score
    assert names[1].candidates[0].name == "bat"
    assert names[0].sources == texts  # provenance keeps the database texts
    limited = name_segments(np.array([[1.0, 0.0]], np.float32), _Index(texts), encoder, max_alternatives=1)
    assert [c.name for c in limited[0].candidates] == ["car", "bus"]


class _IndexWithVectors:
    """Hits carry their stored vectors, as ConceptIndex.search(return_vectors=True) gives them."""

    def __init__(self, hits: list[SearchHit]) -> None:
        self.hits = hits

    def search(self, queries, k, return_vectors=False):
        assert return_vectors
        return [self.hits[:k] for _ in queries]


def test_concepts_use_their_index_vectors_and_only_caption_words_are_encoded():
    hits = [SearchHit(1, "dog", "concept", 0.9, np.array([1.5, 0.0], np.float32)),  # not unit
            SearchHit(2, "cat", "concept", 0.8, np.array([0.0, 1.0], np.float32)),
            SearchHit(3, "a wooden boat. a wooden boat on a lake", "caption", 0.7,
                      np.array([0.6, 0.8], np.float32))]
    asked: list[list[str]] = []

    class Encoder(_Encoder):
        def encode(self, texts):
            asked.append(list(texts))
            return super().encode(texts)

    encoder = Encoder({"wooden": [0.6, 0.8], "boat": [0.8, 0.6]})
    names = name_segments(np.array([[1.0, 0.0]], np.float32), _IndexWithVectors(hits), encoder)
    assert asked == [["wooden", "boat"]]  # the concepts were never encoded
    scores = {c.name: round(c.score, 3) for c in names[0].candidates}
    assert scores == {"dog": 1.0, "boat": 0.8, "wooden": 0.6, "cat": 0.0}  # "dog" renormalised
