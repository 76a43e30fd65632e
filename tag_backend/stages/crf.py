"""Dense-CRF refinement as in TAG (STEGO parameters), on the true uint8 RGB image.

TAG passed an un-normalised copy of an image that had never been normalised, so its bilateral
term saw distorted colours; here the CRF gets the real RGB at the model-input size.
``pydensecrf2`` builds from source (gcc, ~50 s); when it is missing the pipeline logs that once
and continues without CRF.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .crf_worker import alive, crf_inference, die_with_parent, ping
from .segments import upsample_scores

logger = logging.getLogger(__name__)
_warned = threading.Event()


@dataclass(frozen=True)
class CrfParams:
    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    # TAG feeds softmax(raw scores) as the unary; raw scores are large, so the unary is almost
    # one-hot and the CRF can hardly move a boundary. Scaling the scores so that the median
    # top-1/top-2 gap equals ``unary_gain`` leaves confident interiors confident and makes
    # boundary pixels (small gaps) uncertain, so colour edges decide there. None = TAG's raw
    # unary. Measured on synthetic flat shapes (tiny models, k=3): matched mIoU 0.92 -> 0.998.
    unary_gain: float | None = 1.0
    # Resolution of the CRF relative to the model input (spatial sigmas scale with it). 1.0 is
    # the paper; 0.5 costs ~4x less and the soft result is upsampled back (the `fast` preset).
    scale: float = 1.0


def crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


class PendingCrf:
    """A CRF started in the helper process: ``done()`` without blocking, ``()`` waits for the
    (K, h, w) probabilities (None when pydensecrf2 is not installed)."""

    def __init__(self, future: Future | None = None, args: tuple = (), size: tuple[int, int] = (0, 0)):
        self._future, self._args, self._size = future, args, size

    def done(self) -> bool:
        return self._future is None or self._future.done()

    def __call__(self) -> torch.Tensor | None:
        if not self._args:
            return None
        return upsample_scores(torch.from_numpy(_result(self._future, crf_inference, self._args)),
                               self._size)


def submit_crf(rgb: np.ndarray, scores: torch.Tensor, params: CrfParams) -> PendingCrf:
    """Start the CRF in the helper process; the returned :class:`PendingCrf` waits for the result.

    ``scores``: (K, h', w') segment scores at any resolution (the patch grid is enough: they are
    resampled bilinearly straight to the CRF's resolution). The result is (K, h, w) probabilities
    at the resolution of ``rgb`` (h, w, 3). The inference runs in a spawned helper process
    (:mod:`.crf_worker`): it never holds this process's GIL, and the pipeline overlaps it with the
    dense-CLIP forward.
    """
    if not crf_available():
        if not _warned.is_set():
            _warned.set()
            logger.warning("dense CRF disabled: pydensecrf2 is not installed (pip install pydensecrf2==1.1)")
        return PendingCrf()
    if not 0 < params.scale <= 1:
        raise ValueError(f"CRF scale must be in (0, 1], got {params.scale}")
    k = scores.shape[0]
    h, w = rgb.shape[:2]
    rgb, logits, run = _at_scale(rgb, scores.float(), params)
    if params.unary_gain is not None and k > 1:
        top2 = logits.topk(2, dim=0).values
        gap = (top2[0] - top2[1]).median().clamp_min(1e-6)
        logits = logits * (params.unary_gain / gap)
    probs = torch.softmax(logits, dim=0).cpu().numpy()
    args = (np.ascontiguousarray(rgb, dtype=np.uint8), probs, run.iterations, run.gaussian_sxy,
            run.gaussian_compat, run.bilateral_sxy, run.bilateral_srgb, run.bilateral_compat)
    return PendingCrf(_submit(crf_inference, *args), args, (h, w))


@contextmanager
def lend_core(pending: Iterable[PendingCrf | None]) -> Iterator[Callable[[], None]]:
    """Compute with one CPU thread fewer while CRFs run in the helper process.

    When this process's threads already cover every core, the helper shares a core with one of
    them, and an OpenMP forward runs at the pace of its slowest thread: on 2 cores the paper
    preset's GEM forward lost 0.5-1.0 s to a 1.2 s CRF. Lending the core instead lets both run at
    full speed. Yields ``rebalance``, to call between steps (blocks of the forward): it takes the
    thread back as soon as the CRFs are done.
    """
    waiting = [p for p in pending if p is not None and not p.done()]
    lent = bool(waiting) and _lending.lend()

    def rebalance() -> None:
        nonlocal lent
        if lent and all(p.done() for p in waiting):
            _lending.give_back()
            lent = False

    try:
        yield rebalance
    finally:
        if lent:
            _lending.give_back()


class _ThreadLending:
    """Process-wide count of lent threads (torch's thread count is global; predictions may run in
    several threads at once): the first borrower records the count, the last one restores it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._borrowers = 0
        self._baseline = 0

    def lend(self) -> bool:
        with self._lock:
            if self._borrowers == 0:
                threads = torch.get_num_threads()
                if threads < 2 or threads < _usable_cores():
                    return False  # a core is free already (or nothing to lend)
                self._baseline = threads
                torch.set_num_threads(threads - 1)
            self._borrowers += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._borrowers -= 1
            if self._borrowers == 0:
                torch.set_num_threads(self._baseline)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_lending = _ThreadLending()


def _at_scale(rgb: np.ndarray, scores: torch.Tensor, params: CrfParams):
    """RGB, scores and parameters at the CRF's resolution, ``params.scale`` x that of ``rgb``
    (spatial sigmas scale with the image)."""
    h, w = rgb.shape[:2]
    if params.scale == 1.0:
        return rgb, upsample_scores(scores, (h, w)), params
    import cv2

    sh, sw = max(1, round(h * params.scale)), max(1, round(w * params.scale))
    small_rgb = cv2.resize(np.ascontiguousarray(rgb), (sw, sh), interpolation=cv2.INTER_AREA)
    small = dataclasses.replace(params, scale=1.0, gaussian_sxy=max(0.5, params.gaussian_sxy * params.scale),
                                bilateral_sxy=params.bilateral_sxy * params.scale)
    return small_rgb, upsample_scores(scores, (sh, sw)), small


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
_pool_release: threading.Event | None = None  # ends the thread that started _pool's helper


def _executor() -> ProcessPoolExecutor:
    global _pool, _pool_release
    with _pool_lock:
        if _pool is None:
            _pool, _pool_release = _owned_pool()
        return _pool


def _owned_pool() -> tuple[ProcessPoolExecutor, threading.Event]:
    """A one-helper pool whose helper dies with this process (``crf_worker.die_with_parent``).

    The helper is started from a thread kept alive until the pool is dropped: Linux's parent-death
    signal follows the thread that started a child, and the first CRF may be submitted from a
    short-lived thread (warm-up, a request thread of a recycled worker).
    """
    started: list = []
    ready, release = threading.Event(), threading.Event()

    def own() -> None:
        try:
            pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent, initargs=(os.getpid(),),
            )
            pool.submit(alive)  # the helper process starts now, from this thread
            started.append(pool)
        except Exception as exc:  # noqa: BLE001 - reported to the caller below
            started.append(exc)
        ready.set()
        if isinstance(started[0], ProcessPoolExecutor):
            release.wait()  # keep the starting thread alive as long as the helper is in use

    threading.Thread(target=own, name="tag-crf-helper-owner", daemon=True).start()
    ready.wait()
    if isinstance(started[0], Exception):
        raise started[0]
    return started[0], release


def start_helper() -> None:
    """Start the CRF helper process in the background (first images then pay no start-up)."""
    if crf_available():
        _submit(ping)


def _submit(fn, *args) -> Future | None:
    pool = _executor()
    try:
        return pool.submit(fn, *args)
    except BrokenProcessPool:
        _drop(pool)
        return None


def _drop(pool: ProcessPoolExecutor) -> None:
    global _pool, _pool_release
    with _pool_lock:
        if _pool is not pool:
            return
        release, _pool, _pool_release = _pool_release, None, None
    if release is not None:
        release.set()


def _result(future: Future | None, fn, args):
    """The helper's result; if the helper died, retry once in a new one, then run here."""
    for attempt in (1, 2):
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool:
                logger.warning("CRF helper process died; starting a new one (attempt %d)", attempt)
                if _pool is not None:
                    _drop(_pool)
        future = _submit(fn, *args) if attempt == 1 else None
    return fn(*args)  # the helper keeps dying: run here rather than lose the image
