"""OpenMP team size of faiss searches: small searches (one image's regions against the exemplars
or the delta) run on the calling thread, large ones keep a team."""
from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from database_tools.exemplar_index import ExemplarIndex
from database_tools.faiss_threads import ONE_THREAD_WORK, search_work, team_size, threads_for


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    faiss.normalize_L2(v)
    return v


@pytest.fixture()
def team_log(monkeypatch):
    """Every team size set through faiss while a test runs (the real call still happens)."""
    sizes: list[int] = []
    real = faiss.omp_set_num_threads

    def record(n: int) -> None:
        sizes.append(int(n))
        real(n)

    monkeypatch.setattr(faiss, "omp_set_num_threads", record)
    return sizes


def test_search_work_of_flat_idmap_and_inverted_file():
    vectors = _vectors(4000)
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    assert search_work(flat, 15) == 15 * 4000 * 16
    mapped = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    mapped.add_with_ids(vectors, np.arange(4000, dtype=np.int64))
    assert search_work(mapped, 3) == 3 * 4000 * 16
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 50, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = 8
    assert search_work(ivf, 15) == int(15 * (50 + 8 * 4000 / 50) * 16)
    assert search_work(faiss.IndexHNSWFlat(16, 8), 15) is None  # not estimated


def test_team_size_is_one_below_the_work_threshold(monkeypatch):
    monkeypatch.setattr(faiss, "omp_get_max_threads", lambda: 8)
    assert team_size(15, ONE_THREAD_WORK - 1) == 1
    assert team_size(15, ONE_THREAD_WORK) == 8
    assert team_size(3, 10 * ONE_THREAD_WORK) == 3  # faiss gives each thread whole queries
    assert team_size(15, None) == 8  # unknown cost: a team, as before


def test_threads_for_restores_the_previous_team(team_log):
    before = faiss.omp_get_max_threads()
    small = faiss.IndexFlatIP(16)
    small.add(_vectors(100))
    with threads_for(small, 15) as threads:
        assert threads == 1 and faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before and team_log == [1, before]


def test_one_images_exemplar_lookup_runs_on_the_calling_thread(team_log):
    vectors = _vectors(5000)
    index = ExemplarIndex("clip/test")
    index._names = {e: f"concept {e}" for e in range(50)}
    index._add([(i + 1, i % 50, vectors[i].astype("<f4").tobytes()) for i in range(5000)])
    assert index.kind.startswith("ivf")
    team_log.clear()
    found = index.match(vectors[:15], 0.99)
    assert [m.entry_id for m in found] == [i % 50 for i in range(15)]
    assert team_log[0] == 1  # the search itself, then the restore
    assert faiss.omp_get_max_threads() == team_log[-1]


def test_the_team_size_of_one_thread_leaves_other_threads_alone():
    small = faiss.IndexFlatIP(16)
    small.add(_vectors(100))
    before = faiss.omp_get_max_threads()
    inside, seen_meanwhile = threading.Event(), []

    def other() -> None:
        inside.wait(10)
        seen_meanwhile.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=other)
    thread.start()
    with threads_for(small, 15):
        inside.set()
        thread.join(10)
    assert seen_meanwhile == [before]
