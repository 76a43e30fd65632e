"""The CRF helper process (and multiprocessing's resource tracker) never outlive their parent.

Real processes: a parent starts the helper the way the pipeline does, from a short-lived thread
(like the warm-up thread), then is killed; the helper and the tracker must be gone within a few
seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks.procfs import alive, descendants

pytest.importorskip("pydensecrf.densecrf")

PARENT = textwrap.dedent(
    """
    import sys, threading, time
    from tag_backend.stages import crf

    # Started from a thread that ends at once: the helper must survive it (PR_SET_PDEATHSIG
    # follows the starting thread) and still die with this process.
    t = threading.Thread(target=crf.start_helper)
    t.start(); t.join()
    assert crf._executor().submit(crf.ping).result(timeout=60)
    print("ready", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_helper_and_tracker_die_with_their_parent(sig):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, env=env,
                              text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        helpers = descendants(parent.pid)
        assert len(helpers) >= 2  # the CRF helper and multiprocessing's resource tracker
        parent.send_signal(sig)
        parent.wait(30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in helpers):
            time.sleep(0.1)
        left = [p for p in helpers if alive(p)]
        assert not left, f"left behind: {left}"
    finally:
        if parent.poll() is None:
            parent.kill()
