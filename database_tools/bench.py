"""Benchmark of the concept-index policy on synthetic clustered embeddings.

    python -m database_tools.bench --n 1000000 [--n 10000000] [--dim 768] [--queries 1000]

Builds, for each ``--n``, exactly the index :func:`database_tools.index.build_index` would build
for that size (shared :func:`~database_tools.index_policy.plan_index`, :func:`make_index`,
:func:`tune_search`), from vectors generated chunk by chunk (10M x 768 float32 is 30 GB: never
held at once). Prints build time, peak RSS, batched / single-query latency and recall@10 against
exact search (ground truth computed with flat inner product on a query subset while adding;
``nprobe`` is tuned on one half of that subset and recall reported on the other half).

Uniform random vectors say nothing about recall on real embeddings (PERFORMANCE.md), so the data
mimic text embeddings: a two-level mixture of Gaussian clusters on the unit sphere (super-topics,
a few thousand topic centres with log-normal sizes and varying spread), L2-normalised.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from .index_policy import ExactTopK, make_index, plan_index, recall_at_k, tune_search

logger = logging.getLogger(__name__)

BANK = 1 << 15


class ClusteredEmbeddings:
    """Seeded generator of clustered unit vectors; chunk ``i`` is the same on every call.

    :param centres: number of topic centres (clusters); sizes log-normal, spreads 0.6-1.3.
    """

    def __init__(self, dim: int, centres: int = 3000, seed: int = 0) -> None:
        if dim <= 0 or centres <= 0:
            raise ValueError("dim and centres must be positive")
        rng = np.random.default_rng(seed)
        supers = _unit(rng.standard_normal((max(8, centres // 50), dim), dtype=np.float32))
        parent = rng.integers(0, len(supers), centres)
        spread = rng.standard_normal((centres, dim), dtype=np.float32) / np.sqrt(dim)
        common = _unit(rng.standard_normal((1, dim), dtype=np.float32))  # shared cone direction
        self.centres = _unit(0.5 * common + supers[parent] + 0.9 * spread)
        weights = rng.lognormal(0.0, 1.0, centres)
        self.weights = weights / weights.sum()
        self.scale = rng.uniform(0.6, 1.3, centres).astype(np.float32)
        self.bank_a = rng.standard_normal((BANK, dim), dtype=np.float32) / np.sqrt(dim)
        self.bank_b = rng.standard_normal((BANK, dim), dtype=np.float32) / np.sqrt(dim)
        self.dim, self.seed = dim, seed

    def chunk(self, stream: int, size: int, part: int = 0) -> np.ndarray:
        """``(size, dim)`` float32 unit vectors of chunk ``stream`` of ``part`` (deterministic).

        ``part`` separates the database (0), queries (1) and the training draw (2).
        """
        rng = np.random.default_rng([self.seed, part, stream])
        labels = rng.choice(len(self.centres), size=size, p=self.weights)
        noise = self.bank_a[rng.integers(0, BANK, size)]
        noise += self.bank_b[rng.integers(0, BANK, size)]
        noise *= (self.scale[labels] / np.sqrt(2.0))[:, None]
        noise += self.centres[labels]
        return _unit(noise)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


@dataclass
class BenchResult:
    """One benchmark row (times in seconds unless the name says ms)."""

    n: int
    dim: int
    factory: str
    search_params: dict
    train_s: float
    add_s: float
    build_s: float
    peak_rss_gb: float
    batched_ms_per_query: float
    single_ms_per_query: float
    recall_at_10: float
    queries: int
    gt_queries: int
    threads: int


def run(n: int, dim: int, queries: int, gt_queries: int, chunk: int = 100_000,
        factory: str | None = None, centres: int = 3000, seed: int = 0) -> BenchResult:
    """Build the policy index for ``n`` synthetic vectors and measure it."""
    data = ClusteredEmbeddings(dim, centres, seed)
    query_vecs = data.chunk(0, queries, part=1)  # never part of the database
    plan = plan_index(n, dim, factory)
    print(f"[n={n:,} dim={dim}] plan: {plan.factory} (train on {plan.train_size:,})", flush=True)
    start = time.perf_counter()
    index = make_index(plan, dim)
    if plan.needs_training:
        index.train(np.concatenate([data.chunk(i, min(chunk, plan.train_size - i * chunk), 2)
                                    for i in range(-(-plan.train_size // chunk))]))
    train_s = time.perf_counter() - start
    truth = ExactTopK(query_vecs[:gt_queries])
    gt_s = _add_chunks(index, data, n, chunk, truth)
    add_s = time.perf_counter() - start - train_s - gt_s
    gt, half = truth.result(), max(1, len(truth.queries) // 2)
    tuning = tune_search(index, truth.queries[:half], gt[:half])  # tune on one half,
    build_s = train_s + add_s
    batched = _timed(lambda: index.search(query_vecs, 10)) / queries * 1000
    singles = query_vecs[: min(queries, 200 if plan.needs_training else 20)]
    single = _timed(lambda: [index.search(q[None], 10) for q in singles]) / len(singles) * 1000
    held_out = truth.queries[half:] if len(truth.queries) > 1 else truth.queries
    _, found = index.search(held_out, 10)  # report recall on the other half
    recall = recall_at_k(found, gt[half:] if len(truth.queries) > 1 else gt)
    return BenchResult(n, dim, plan.factory, tuning.params, round(train_s, 1), round(add_s, 1),
                       round(build_s, 1), round(peak_rss_gb(), 2), round(batched, 3),
                       round(single, 3), round(recall, 4), queries, len(held_out),
                       faiss.omp_get_max_threads())


def _add_chunks(index: faiss.Index, data: ClusteredEmbeddings, n: int, chunk: int,
                truth: ExactTopK) -> float:
    """Add ``n`` vectors chunk by chunk; returns the seconds spent on ground truth."""
    gt_s, done, report = 0.0, 0, time.perf_counter()
    for stream, lo in enumerate(range(0, n, chunk)):
        vectors = data.chunk(stream, min(chunk, n - lo))
        ids = np.arange(lo, lo + len(vectors), dtype=np.int64)
        index.add_with_ids(vectors, ids)
        t0 = time.perf_counter()
        truth.add(vectors, ids)
        gt_s += time.perf_counter() - t0
        done += len(vectors)
        if time.perf_counter() - report > 30:
            print(f"  added {done:,}/{n:,}", flush=True)
            report = time.perf_counter()
    return gt_s


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def format_table(results: list[BenchResult]) -> str:
    """Markdown table of results (pasted into README.md ("Concept index"))."""
    head = ("| n | dim | index | search params | build (train+add) | peak RSS | batched / query "
            "| single query | recall@10 |\n|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {r.n:,} | {r.dim} | `{r.factory}` | {r.search_params or '-'} | {r.build_s:.0f} s "
            f"({r.train_s:.0f}+{r.add_s:.0f}) | {r.peak_rss_gb:.1f} GB | "
            f"{r.batched_ms_per_query:.2f} ms | {r.single_ms_per_query:.2f} ms | "
            f"{r.recall_at_10:.3f} |" for r in results]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one benchmark per ``--n``, print the table (and JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="entries (repeatable)")
    parser.add_argument("--dim", type=int, default=768, help="768 = ViT-L/14, 512 = ViT-B")
    parser.add_argument("--queries", type=int, default=1000, help="queries for latency")
    parser.add_argument("--gt-queries", type=int, default=200, help="queries with exact truth")
    parser.add_argument("--chunk", type=int, default=100_000, help="vectors generated at once")
    parser.add_argument("--centres", type=int, default=3000, help="cluster centres")
    parser.add_argument("--factory", default=None, help="override the size policy")
    parser.add_argument("--json", default=None, help="also write results to this JSON file")
    args = parser.parse_args(argv)
    sizes = args.n or [1_000_000]
    if any(n <= 0 for n in sizes) or args.queries <= 0 or args.gt_queries <= 0:
        parser.error("--n, --queries and --gt-queries must be positive")
    faiss.cvar.distance_compute_blas_threshold = 2  # as ConceptIndex.open
    results = []
    for n in sizes:
        results.append(run(n, args.dim, args.queries, min(args.gt_queries, args.queries),
                           args.chunk, args.factory, args.centres))
        print(json.dumps(asdict(results[-1])), flush=True)
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(r) for r in results], handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
