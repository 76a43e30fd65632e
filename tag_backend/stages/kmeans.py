"""Seeded k-means in torch (CPU or GPU) with restarts, one image at a time.

TAG used torch-kmeans with random init, 8 restarts, 100 iterations, tol 1e-4, seed 123. This
implementation keeps those defaults but uses k-means++ seeding by default (fewer bad restarts)
and never materialises an (N, K, D) tensor: distances come from one matmul.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeansResult:
    """centers: (K, D) float32; labels: (N,) int64 in [0, K); inertia: sum of squared distances."""

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float


def _sq_distances(x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    return (x_sq[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]).clamp_min_(0)


def _init_centers(x: torch.Tensor, x_sq: torch.Tensor, k: int, method: str,
                  gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if method == "random":
        idx = torch.randperm(n, generator=gen, device="cpu")[:k].to(x.device)
        return x[idx].clone()
    if method != "k-means++":
        raise ValueError(f"kmeans init must be 'k-means++' or 'random', got {method!r}")
    centers = [x[int(torch.randint(n, (1,), generator=gen))]]
    dist = _sq_distances(x, x_sq, centers[0][None]).squeeze(1)
    for _ in range(1, k):
        probs = dist / dist.sum() if float(dist.sum()) > 0 else torch.full_like(dist, 1.0 / n)
        idx = int(torch.multinomial(probs.cpu(), 1, generator=gen))
        centers.append(x[idx])
        dist = torch.minimum(dist, _sq_distances(x, x_sq, x[idx][None]).squeeze(1))
    return torch.stack(centers)


def _lloyd(x, x_sq, centers, max_iter: int, tol: float):
    k = centers.shape[0]
    for _ in range(max_iter):
        labels = _sq_distances(x, x_sq, centers).argmin(1)
        # One-hot matmul: much faster than index_add_ on CPU for these sizes.
        one_hot = torch.zeros(k, x.shape[0], dtype=x.dtype, device=x.device)
        one_hot[labels, torch.arange(x.shape[0], device=x.device)] = 1.0
        sums = one_hot @ x
        counts = one_hot.sum(1)
        empty = counts == 0
        new = sums / counts.clamp_min(1)[:, None]
        new[empty] = centers[empty]  # an empty cluster keeps its centre (dropped later)
        shift = float(((new - centers) ** 2).sum(1).max())
        centers = new
        if shift <= tol:
            break
    d = _sq_distances(x, x_sq, centers)
    inertia, labels = d.min(1)
    return centers, labels, float(inertia.sum())


def kmeans(x: torch.Tensor, k: int, *, n_init: int = 8, max_iter: int = 100, tol: float = 1e-4,
           init: str = "k-means++", seed: int = 123) -> KMeansResult:
    """Cluster the rows of ``x`` (N, D); keeps the restart with the lowest inertia.

    ``k`` larger than N is reduced to N. Deterministic for a given seed and device.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    x = x.float()
    k = min(k, x.shape[0])
    x_sq = (x * x).sum(1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(n_init):
        centers = _init_centers(x, x_sq, k, init, gen)
        centers, labels, inertia = _lloyd(x, x_sq, centers, max_iter, tol)
        if best is None or inertia < best.inertia:
            best = KMeansResult(centers=centers, labels=labels, inertia=inertia)
    assert best is not None
    return best
