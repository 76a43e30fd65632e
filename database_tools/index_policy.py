"""Which faiss index to build for a given size, and how to tune its search parameters.

Shared by :mod:`database_tools.index_build` and the benchmark ``benchmarks.index``, so the
benchmark measures exactly what ``build_index`` would build. Policy (docs/concept-database.md):

* fewer than :data:`EXACT_LIMIT` entries: exact search, ``IDMap2,Flat`` (inner product on
  L2-normalised vectors = cosine), recall 1.0. Its cost is a full pass over the vectors per query
  batch (1M x 768 float32 = 3 GB, memory-mapped); see the benchmark table in
  README.md ("Concept index") before raising the limit.
* from :data:`EXACT_LIMIT` on: ``IVF<nlist>_HNSW32,PQ<d/2>x4fs,Refine(SQ8)`` wrapped in an
  ``IDMap2`` — an inverted file whose coarse quantizer is an HNSW graph (adding 10M vectors to a
  flat quantizer costs n x nlist x d), candidates scored with 4-bit fast-scan product
  quantisation (SIMD, d/4 bytes per vector) and the best ``k_factor * k`` re-ranked with 8-bit
  scalar codes (1 byte/dim): ~0.96 bytes per dimension in all (9.6 GB at 10M x 768 instead of
  30 GB). An earlier ``IVF,SQ8`` policy scanned every probed vector at 8 bits and needed ~3 ms
  per query at 1M; fast-scan + re-ranking reached recall@10 0.97 at 0.1-0.3 ms on a 200k
  clustered sample. ``nlist`` ~ 4 sqrt(n) (power of two), trained on a sample of at most
  :data:`TRAIN_PER_LIST` points per list; ``nprobe`` is then tuned to the smallest value
  reaching recall@10 >= :data:`TUNING_RECALL` (0.96: a margin above the 0.95 target) against
  exact search, and stored in the manifest with ``k_factor``.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import faiss
import numpy as np

logger = logging.getLogger(__name__)

EXACT_LIMIT = 250_000
REFINE_K_FACTORS = (10, 20, 50, 100, 200)
TRAIN_PER_LIST = 64
TARGET_RECALL = 0.95
#: nprobe is tuned to this recall on the tuning sample, leaving a margin above TARGET_RECALL
#: for queries unlike the sample.
TUNING_RECALL = 0.96
NPROBE_CANDIDATES = (4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TUNING_QUERIES = 256
RECALL_K = 10


@dataclass(frozen=True)
class IndexPlan:
    """What to build: faiss factory string, whether it needs training and on how many points."""

    factory: str
    exact: bool
    nlist: int = 0
    train_size: int = 0

    @property
    def needs_training(self) -> bool:
        return not self.exact


@dataclass
class SearchTuning:
    """Search parameters chosen for an approximate index and the recall they reached."""

    params: dict[str, int] = field(default_factory=dict)
    recall: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)


def _nlist_for(n: int) -> int:
    """Power of two closest to 4 sqrt(n), clamped to [256, 65536]."""
    target = 4.0 * math.sqrt(max(n, 1))
    return int(min(65536, max(256, 2 ** round(math.log2(target)))))


def plan_index(n: int, dim: int, factory: str | None = None) -> IndexPlan:
    """The index for ``n`` vectors of ``dim`` dimensions (``factory`` overrides the policy)."""
    if n <= 0 or dim <= 0:
        raise ValueError(f"need n > 0 and dim > 0, got n={n}, dim={dim}")
    if factory is None:
        if n < EXACT_LIMIT:
            return IndexPlan("IDMap2,Flat", exact=True)
        nlist = _nlist_for(n)
        factory = f"IVF{nlist}_HNSW32,PQ{max(1, dim // 2)}x4fs,Refine(SQ8)"
    exact = "IVF" not in factory and "HNSW" not in factory and "PQ" not in factory
    match = re.search(r"IVF(\d+)", factory)
    nlist = int(match.group(1)) if match else 0
    train_size = min(n, TRAIN_PER_LIST * nlist) if nlist else min(n, 100_000)
    return IndexPlan(factory, exact=exact, nlist=nlist, train_size=0 if exact else train_size)


def make_index(plan: IndexPlan, dim: int) -> faiss.Index:
    """An empty index for ``plan`` that accepts ``add_with_ids`` and ``reconstruct`` by id."""
    try:
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"bad faiss factory string {plan.factory!r}: {exc}") from None
    ivf = _ivf_or_none(index)
    refine = "Refine" in plan.factory
    if ivf is not None:
        if not refine:
            # Hashtable direct map: reconstruct(id) for near-duplicate grouping and remove_ids.
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        # k-means assignment through an HNSW graph: a flat pass costs n_train x nlist x dim.
        ivf.clustering_index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = TRAIN_PER_LIST
        ivf.cp.niter = 10
    if refine:
        faiss.downcast_index(index).k_factor = REFINE_K_FACTORS[0]  # tuning sets the real one
        # ids and reconstruct(id) (via the SQ8 refine codes) come from the IDMap2 wrapper
        index = faiss.IndexIDMap2(index)
    elif ivf is None and not plan.factory.startswith("IDMap"):
        index = faiss.IndexIDMap2(index)
    return index


def _ivf_or_none(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def apply_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set ``nprobe`` / ``quantizer_efSearch`` / ``efSearch`` on an index (no-op when empty)."""
    ivf = _ivf_or_none(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])
        quantizer = faiss.downcast_index(ivf.quantizer)
        if "quantizer_efSearch" in params and hasattr(quantizer, "hnsw"):
            quantizer.hnsw.efSearch = int(params["quantizer_efSearch"])
    if "k_factor" in params:
        inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        if hasattr(inner, "k_factor"):
            inner.k_factor = float(params["k_factor"])
    if "efSearch" in params:
        inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(params["efSearch"])


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean fraction of the exact top-k ids that the approximate top-k found."""
    pairs = zip(found, truth, strict=True)
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in pairs]
    denom = sum(min(k, int((t[:k] >= 0).sum())) for t in truth)
    return float(sum(hits) / max(denom, 1))


def _has_refine(index: faiss.Index) -> bool:
    return hasattr(index, "index") and hasattr(faiss.downcast_index(index.index), "k_factor")


def tune_search(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float = TUNING_RECALL
) -> SearchTuning:
    """Smallest ``nprobe`` (then smallest re-ranking ``k_factor``) whose recall@10 reaches ``target``.

    With re-ranking the recall plateau is set by ``k_factor`` (how many fast-scan candidates are
    re-scored), not by ``nprobe``: nprobe is tuned at the largest k_factor, then k_factor lowered.
    """
    ivf = _ivf_or_none(index)
    if ivf is None:
        return SearchTuning()
    factors = REFINE_K_FACTORS if _has_refine(index) else (None,)
    tuning = SearchTuning()

    def measure(nprobe: int, k_factor: float | None) -> tuple[dict, float]:
        params = {"nprobe": nprobe, "quantizer_efSearch": max(64, 2 * nprobe)}
        if k_factor is not None:
            params["k_factor"] = k_factor
        apply_search_params(index, params)
        _, found = index.search(queries, RECALL_K)
        return params, recall_at_k(found, truth)

    for nprobe in NPROBE_CANDIDATES:
        if nprobe > ivf.nlist:
            break
        params, recall = measure(nprobe, factors[-1])
        tuning.curve.append((nprobe, recall))
        tuning.params, tuning.recall = params, recall
        if recall >= target:
            break
    if tuning.recall is not None and tuning.recall >= target and len(factors) > 1:
        for k_factor in factors[:-1]:  # cheaper re-ranking if it still reaches the target
            params, recall = measure(tuning.params["nprobe"], k_factor)
            if recall >= target:
                tuning.params, tuning.recall = params, recall
                break
    if tuning.recall is not None and tuning.recall < target:
        logger.warning("recall@10 %.3f < %.2f at the largest nprobe tried", tuning.recall, target)
    apply_search_params(index, tuning.params)
    return tuning


class ExactTopK:
    """Exact top-k of fixed queries, accumulated over streamed database chunks (ground truth).

    Lets an approximate build measure its recall without holding every raw vector in memory.
    """

    def __init__(self, queries: np.ndarray, k: int = RECALL_K) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self._heap = faiss.ResultHeap(len(self.queries), k, keep_max=True)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Merge one chunk (``vectors`` with their ``ids``) into the running top-k."""
        flat = faiss.IndexFlatIP(self.queries.shape[1])
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        scores, rows = flat.search(self.queries, min(self.k, len(vectors)))
        mapped = np.where(rows >= 0, np.asarray(ids, dtype=np.int64)[rows], -1)
        if scores.shape[1] < self.k:
            pad = self.k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            mapped = np.pad(mapped, ((0, 0), (0, pad)), constant_values=-1)
        self._heap.add_result(scores, mapped)

    def result(self) -> np.ndarray:
        """``(n_queries, k)`` int64 ids of the exact nearest neighbours."""
        self._heap.finalize()
        return self._heap.I
