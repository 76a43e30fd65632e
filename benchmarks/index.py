"""Benchmark of the concept-index policy on synthetic clustered embeddings.

    python -m benchmarks.index --n 1000000 [--n 10000000] [--dim 768] [--queries 1000]

Builds, for each ``--n``, exactly the index :func:`database_tools.index_build.build_index` would build
for that size (shared :func:`~database_tools.index_policy.plan_index`, :func:`make_index`,
:func:`tune_search`), from vectors generated chunk by chunk (10M x 768 float32 is 30 GB: never
held at once). Prints build time, peak RSS, batched / single-query latency and recall@10 against
exact search (ground truth computed with flat inner product on a query subset while adding;
``nprobe`` is tuned on one half of that subset and recall reported on the other half).

Uniform random vectors say nothing about recall on real embeddings, so the data
mimic text embeddings (:class:`ClusteredEmbeddings`): topics inside super-topics on the unit
sphere, and inside a topic a low-dimensional variation with a decaying spectrum, so that a
caption's nearest neighbours are clearly closer than the rest of its topic. Only the faiss
``train`` / ``add`` calls count as build time; generating the data is reported apart.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from database_tools.index_policy import ExactTopK, make_index, plan_index, recall_at_k, tune_search

logger = logging.getLogger(__name__)


class ClusteredEmbeddings:
    """Seeded generator of clustered unit vectors; chunk ``i`` is the same on every call.

    A vector is ``centre[t] + scale[t] * (variation + residual)``, L2-normalised, for a topic ``t``
    drawn with log-normal topic sizes:

    * topic centres: 3,000 by default, grouped under ``centres // 50`` super-topics around a
      shared cone direction;
    * variation: ``rank`` (64) directions per super-topic with a power-law spectrum (variance of
      direction i proportional to 1/i), i.e. a low intrinsic dimension as text embeddings have, so
      neighbours are local (a query's exact top-10 lie in its own topic and are clearly closer than
      the topic's median member);
    * residual: isotropic, 30% of the variation's scale (uniform per coordinate: its shape does
      not matter after projection and it is several times cheaper to draw than normals).

    An earlier version drew the within-topic noise isotropically in all dimensions from a shared
    bank of noise vectors: a topic's members were then nearly equidistant from a query (no local
    structure: the uniform-noise regime) and the exact neighbours were points in other topics that
    happened to share a bank vector. It made every approximate index look bad (10M x 768:
    recall@10 0.94 at nprobe 512) for a reason no real corpus has.

    :param centres: number of topic centres; ``rank``: directions of variation per super-topic;
        ``residual``: scale of the isotropic part relative to the variation.
    """

    def __init__(self, dim: int, centres: int = 3000, seed: int = 0, rank: int = 64,
                 residual: float = 0.3) -> None:
        if dim <= 0 or centres <= 0 or rank <= 0:
            raise ValueError("dim, centres and rank must be positive")
        rng = np.random.default_rng(seed)
        supers = _unit(rng.standard_normal((max(8, centres // 50), dim), dtype=np.float32))
        self.parent = rng.integers(0, len(supers), centres)
        spread = rng.standard_normal((centres, dim), dtype=np.float32) / np.sqrt(dim)
        common = _unit(rng.standard_normal((1, dim), dtype=np.float32))  # shared cone direction
        self.centres = _unit(0.5 * common + supers[self.parent] + 0.9 * spread)
        weights = rng.lognormal(0.0, 1.0, centres)
        self.weights = weights / weights.sum()
        self.scale = rng.uniform(0.6, 1.3, centres).astype(np.float32)
        spectrum = 1.0 / np.arange(1, rank + 1)
        spectrum = np.sqrt(spectrum / spectrum.sum()).astype(np.float32)
        self.bases = rng.standard_normal((len(supers), rank, dim), dtype=np.float32)
        self.bases *= spectrum[None, :, None] / np.float32(np.sqrt(dim))
        self.dim, self.rank, self.residual, self.seed = dim, rank, residual, seed

    def chunk(self, stream: int, size: int, part: int = 0) -> np.ndarray:
        """``(size, dim)`` float32 unit vectors of chunk ``stream`` of ``part`` (deterministic).

        ``part`` separates the database (0), queries (1) and the training draw (2).
        """
        return self.chunk_with_topics(stream, size, part)[0]

    def chunk_with_topics(self, stream: int, size: int, part: int = 0
                          ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`chunk` and the topic of each vector."""
        rng = np.random.default_rng([self.seed, part, stream])
        topics = rng.choice(len(self.centres), size=size, p=self.weights)
        coefficients = rng.standard_normal((size, self.rank), dtype=np.float32)
        out = rng.random((size, self.dim), dtype=np.float32)
        out -= 0.5
        out *= np.float32(self.residual * np.sqrt(12.0 / self.dim))  # unit-variance uniform
        supers = self.parent[topics]
        order = np.argsort(supers, kind="stable")
        bounds = np.searchsorted(supers[order], np.arange(len(self.bases) + 1))
        for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if hi > lo:
                rows = order[lo:hi]
                out[rows] += coefficients[rows] @ self.bases[s]
        out *= self.scale[topics][:, None]
        out += self.centres[topics]
        return _unit(out), topics


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
    generate_s: float
    peak_rss_gb: float
    batched_ms_per_query: float
    single_ms_per_query: float
    recall_at_10: float
    queries: int
    gt_queries: int
    threads: int


