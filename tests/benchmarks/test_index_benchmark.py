"""The index-size policy and its benchmark (numbers are printed by the benchmark, not asserted)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.index import ClusteredEmbeddings, main
from database_tools.index_policy import (
    EXACT_LIMIT,
    ExactTopK,
    make_index,
    plan_index,
    recall_at_k,
    tune_search,
)


def test_policy_by_size() -> None:
    assert plan_index(EXACT_LIMIT - 1, 768).factory == "IDMap2,Flat"
    big = plan_index(EXACT_LIMIT, 768)
    assert big.factory == "IVF2048_HNSW32,PQ384x4fs,Refine(SQ8)" and big.train_size == 64 * 2048
    assert plan_index(10_000_000, 768).factory == "IVF16384_HNSW32,PQ384x4fs,Refine(SQ8)"
    assert plan_index(10_000_000, 512).factory == "IVF16384_HNSW32,PQ256x4fs,Refine(SQ8)"
    assert plan_index(500, 16, "HNSW32").exact is False


def test_exact_top_k_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    truth = ExactTopK(queries, k=5)
    for lo in range(0, 1000, 300):  # uneven chunks, the last smaller than k is fine too
        truth.add(data[lo:lo + 300], np.arange(lo, min(lo + 300, 1000)))
    expected = np.argsort(-(queries @ data.T), axis=1)[:, :5]
    np.testing.assert_array_equal(truth.result(), expected)


def test_large_index_policy_recall_on_clustered_sample() -> None:
    """The approximate index type with tuned nprobe reaches recall@10 >= 0.95 (20k sample)."""
    data = ClusteredEmbeddings(dim=64, centres=400, seed=3)
    vectors = np.concatenate([data.chunk(i, 5000) for i in range(4)])
    plan = plan_index(len(vectors), 64, "IVF128_HNSW32,SQ8")
    index = make_index(plan, 64)
    index.train(data.chunk(0, plan.train_size, part=2))
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    queries = data.chunk(0, 200, part=1)
    truth = ExactTopK(queries)
    truth.add(vectors, np.arange(len(vectors)))
    gt = truth.result()
    tuning = tune_search(index, queries, gt)
    assert tuning.recall >= 0.95 and tuning.params["nprobe"] < 128  # really approximate
    _, found = index.search(queries, 10)
    assert recall_at_k(found, gt) == tuning.recall
    index.nprobe = 1
    _, found = index.search(queries, 10)
    assert recall_at_k(found, gt) < tuning.recall  # the tuning matters on this data


def test_clustered_data_is_deterministic_and_unit_norm() -> None:
    a, b = ClusteredEmbeddings(32, 50, seed=1), ClusteredEmbeddings(32, 50, seed=1)
    x = a.chunk(5, 100)
    np.testing.assert_array_equal(x, b.chunk(5, 100))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(x, a.chunk(5, 100, part=1))


def test_clustered_data_has_local_neighbours() -> None:
    """Like text embeddings, not uniform noise: the exact top-10 of a query lie in its own topic
    and are clearly closer to it than the topic's typical member."""
    data = ClusteredEmbeddings(dim=128, centres=40, seed=2)
    vectors, topics = data.chunk_with_topics(0, 20000)
    queries, query_topics = data.chunk_with_topics(0, 50, part=1)
    scores = queries @ vectors.T
    top10 = np.argsort(-scores, axis=1)[:, :10]
    assert (topics[top10] == query_topics[:, None]).mean() > 0.95
    typical = [np.median(scores[i, topics == query_topics[i]]) for i in range(len(queries))]
    tenth = np.take_along_axis(scores, top10[:, 9:], axis=1)[:, 0]
    assert float(np.mean(tenth - typical)) > 0.1


def test_bench_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["--n", "20000", "--dim", "64", "--queries", "200", "--centres", "300",
                 "--json", str(out)]) == 0
    assert main(["--n", "20000", "--dim", "64", "--queries", "200", "--centres", "300",
                 "--factory", "IVF64_HNSW32,SQ8", "--json", str(tmp_path / "ivf.json")]) == 0
    printed = capsys.readouterr().out
    assert "| 20,000 | 64 | `IDMap2,Flat` |" in printed and "recall@10" in printed
    exact = json.loads(out.read_text())[0]
    approx = json.loads((tmp_path / "ivf.json").read_text())[0]
    assert exact["recall_at_10"] == 1.0 and exact["search_params"] == {}
    assert approx["recall_at_10"] >= 0.95 and "nprobe" in approx["search_params"]
    for row in (exact, approx):
        assert row["build_s"] >= 0 and row["peak_rss_gb"] > 0 and row["single_ms_per_query"] > 0
