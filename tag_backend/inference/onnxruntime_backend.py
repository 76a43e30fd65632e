"""ONNX Runtime: export with torch's ONNX exporter, run on the CPU execution provider."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
OPSET = 18


class OnnxRuntimeBackend:
    """Export and load graphs with ONNX Runtime (float32 only on CPU)."""

    name = "onnxruntime"

    @staticmethod
    def version() -> str:
        import onnxruntime

        return onnxruntime.__version__

    def export(self, graph: nn.Module, example: torch.Tensor, directory: Path, int8: bool) -> None:
        if int8:
            raise ValueError("int8 weight compression is implemented for OpenVINO only")
        # The TorchScript exporter: it needs no extra package, and the graphs are static but for
        # the batch dimension.
        torch.onnx.export(graph, (example,), str(directory / MODEL_FILE), input_names=["pixels"],
                          output_names=["features"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})

    def load(self, directory: Path, precision: torch.dtype, threads: int) -> "OnnxRuntimeGraph":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(directory / MODEL_FILE), options,
                                       providers=["CPUExecutionProvider"])
        return OnnxRuntimeGraph(session)


class OnnxRuntimeGraph:
    """An inference session (``run`` is thread-safe)."""

    def __init__(self, session) -> None:
        self._session = session

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"pixels": pixels})[0]