def run(n: int, dim: int, queries: int, gt_queries: int, chunk: int = 100_000,
        factory: str | None = None, centres: int = 3000, seed: int = 0) -> BenchResult:
    """Build the policy index for ``n`` synthetic vectors and measure it.

    Build time is the faiss ``train`` + ``add`` calls only: in ``build_index`` the vectors come
    from the store's embedding cache, here from the generator (timed apart as ``generate_s``).
    """
    data = ClusteredEmbeddings(dim, centres, seed)
    query_vecs = data.chunk(0, queries, part=1)  # never part of the database
    plan = plan_index(n, dim, factory)
    print(f"[n={n:,} dim={dim}] plan: {plan.factory} (train on {plan.train_size:,})", flush=True)
    index = make_index(plan, dim)
    clock = _Clock()
    if plan.needs_training:
        with clock("generate"):
            sample = np.concatenate([data.chunk(i, min(chunk, plan.train_size - i * chunk), 2)
                                     for i in range(-(-plan.train_size // chunk))])
        with clock("train"):
            index.train(sample)
        del sample
        print(f"  trained in {clock.seconds['train']:.0f} s", flush=True)
    truth = ExactTopK(query_vecs[:gt_queries])
    _add_chunks(index, data, n, chunk, truth, clock)
    gt, half = truth.result(), max(1, len(truth.queries) // 2)
    tuning = tune_search(index, truth.queries[:half], gt[:half])  # tune on one half,
    batched = _timed(lambda: index.search(query_vecs, 10)) / queries * 1000
    singles = query_vecs[: min(queries, 200 if plan.needs_training else 20)]
    single = _timed(lambda: [index.search(q[None], 10) for q in singles]) / len(singles) * 1000
    held_out = truth.queries[half:] if len(truth.queries) > 1 else truth.queries
    _, found = index.search(held_out, 10)  # report recall on the other half
    recall = recall_at_k(found, gt[half:] if len(truth.queries) > 1 else gt)
    train_s, add_s = clock.seconds["train"], clock.seconds["add"]
    return BenchResult(n, dim, plan.factory, tuning.params, round(train_s, 1), round(add_s, 1),
                       round(train_s + add_s, 1), round(clock.seconds["generate"], 1),
                       round(peak_rss_gb(), 2), round(batched, 3), round(single, 3),
                       round(recall, 4), queries, len(held_out), faiss.omp_get_max_threads())


class _Clock:
    """Accumulates wall time per named phase: ``with clock("add"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"generate": 0.0, "train": 0.0, "add": 0.0}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def _add_chunks(index: faiss.Index, data: ClusteredEmbeddings, n: int, chunk: int,
                truth: ExactTopK, clock: _Clock) -> None:
    """Add ``n`` vectors chunk by chunk, accumulating the exact top-k of the tuning queries."""
    done, report = 0, time.perf_counter()
    for stream, lo in enumerate(range(0, n, chunk)):
        with clock("generate"):
            vectors = data.chunk(stream, min(chunk, n - lo))
        ids = np.arange(lo, lo + len(vectors), dtype=np.int64)
        with clock("add"):
            index.add_with_ids(vectors, ids)
        truth.add(vectors, ids)
        done += len(vectors)
        if time.perf_counter() - report > 30:
            print(f"  added {done:,}/{n:,} ({clock.seconds['add']:.0f} s adding)", flush=True)
            report = time.perf_counter()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def format_table(results: list[BenchResult]) -> str:
    """Markdown table of results (as pasted into the documentation of the concept index)."""
    head = ("| n | dim | index | search params | build (train+add) | data generation | peak RSS "
            "| batched / query | single query | recall@10 |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {r.n:,} | {r.dim} | `{r.factory}` | {r.search_params or '-'} | {r.build_s:.0f} s "
            f"({r.train_s:.0f}+{r.add_s:.0f}) | {r.generate_s:.0f} s | {r.peak_rss_gb:.1f} GB | "
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
