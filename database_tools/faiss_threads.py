"""How many OpenMP threads one faiss search gets.

faiss parallelises flat and IVF searches over the queries with an OpenMP team. Waking that
team costs far more than small searches do: measured 0.4 ms single-threaded vs 8-45 ms with
2 threads for one query over 3k entries right after torch had used the cores, and on a busy
machine one image's 15 regions against 100,000 exemplars took 3.8 ms of CPU time but 40 ms of
wall time with 2 threads (the team waits for its preempted member) against ~2 ms alone. So a
search whose arithmetic is small runs on the calling thread only; larger ones get a team sized
to the query count (faiss gives each thread whole queries anyway).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss

#: Multiply-adds of a search below which it runs single-threaded: about 5 ms on one core, where
#: the most a second core could save (~2.5 ms) is less than what waking a team can cost.
ONE_THREAD_WORK = 50_000_000

def search_work(index: faiss.Index, n_queries: int) -> int | None:
    """Multiply-adds of searching ``n_queries`` in ``index``; None when not estimated.

    Flat: every stored vector per query. IVF: the coarse centroids plus ``nprobe`` average
    lists per query. Other structures (HNSW, refinement) are not estimated.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexIVF):
        per_list = index.ntotal / max(index.nlist, 1)
        scanned = index.nlist + min(index.nprobe, index.nlist) * per_list
        return int(n_queries * scanned * index.d)
    if isinstance(index, faiss.IndexFlat):
        return int(n_queries) * int(index.ntotal) * int(index.d)
    return None


def team_size(n_queries: int, work: int | None) -> int:
    """OpenMP threads for a search of ``n_queries`` costing ``work`` multiply-adds."""
    if work is not None and work < ONE_THREAD_WORK:
        return 1
    return max(1, min(faiss.omp_get_max_threads(), int(n_queries)))


@contextmanager
def threads_for(index: faiss.Index, n_queries: int) -> Iterator[int]:
    """Run the enclosed search of ``n_queries`` in ``index`` with :func:`team_size` threads.

    ``omp_set_num_threads`` sets the team size of the calling thread only (the ``nthreads-var``
    ICV of the current task, OpenMP API 5.x section 3.2.1), so concurrent searches in other
    threads neither see nor need a lock around it: a lookup never waits for another request's
    large search. Yields the team size.
    """
    before = faiss.omp_get_max_threads()
    threads = min(before, team_size(n_queries, search_work(index, n_queries)))
    faiss.omp_set_num_threads(threads)
    try:
        yield threads
    finally:
        faiss.omp_set_num_threads(before)
