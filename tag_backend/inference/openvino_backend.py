"""OpenVINO: convert the torch graph, optionally compress weights to int8 (NNCF), compile for CPU."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

MODEL_FILE = "model.xml"  # + model.bin beside it
# OpenVINO's own cache of compiled models (its CACHE_DIR), inside the entry: importing a compiled
# blob takes a fraction of a second where compiling the graph takes seconds at every start.
COMPILED_DIR = "compiled"


class OpenVinoBackend:
    """Export and load graphs with OpenVINO's CPU plugin."""

    name = "openvino"

    @staticmethod
    def version() -> str:
        import openvino

        return openvino.get_version()

    def export(self, graph: nn.Module, example: torch.Tensor, directory: Path, int8: bool) -> None:
        """Convert ``graph`` traced on ``example`` (batch dimension left dynamic) into ``directory``."""
        import openvino as ov

        shape = ov.PartialShape([-1, *example.shape[1:]])
        # Traced once here: the converter's own trace runs the model twice and compares the
        # graphs, which fails on the per-grid caches of the dense forward (first call computes,
        # second call reads the cache) and doubles the export time.
        traced = torch.jit.trace(graph, example, check_trace=False, strict=False)
        model = ov.convert_model(traced, example_input=example, input=[shape])
        if int8:
            import nncf

            # Weights only (activations stay float): no calibration data needed.
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        # compress_to_fp16=False: the default would store fp16 weights, not what torch computes with.
        ov.save_model(model, directory / MODEL_FILE, compress_to_fp16=False)

    def load(self, directory: Path, precision: torch.dtype, threads: int) -> "OpenVinoGraph":
        """Compile the entry's graph, or import the blob a previous process compiled.

        One blob serves every precision and thread count: OpenVINO applies them when it imports
        the blob (a bf16 import computes exactly what a bf16 compilation does; tested). Given
        the model's path rather than a read model, it skips reading the graph when a blob
        exists. It writes a blob in place, so compiling holds a lock per entry: a concurrent
        process waits and then imports the whole blob.
        """
        import openvino as ov
        from filelock import FileLock

        from .cache import LOCK_TIMEOUT_S

        core = ov.Core()
        blobs = directory / COMPILED_DIR
        config = {
            # Explicit: on CPUs with AVX512-BF16/AMX the plugin would otherwise compute in bf16.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == torch.bfloat16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": max(1, threads),
            "CACHE_DIR": str(blobs),
        }
        with FileLock(str(blobs) + ".lock", timeout=LOCK_TIMEOUT_S):
            compiled = core.compile_model(str(directory / MODEL_FILE), "CPU", config)
        return OpenVinoGraph(compiled)


class OpenVinoGraph:
    """A compiled model callable from any thread.

    One infer request, used under a lock: a request keeps its working memory (about 1 GB per
    448² image of the largest batch it ran) for its lifetime, so one request per calling thread
    multiplied it by the server's thread count, while the engine lock lets one forward run at a
    time anyway.
    """

    def __init__(self, compiled) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            self._request.infer({0: pixels})
            return self._request.get_output_tensor(0).data.copy()
