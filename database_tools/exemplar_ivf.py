"""The inverted file that serves many exemplars: its size, its training, its vector format.

``IVF<nlist>,SQfp16``: nlist is the power of two nearest 4 sqrt(n), at most n / 39 (faiss'
k-means warns with fewer training points per centroid); vectors are stored as half floats,
because scanning one image's probed lists is memory-bound and half floats keep cosines to
about four decimals (the exemplar take-over threshold is 0.90), at half the memory.
"""
from __future__ import annotations

import faiss
import numpy as np

IVF_NPROBE = 8
#: faiss' k-means wants at least this many training points per centroid (it warns below).
MIN_POINTS_PER_LIST = 39


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` vectors."""
    nearest = int(2 ** round(np.log2(4 * np.sqrt(max(n, 1)))))
    return max(1, min(nearest, int(2 ** np.floor(np.log2(max(n // MIN_POINTS_PER_LIST, 1))))))


def build_ivf(vectors: np.ndarray, ids: np.ndarray) -> faiss.IndexIVF:
    """A trained inner-product IVF holding ``vectors`` (L2-normalised rows) under ``ids``."""
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist_for(len(ids)),
                                        faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    ivf.own_fields = True
    quantizer.this.disown()  # the IVF owns its quantizer from now on
    ivf.cp.max_points_per_centroid = 64  # k-means on a sample: seconds, not minutes
    ivf.cp.niter = 10
    ivf.train(vectors)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct + remove by id
    ivf.nprobe = IVF_NPROBE
    ivf.add_with_ids(vectors, ids)
    return ivf
