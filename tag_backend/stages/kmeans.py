"""Seeded k-means in torch (CPU or GPU) with restarts, one image at a time.

TAG used torch-kmeans 0.2.0 with its defaults: random init (k distinct data points per restart),
8 restarts, 100 iterations, tol 1e-4, seed 123, and its convergence test (every restart's mean
centre shift below ``tol``). Both that test (``convergence="mean_shift"``) and scikit-learn's
relative one (``"relative"``) are available, with random or k-means++ seeding. All restarts run
as one batched computation (one matmul per iteration for all of them) and no (N, K, D) tensor is
ever materialised. Not bit-identical to torch-kmeans: the random streams differ, and an empty
cluster keeps its centre (torch-kmeans moves it to the origin).
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
    """(R, N, K) squared distances of the N rows of x to R sets of K centres (R, K, D)."""
    c_sq = (centers * centers).sum(-1)[:, None, :]
    return torch.baddbmm(x_sq[None, :, None] + c_sq, x.expand(centers.shape[0], -1, -1),
                         centers.transpose(1, 2), alpha=-2.0).clamp_min_(0)


def _init_centers(x: torch.Tensor, x_sq: torch.Tensor, k: int, restarts: int, method: str,
                  gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if method == "random":
        idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(restarts)])
        return x[idx.to(x.device)].clone()
    if method != "k-means++":
        raise ValueError(f"kmeans init must be 'k-means++' or 'random', got {method!r}")
    first = torch.randint(n, (restarts,), generator=gen).to(x.device)
    centers = [x[first]]  # each (R, D)
    dist = _sq_distances_to_rows(x, x_sq, first)  # (R, N)
    for _ in range(1, k):
        total = dist.sum(1, keepdim=True)
        probs = torch.where(total > 0, dist / total.clamp_min(1e-30), torch.full_like(dist, 1.0 / n))
        idx = torch.multinomial(probs.cpu(), 1, generator=gen)[:, 0].to(x.device)
        centers.append(x[idx])
        dist = torch.minimum(dist, _sq_distances_to_rows(x, x_sq, idx))
    return torch.stack(centers, dim=1)  # (R, K, D)


def _sq_distances_to_rows(x: torch.Tensor, x_sq: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(R, N) squared distances of every row of x to the rows ``rows`` (R,) of x: one (R, D) x
    (D, N) product for all restarts (a batched matrix-vector product per restart is 3x slower)."""
    return (x_sq[rows][:, None] + x_sq[None, :] - 2.0 * (x[rows] @ x.T)).clamp_min_(0)


CONVERGENCE = ("relative", "mean_shift")


def _lloyd(x, x_sq, centers, max_iter: int, tol: float, convergence: str):
    """Lloyd iterations of all restarts at once.

    ``"relative"`` (scikit-learn): a restart stops when the squared shift of its centres is below
    ``tol`` x the mean per-feature variance of ``x``. ``"mean_shift"`` (torch-kmeans): all
    restarts iterate until every restart's mean centre shift (L2) is below ``tol``.
    """
    restarts, k, _ = centers.shape
    n = x.shape[0]
    active = torch.ones(restarts, dtype=torch.bool, device=x.device)
    arange = torch.arange(n, device=x.device)
    if convergence == "relative":
        tol = tol * float(x.var(0).mean()) if n > 1 else 0.0
    for _ in range(max_iter):
        labels = _sq_distances(x, x_sq, centers).argmin(2)  # (R, N)
        one_hot = torch.zeros(restarts, k, n, dtype=x.dtype, device=x.device)
        one_hot[torch.arange(restarts, device=x.device)[:, None], labels, arange[None, :]] = 1.0
        counts = one_hot.sum(2)  # (R, K)
        new = (one_hot @ x) / counts.clamp_min(1)[..., None]
        new = torch.where((counts == 0)[..., None], centers, new)  # empty cluster keeps its centre
        new = torch.where(active[:, None, None], new, centers)     # converged restarts stay put
        if convergence == "relative":
            shift = ((new - centers) ** 2).sum(-1).sum(1)
            active &= shift > tol
        else:
            shift = (new - centers).norm(dim=-1).mean(1)
            active[:] = bool((shift >= tol).any())
        centers = new
        if not bool(active.any()):
            break
    d = _sq_distances(x, x_sq, centers)
    inertia, labels = d.min(2)
    return centers, labels, inertia.sum(1)


def kmeans(x: torch.Tensor, k: int, *, n_init: int = 8, max_iter: int = 100, tol: float = 1e-4,
           init: str = "k-means++", seed: int = 123, convergence: str = "relative") -> KMeansResult:
    """Cluster the rows of ``x`` (N, D); keeps the restart with the lowest inertia.

    ``k`` larger than N is reduced to N. Deterministic for a given seed and device.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if convergence not in CONVERGENCE:
        raise ValueError(f"kmeans convergence must be one of {CONVERGENCE}, got {convergence!r}")
    x = x.float()
    k = min(k, x.shape[0])
    x_sq = (x * x).sum(1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centers = _init_centers(x, x_sq, k, n_init, init, gen)
    centers, labels, inertia = _lloyd(x, x_sq, centers, max_iter, tol, convergence)
    best = int(inertia.argmin())
    return KMeansResult(centers=centers[best], labels=labels[best], inertia=float(inertia[best]))
