"""Search a faiss index while skipping a set of ids, without over-fetching.

Over-fetching ``k + len(excluded)`` results and dropping the excluded ones costs a search
proportional to the number of exclusions; faiss can instead skip them during the scan through
an ``IDSelector`` (``IDSelectorNot(IDSelectorBatch(...))``). The selector must reach the index
that actually scans: an ``IndexIDMap`` only translates selectors for indexes that accept generic
search parameters, and ``IndexRefine`` needs its own parameter type whose ``base_index_params``
carry the selector (translated to the IDMap's internal ids) and ``nprobe``. Search parameters
passed explicitly replace the index's own settings, so the tuned ``nprobe`` / ``k_factor`` /
``efSearch`` are copied in.
"""
from __future__ import annotations

import faiss
import numpy as np


def _scan_params(index: faiss.Index, selector: faiss.IDSelector, keep: list
                 ) -> faiss.SearchParameters:
    """Search parameters for ``index`` (not an IDMap) with ``selector`` and its tuned settings."""
    if isinstance(index, faiss.IndexRefine):
        base = faiss.downcast_index(index.base_index)
        keep.append(base)
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = float(index.k_factor)
        base_params = _scan_params(base, selector, keep)
        keep.append(base_params)
        params.base_index_params = base_params
        return params
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = int(ivf.nprobe)
        params.sel = selector
        return params
    if hasattr(index, "hnsw"):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(index.hnsw.efSearch)
        params.sel = selector
        return params
    params = faiss.SearchParameters()
    params.sel = selector
    return params


def search_without(index: faiss.Index, queries: np.ndarray, k: int, excluded: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(queries, k)`` that never returns an id in ``excluded`` (-1 pads rows)."""
    if len(excluded) == 0:
        return index.search(queries, k)
    keep: list = []  # faiss objects referenced only from C++ must outlive the search
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(excluded, dtype=np.int64))
    selector = faiss.IDSelectorNot(batch)
    keep += [batch, selector]
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(index.index)
        translated = faiss.IDSelectorTranslated(index.id_map, selector)
        keep += [inner, translated]
        params = _scan_params(inner, translated, keep)
        scores, internal = inner.search(queries, k, params=params)
        id_map = faiss.vector_to_array(index.id_map)
        ids = np.where(internal >= 0, id_map[np.maximum(internal, 0)], -1)
        return scores, ids
    return index.search(queries, k, params=_scan_params(index, selector, keep))
