"""Benchmark of the correction loop at scale: webhook-to-learned latency, base-index rewrites,
RSS, and exemplar lookup.

    python -m benchmarks.learning [--base 1000000] [--annotations 1000] [--new-names 200]
                                  [--exemplars 100000] [--dim 512] [--regions 15]

1. A store with ``--base`` concepts and a base index built from it (default factory
   ``IDMap2,Flat``, memory-mapped; ``--factory policy`` builds what the size policy would, which
   trains and tunes an IVF for minutes: the correction path never touches the base either way). Text vectors come from a
   deterministic synthetic encoder (no CLIP weights here), so text-encoding time of new names is
   *not* part of the latency below (a real CLIP text forward adds a few ms per new name).
2. ``--annotations`` annotations go through the correction path a serving process runs:
   ``record_annotation`` (one renamed region — ``--new-names`` of them to names never seen,
   the rest to existing concepts — and one hand-drawn region, both with region embeddings), then
   the incremental refresh (delta index, exemplar index, aliases). Webhook-to-learned = from
   the call until the next search sees the change; p50/p99 reported. The region embeddings are
   given (their CLIP forward is engine time, measured by the engine benchmark).
3. The base index version directory and file are checked to be untouched (zero rewrites); RSS
   is sampled every quarter of the annotations.
4. An exemplar index with ``--exemplars`` served exemplars (clustered synthetic vectors, 20 per
   concept) is loaded from the store; lookup time for ``--regions`` regions (one image) is
   measured over repeated calls, with recall of the nearest exemplar's concept against exact
   search, and the structure's memory is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from benchmarks.index import ClusteredEmbeddings
from database_tools.corrections import Learning, record_annotation
from database_tools.delta_index import open_live_index
from database_tools.embedding import CachedTextEncoder
from database_tools.exemplar_index import ExemplarIndex, ExemplarLimits
from database_tools.index import ConceptIndex
from database_tools.index_build import build_index
from database_tools.prediction_log import RegionConcept, record_prediction
from database_tools.schema import Entry, Exemplar, Meta
from database_tools.store import Store

ENCODER_ID = "benchmark/synthetic-text"


class SyntheticTextEncoder(CachedTextEncoder):
    """Deterministic text vectors from two hashes of the text (vectorised, no model, no cache).

    Subclasses :class:`CachedTextEncoder` only so ``build_index`` uses it as is instead of
    wrapping it in the store's embedding cache (1M cached vectors would dominate the run).
    """

    def __init__(self, dim: int, bank_size: int = 65_536) -> None:
        self.encoder_id, self.dim = ENCODER_ID, dim
        self.encoder = self
        self.hits = self.misses = 0
        self.bank = ClusteredEmbeddings(dim, seed=7).chunk(0, bank_size, part=3)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        n = len(self.bank)
        a = np.fromiter((zlib.crc32(t.encode()) % n for t in texts), np.int64, len(texts))
        b = np.fromiter((zlib.adler32(t.encode()) % n for t in texts), np.int64, len(texts))
        out = self.bank[a] + 0.5 * self.bank[b]
        faiss.normalize_L2(out)
        return out


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class LearningResult:
    base_entries: int
    dim: int
    factory: str
    base_build_s: float
    annotations: int
    new_names: int
    learned_p50_ms: float
    learned_p99_ms: float
    learned_max_ms: float
    new_name_found: float
    base_rewrites: int
    rss_mb: list[float]
    delta_entries: int
    exemplars: int
    exemplar_structure: str
    exemplar_load_s: float
    exemplar_lookup_ms_p50: float
    exemplar_lookup_ms_p99: float
    exemplar_lookup_cpu_ms_p50: float
    load_average: float
    exemplar_recall: float
    exemplar_memory_mb: float


def _bulk_concepts(store: Store, n: int, chunk: int = 50_000) -> None:
    """``n`` active concepts ``concept <i>`` inserted directly (an import would be slower)."""
    with store.write() as txn:
        seq = txn.seq()
        for start in range(0, n, chunk):
            rows = [{"kind": "concept", "text": f"concept {i}", "norm": f"concept {i}",
                     "status": "active", "support": 0, "source": "benchmark",
                     "updated_seq": seq} for i in range(start, min(n, start + chunk))]
            txn.session.execute(Entry.__table__.insert(), rows)


def _annotation(i: int, renamed: str, drawn: str) -> dict:
    def region(rid: str, name: str) -> list[dict]:
        return [{"id": rid, "type": "brushlabels", "from_name": "tag", "to_name": "image",
                 "value": {"format": "rle", "rle": [0], "brushlabels": ["object"]}},
                {"id": rid, "type": "textarea", "from_name": "name", "to_name": "image",
                 "value": {"text": [name]}}]

    return {"action": "ANNOTATION_CREATED", "project": {"id": 1},
            "annotation": {"id": 100_000 + i, "task": 10_000 + i, "project": 1,
                           "updated_at": "2026-01-01T00:00:00Z",
                           "result": region(f"p{i}", renamed) + region(f"d{i}", drawn)}}


class _Vectors:
    encoder_id = "benchmark/synthetic-image"

    def __init__(self, data: ClusteredEmbeddings, i: int) -> None:
        self.vectors = data.chunk(i, 2, part=4)

    def __call__(self, item) -> np.ndarray:
        return self.vectors[0 if str(item["id"]).startswith("p") else 1]


def run_correction_path(store: Store, base: ConceptIndex, encoder: SyntheticTextEncoder,
                        annotations: int, new_names: int, base_n: int, dim: int):
    """Annotations through record + incremental refresh; returns latencies and checks."""
    live = open_live_index(store, encoder, base)
    exemplars = ExemplarIndex(_Vectors.encoder_id)
    exemplars.refresh(store)
    learning = Learning(ExemplarLimits())
    images = ClusteredEmbeddings(dim, seed=11)
    every = max(1, annotations // max(new_names, 1))
    live.search(encoder.encode(["warm-up"]), 1)  # maps the base's pages once, before RSS samples
    latencies, names, rss = [], [], [rss_mb()]
    rng = np.random.default_rng(3)
    for i in range(annotations):
        new = i % every == 0 and len(names) < new_names
        predicted = int(rng.integers(1, base_n + 1))
        renamed = f"learnt name {i}" if new else f"concept {int(rng.integers(0, base_n))}"
        record_prediction(store, project="1", task=str(10_000 + i), model_version="bench",
                          knowledge_seq=live.seq,
                          regions=[RegionConcept(f"p{i}", predicted, f"concept {predicted - 1}")])
        started = time.perf_counter()
        record_annotation(store, _annotation(i, renamed, f"concept {i % base_n}"),
                          embed_region=_Vectors(images, i), learning=learning)
        upto = store.db_version()
        live.refresh(store, upto)
        exemplars.refresh(store, upto)
        store.load_aliases(min_count=3)
        latencies.append(time.perf_counter() - started)
        if new:
            names.append(renamed)
        if (i + 1) % max(1, annotations // 4) == 0:
            rss.append(rss_mb())
    # a sample of the new names must come back first from base + delta (a flat base scan per
    # query is slow, so not all of them)
    sample = names[:: max(1, len(names) // 10)]
    found = [hit[0].text == name if hit else False
             for name, hit in zip(sample, live.search(encoder.encode(sample), 1))]
    return np.array(latencies) * 1000, found, rss, live, len(names)


def run_exemplar_lookup(store: Store, n: int, dim: int, regions: int, per_concept: int = 20,
                        repeats: int = 200):
    """Load ``n`` served exemplars from the store, then time one image's lookups."""
    data = ClusteredEmbeddings(dim, seed=5)
    with store.write() as txn:
        seq = txn.seq()
        for start in range(0, n, 20_000):
            size = min(20_000, n - start)
            vectors = data.chunk(start // 20_000, size, part=5)
            txn.session.execute(Exemplar.__table__.insert(), [
                {"encoder_id": "benchmark/lookup", "entry_id": 1 + (start + j) // per_concept,
                 "dim": dim, "vector": vectors[j].astype("<f4").tobytes(), "provenance": "{}",
                 "served": True, "removed": False, "served_seq": seq}
                for j in range(size)])
    index = ExemplarIndex("benchmark/lookup")
    started = time.perf_counter()
    index.refresh(store)
    load_s = time.perf_counter() - started
    truth_vectors = np.concatenate([data.chunk(k, min(20_000, n - k * 20_000), part=5)
                                    for k in range((n + 19_999) // 20_000)])
    rng = np.random.default_rng(9)
    times, cpu, hits, total = [], [], 0, 0
    for r in range(repeats):
        picks = rng.integers(0, n, regions)
        queries = truth_vectors[picks] + 0.05 * rng.standard_normal((regions, dim)).astype(
            np.float32)
        faiss.normalize_L2(queries)
        started, started_cpu = time.perf_counter(), time.thread_time()
        matches = index.match(queries, -1.0)
        times.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
        if r < 20:
            exact = (queries @ truth_vectors.T).argmax(1) // per_concept + 1
            hits += sum(m is not None and m.entry_id == e for m, e in zip(matches, exact))
            total += regions
    del truth_vectors
    ms, cpu_ms = np.array(times) * 1000, np.array(cpu) * 1000
    return (index, load_s, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
            float(np.percentile(cpu_ms, 50)), hits / max(total, 1))


def run(base_n: int, annotations: int, new_names: int, exemplars: int, dim: int, regions: int,
        factory: str | None, workdir: Path) -> LearningResult:
    store = Store(f"sqlite:///{workdir / 'bench.db'}")
    encoder = SyntheticTextEncoder(dim)
    _bulk_concepts(store, base_n)
    started = time.perf_counter()
    base = build_index(store, encoder, workdir / "index", progress=True,
                       factory=None if factory == "policy" else factory)
    build_s = time.perf_counter() - started
    index_file = base.path / "index.faiss"
    before = (sorted(p.name for p in (base.path.parent).iterdir()), index_file.stat().st_mtime_ns)
    latencies, found, rss, live, n_new = run_correction_path(store, base, encoder, annotations,
                                                             new_names, base_n, dim)
    after = (sorted(p.name for p in (base.path.parent).iterdir()), index_file.stat().st_mtime_ns)
    rewrites = len(set(after[0]) - set(before[0])) + int(after[1] != before[1])
    index, load_s, p50, p99, cpu50, recall = run_exemplar_lookup(store, exemplars, dim, regions)
    return LearningResult(
        base_entries=base_n, dim=dim, factory=base.manifest.factory, base_build_s=round(build_s, 1),
        annotations=annotations, new_names=n_new,
        learned_p50_ms=round(float(np.percentile(latencies, 50)), 1),
        learned_p99_ms=round(float(np.percentile(latencies, 99)), 1),
        learned_max_ms=round(float(latencies.max()), 1),
        new_name_found=round(float(np.mean(found)) if found else 0.0, 3), base_rewrites=rewrites,
        rss_mb=[round(r) for r in rss], delta_entries=live.stats().entries,
        exemplars=len(index), exemplar_structure=index.kind, exemplar_load_s=round(load_s, 1),
        exemplar_lookup_ms_p50=round(p50, 2), exemplar_lookup_ms_p99=round(p99, 2),
        exemplar_lookup_cpu_ms_p50=round(cpu50, 2), load_average=round(os.getloadavg()[0], 1),
        exemplar_recall=round(recall, 3),
        exemplar_memory_mb=round(index.memory_bytes() / 1024**2, 1))


def format_table(r: LearningResult) -> str:
    return "\n".join([
        "| measure | value |", "|---|---|",
        f"| base index | {r.base_entries:,} entries x {r.dim}, {r.factory}, built in "
        f"{r.base_build_s:.0f} s |",
        f"| annotations (new names) | {r.annotations:,} ({r.new_names}) |",
        f"| webhook-to-learned p50 / p99 / max | {r.learned_p50_ms:.1f} / {r.learned_p99_ms:.1f}"
        f" / {r.learned_max_ms:.1f} ms |",
        f"| new names found first by a search right after (sample of 10) | "
        f"{r.new_name_found:.0%} |",
        f"| base-index rewrites | {r.base_rewrites} |",
        f"| RSS over the annotations (MB) | {' -> '.join(str(x) for x in r.rss_mb)} |",
        f"| delta entries | {r.delta_entries} |",
        f"| exemplar lookup, {r.exemplars:,} exemplars ({r.exemplar_structure}), one image | "
        f"wall p50 {r.exemplar_lookup_ms_p50:.2f} ms, p99 {r.exemplar_lookup_ms_p99:.2f} ms; "
        f"CPU p50 {r.exemplar_lookup_cpu_ms_p50:.2f} ms; recall {r.exemplar_recall:.3f} |",
        f"| exemplar structure memory / initial load | {r.exemplar_memory_mb:.0f} MB / "
        f"{r.exemplar_load_s:.1f} s |",
        f"| machine load average (1 min) at the end | {r.load_average} |",
    ])


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print one JSON line and a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=1_000_000, help="concepts in the base index")
    parser.add_argument("--annotations", type=int, default=1000)
    parser.add_argument("--new-names", type=int, default=200)
    parser.add_argument("--exemplars", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512, help="512 = CLIP ViT-B/16")
    parser.add_argument("--regions", type=int, default=15, help="regions of one image")
    parser.add_argument("--factory", default="IDMap2,Flat",
                        help="base index factory; 'policy' = what build-index would choose")
    parser.add_argument("--threads", type=int, default=0,
                        help="faiss OpenMP threads (0: faiss default, one per core)")
    parser.add_argument("--workdir", default=None, help="keep the files here (default: temp)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    if min(args.base, args.annotations, args.exemplars, args.dim, args.regions) <= 0 \
            or not 0 <= args.new_names <= args.annotations:
        parser.error("sizes must be positive and --new-names <= --annotations")
    faiss.cvar.distance_compute_blas_threshold = 2  # as ConceptIndex.open
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        result = run(args.base, args.annotations, args.new_names, args.exemplars, args.dim,
                     args.regions, args.factory, Path(tmp))
    print(json.dumps(asdict(result)), flush=True)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
