"""Retrieval and naming: segment embeddings -> candidate names -> best name by CLIP cosine.

Caption entries are turned into words with TAG's extraction (top-``k`` retrieved captions,
near-duplicates with inner product > ``dedup_threshold`` grouped and only the first kept);
concept entries (multi-word names such as "golden retriever") are candidates directly. All
candidates are scored by cosine with the segment embedding (CLIP text embeddings with no prompt,
as in TAG) and the best wins. A concept's embedding is the vector its index entry holds (the
search returns it anyway, for the near-duplicate grouping), so only words extracted from
captions are encoded here.

Shown names drop a trailing parenthesised qualifier ("bat (animal)" -> "bat", "apse (indoor)" ->
"apse"; 255 of the default vocabulary's concepts carry one, from LVIS, SUN397, ...): the full text
is still what gets embedded and scored (the qualifier disambiguates), but annotators see the
plain name. Within one segment, texts with the same shown name are one candidate (the best
scoring one, keeping its concept id): the annotator could not tell them apart. Across segments
names keep their identity (concept id), so two segments named "bat (animal)" and "bat (club)"
are not merged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from ..text.words import extract_words
from ..types import NameCandidate


@dataclass
class SegmentNames:
    """Candidates for one segment, best first, and the database texts they came from.

    ``confidence``: the probability that the first candidate is right, set by the pipeline
    once exemplar and alias evidence are known (:mod:`tag_backend.stages.confidence`).
    """

    candidates: list[NameCandidate]
    sources: list[str]
    confidence: float = 0.0


#: The name of a segment for which retrieval found no candidate at all.
FALLBACK_NAME = "object"

_QUALIFIER = re.compile(r"\s*\([^()]*\)\s*$")


def display_name(text: str) -> str:
    """A candidate's shown name: ``text`` without a trailing "(qualifier)"."""
    return _QUALIFIER.sub("", text) or text


def dedup_hits(hits: list, threshold: float) -> list:
    """Group hits whose vectors have inner product > threshold; keep the first of each group."""
    if len(hits) < 2 or hits[0].vector is None:
        return hits
    vectors = np.stack([h.vector for h in hits]).astype(np.float32)
    adjacency = csr_matrix((vectors @ vectors.T) > threshold)
    _, group = connected_components(adjacency, directed=False)
    seen: set[int] = set()
    kept = []
    for hit, g in zip(hits, group):
        if g not in seen:
            seen.add(int(g))
            kept.append(hit)
    return kept


def concept_ids(hits: list) -> dict[str, int]:
    """Database text -> entry id of the concept hits (caption words have no id)."""
    return {h.text: int(h.entry_id) for h in hits if h.kind == "concept"}


def candidate_names(hits: list, *, min_word_count: int, pos_filter: bool, use_captions: bool = True) -> list[str]:
    concepts = [h.text for h in hits if h.kind == "concept"]
    captions = [h.text for h in hits if h.kind == "caption"]
    names = list(concepts)
    if captions and use_captions:
        names += extract_words(captions, min_count=min_word_count, pos_filter=pos_filter)
    return list(dict.fromkeys(n for n in names if n)) or [FALLBACK_NAME]


def candidate_vectors(per_segment: list[tuple[list, list[str]]], text_encoder
                      ) -> dict[str, np.ndarray]:
    """Unit text vector of every candidate name: concepts from their index hits (an 8-bit index
    decodes them approximately, hence the renormalisation), the other words encoded in one call."""
    vectors = {h.text: h.vector for hits, _ in per_segment for h in hits
               if h.kind == "concept" and h.vector is not None}
    for text, vector in vectors.items():
        vectors[text] = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
    words = list(dict.fromkeys(n for _, names in per_segment for n in names if n not in vectors))
    if words:
        vectors.update(zip(words, np.asarray(text_encoder.encode(words), dtype=np.float32)))
    return vectors


def name_segments(embeddings: np.ndarray, index, text_encoder, *, top_k: int = 10,
                  dedup_threshold: float = 0.94, min_word_count: int = 2, pos_filter: bool = True,
                  max_alternatives: int = 5) -> list[SegmentNames]:
    """embeddings: (K, D) L2-normalised float32. One batched index search for all segments."""
    results = index.search(embeddings.astype(np.float32), top_k, return_vectors=True)
    per_segment = []
    for hits in results:
        hits = dedup_hits(list(hits), dedup_threshold)
        per_segment.append((hits, candidate_names(hits, min_word_count=min_word_count, pos_filter=pos_filter)))
    vectors = candidate_vectors(per_segment, text_encoder)
    out = []
    for emb, (hits, names) in zip(embeddings, per_segment):
        scores = np.stack([vectors[n] for n in names]) @ emb
        ids = concept_ids(hits)
        best: dict[str, NameCandidate] = {}  # shown name -> its best text, best first
        for i in np.argsort(-scores, kind="stable"):
            shown = display_name(names[i])
            if shown not in best:
                best[shown] = NameCandidate(shown, float(scores[i]), ids.get(names[i]), names[i])
            if len(best) > max_alternatives:
                break
        out.append(SegmentNames(candidates=list(best.values()), sources=[h.text for h in hits]))
    return out
