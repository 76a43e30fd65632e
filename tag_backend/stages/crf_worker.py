"""The dense-CRF inference itself, run in a helper process.

pydensecrf2 holds the GIL for the whole inference (up to seconds per image), which froze every
other thread of the server (webhooks missed Label Studio's 1 s timeout). Running it in a spawned
helper process keeps the server responsive. This module imports only numpy and pydensecrf so
the helper process starts fast and small (no torch).

The helper must never outlive the process that started it (a server stopped by SIGKILL, a
recycled gunicorn worker): :func:`die_with_parent` runs first in the helper and arranges two
independent ways to go: the kernel kills it when its parent ends (Linux ``PR_SET_PDEATHSIG``)
and, everywhere, a watcher thread exits when the parent pid changes (the helper was orphaned).
Once the helpers are gone, multiprocessing's resource tracker sees its pipe close and exits too.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

import numpy as np

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 0.5


def crf_inference(rgb: np.ndarray, probs: np.ndarray, iterations: int, gaussian_sxy: float,
                  gaussian_compat: float, bilateral_sxy: float, bilateral_srgb: float,
                  bilateral_compat: float) -> np.ndarray:
    """(K, h, w) float32 refined probabilities from unary probabilities ``probs`` (K, h, w)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                             rgbim=np.array(rgb, dtype=np.uint8, order="C", copy=True),
                             compat=bilateral_compat)
    return np.array(crf.inference(iterations), dtype=np.float32).reshape(k, h, w)


def ping() -> bool:
    """A no-op job that makes the helper process start (and import pydensecrf) ahead of use."""
    import pydensecrf.densecrf  # noqa: F401

    return True


def alive() -> bool:
    """A job that does nothing: it makes the pool start its helper process."""
    return True


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this helper process when ``parent_pid`` ends (see module docstring).

    ``PR_SET_PDEATHSIG`` fires when the parent *thread* that started the helper exits, so the
    parent starts helpers from a thread that lives as long as the process (``crf._owned_pool``).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watcher thread below still ends the helper
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent_pid:  # re-parented: the parent is gone
            os._exit(0)
