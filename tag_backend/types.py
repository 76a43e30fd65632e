"""Typed containers passed between the pipeline stages.

Shapes use: H, W = original image size; h, w = model input size; gh, gw = patch grid;
K = number of segments; D = feature dimension.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class PreparedImage:
    """An image ready for both backbones.

    rgb: (H, W, 3) uint8, EXIF-transposed original (used by the CRF and for output size).
    model_rgb: (h, w, 3) uint8 resized copy at the model input size (CRF runs on it).
    dino_pixels: (1, 3, h, w) float32, DINOv2 (ImageNet) normalisation.
    clip_pixels: (1, 3, h, w) float32, CLIP normalisation of the loaded model.
    """

    rgb: np.ndarray
    model_rgb: np.ndarray
    dino_pixels: torch.Tensor
    clip_pixels: torch.Tensor

    @property
    def original_size(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.model_rgb.shape[0]), int(self.model_rgb.shape[1])


@dataclass
class PatchFeatures:
    """DINOv2 last-layer normalised patch tokens, no CLS/registers.

    tokens: (gh * gw, D) float32 on the compute device, not L2-normalised.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]


@dataclass
class DenseFeatures:
    """Dense CLIP image features on the patch grid, in the joint image-text space.

    features: (gh * gw, D) float32, not normalised.
    """

    features: torch.Tensor
    grid: tuple[int, int]


@dataclass
class NameCandidate:
    """One possible name for a segment and its CLIP image-text cosine.

    name: the shown name (database text without a trailing "(qualifier)").
    entry_id: the concept's id in the concept database (None for words taken from captions);
        homonyms ("bat (animal)", "bat (club)") share a shown name but not an id.
    text: the database text the name came from (with its qualifier).
    """

    name: str
    score: float
    entry_id: int | None = None
    text: str = ""

    @property
    def identity(self) -> int | str:
        """What makes two candidates the same name: the concept id, else the text."""
        return self.entry_id if self.entry_id is not None else (self.text or self.name)


@dataclass
class SegmentLabel:
    """One named region of the final output.

    mask: (H, W) bool at the original image size.
    name: the chosen free-form name (shown name, see :class:`NameCandidate`).
    score: the probability that the name is right (:mod:`tag_backend.stages.confidence`),
        area-weighted over the merged segments.
    entry_id: the concept id of the name (None for a caption word).
    cosine: the CLIP image-text cosine of the name (for diagnostics; not on the score scale).
    alternatives: the next best names (up to 5), best first.
    area: number of True pixels in mask.
    sources: texts of the retrieved database entries that produced the candidates.
    embedding: (D,) float32 L2-normalised CLIP region embedding (for exemplars / corrections).
    origin: "retrieval" (named from the concept index), "exemplar" (the name of a region an
        annotator corrected) or "alias" (a retrieved name annotators keep renaming, renamed).
    """

    mask: np.ndarray
    name: str
    score: float
    alternatives: list[NameCandidate] = field(default_factory=list)
    area: int = 0
    sources: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None
    origin: str = "retrieval"
    entry_id: int | None = None
    cosine: float = 0.0


@dataclass
class ImageFeatures:
    """Backbone outputs of one image: everything the stages after the forwards need.

    model_rgb: (h, w, 3) uint8 image at the model input size (the CRF runs on it).
    original_size: (H, W) of the EXIF-transposed original (masks are returned at this size).
    patches: DINOv2 patch tokens; dense: dense CLIP features (both on the compute device).
    sam: SAM 2 image embeddings (``tag_backend.stages.sam_refine.SamImage``) when refinement
        is on, else None.
    """

    model_rgb: np.ndarray
    original_size: tuple[int, int]
    patches: PatchFeatures
    dense: DenseFeatures
    sam: Any = None

    @property
    def nbytes(self) -> int:
        """Memory held (what a feature cache counts)."""
        tensors = (self.patches.tokens, self.dense.features)
        sam = self.sam.nbytes if self.sam is not None else 0
        return int(self.model_rgb.nbytes) + sum(t.element_size() * t.nelement() for t in tensors) + sam
