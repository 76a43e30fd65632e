"""Synthetic scenes with exact ground truth: a benchmark that runs anywhere, in seconds.

Each scene has a textured background and shapes of several classes: flat and textured fills,
several instances of one class, shapes that touch, small objects, varied sizes and aspect
ratios. Scenes are written in the ``folder`` layout (:mod:`.datasets`) so the evaluator reads
them like any user dataset. With random-weight models only mask quality (Hungarian-matched
mIoU) means something; names are scored too, so the same command works with real weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

# id -> (name, fill kind, colours); id 0 is the background.
CLASSES: tuple[tuple[str, str, tuple], ...] = (
    ("background", "noise", ((118, 118, 118),)),
    ("red square", "flat", ((215, 35, 35),)),
    ("blue disc", "flat", ((35, 60, 215),)),
    ("green triangle", "flat", ((40, 190, 60),)),
    ("striped ellipse", "stripes", ((245, 215, 30), (25, 25, 25))),
    ("checkered rectangle", "checker", ((240, 240, 240), (150, 40, 190))),
    ("small orange dot", "flat", ((250, 140, 20),)),
)
CLASS_NAMES = tuple(c[0] for c in CLASSES)
_SHAPES = {1: "rect", 2: "ellipse", 3: "triangle", 4: "ellipse", 5: "rect", 6: "ellipse"}


@dataclass
class Scene:
    """image: (H, W, 3) uint8; gt: (H, W) uint8 class ids (every pixel labelled)."""

    image: np.ndarray
    gt: np.ndarray


def _fill(kind: str, colours: tuple, size: int, rng: np.random.Generator) -> np.ndarray:
    """A full-size texture of one class (cut out by the shape's mask)."""
    yy, xx = np.mgrid[:size, :size]
    if kind == "flat":
        tex = np.broadcast_to(np.array(colours[0], np.float32), (size, size, 3)).copy()
    elif kind == "stripes":
        period = int(rng.integers(6, 12))
        on = ((xx + yy) // (period // 2)) % 2 == 0
        tex = np.where(on[..., None], np.array(colours[0], np.float32), np.array(colours[1], np.float32))
    elif kind == "checker":
        cell = int(rng.integers(6, 12))
        on = ((xx // cell) + (yy // cell)) % 2 == 0
        tex = np.where(on[..., None], np.array(colours[0], np.float32), np.array(colours[1], np.float32))
    else:  # noise: textured background
        base = np.array(colours[0], np.float32)
        tex = base + rng.normal(0, 12, (size, size, 1)).astype(np.float32)
    return tex


def _draw_shape(shape: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    if shape == "rect":
        draw.rectangle(box, fill=1)
    elif shape == "ellipse":
        draw.ellipse(box, fill=1)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=1)
    return np.asarray(mask, dtype=bool)


def _random_box(rng: np.random.Generator, size: int, lo: float, hi: float) -> tuple[int, int, int, int]:
    """A box of side lo..hi of the image, aspect ratio 1:3..3:1, inside the image."""
    area = rng.uniform(lo, hi) ** 2
    aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
    w = int(np.clip(size * np.sqrt(area * aspect), 4, size - 2))
    h = int(np.clip(size * np.sqrt(area / aspect), 4, size - 2))
    x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
    return x0, y0, x0 + w, y0 + h


def _paint(img: np.ndarray, gt: np.ndarray, cls: int, mask: np.ndarray, rng: np.random.Generator) -> None:
    _name, kind, colours = CLASSES[cls]
    tex = _fill(kind, colours, img.shape[0], rng)
    img[mask] = tex[mask]
    gt[mask] = cls


def make_scene(seed: int, size: int = 224) -> Scene:
    """One scene: background, 3-5 shapes (one class twice), a touching pair, 1-2 small dots."""
    if size < 32:
        raise ValueError(f"synthetic scenes need size >= 32, got {size}")
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    gt = np.zeros((size, size), np.uint8)
    _paint(img, gt, 0, np.ones((size, size), bool), rng)
    classes = [int(c) for c in rng.choice(np.arange(1, 6), size=int(rng.integers(2, 4)), replace=False)]
    classes.append(classes[0])  # several instances of the same class
    for cls in classes:
        box = _random_box(rng, size, 0.18, 0.45)
        _paint(img, gt, cls, _draw_shape(_SHAPES[cls], box, size), rng)
    # A touching pair: a second shape starting exactly at the right edge of a rectangle.
    a, b = [int(c) for c in rng.choice(np.arange(1, 6), size=2, replace=False)]
    x0, y0, x1, y1 = _random_box(rng, size, 0.15, 0.25)
    shift = max(0, x1 - size * 2 // 3)  # keep room on the right for the touching shape
    x0, x1 = max(0, x0 - shift), x1 - shift
    _paint(img, gt, a, _draw_shape("rect", (x0, y0, x1, y1), size), rng)
    w = int(rng.integers(size // 8, size // 4))
    _paint(img, gt, b, _draw_shape(_SHAPES[b], (x1 + 1, y0, min(size - 1, x1 + 1 + w), y1), size), rng)
    for _ in range(int(rng.integers(1, 3))):  # small objects
        r = max(3, int(size * rng.uniform(0.025, 0.05)))
        cx, cy = int(rng.integers(r, size - r)), int(rng.integers(r, size - r))
        _paint(img, gt, 6, _draw_shape("ellipse", (cx - r, cy - r, cx + r, cy + r), size), rng)
    return Scene(np.clip(img, 0, 255).astype(np.uint8), gt)


def jitter(scene: Scene, seed: int, shift: int = 2, noise: float = 3.0) -> Scene:
    """A near-identical copy: shifted by up to ``shift`` pixels, with mild pixel noise."""
    rng = np.random.default_rng(seed)
    dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, size=2))
    img = np.roll(scene.image, (dy, dx), axis=(0, 1)).astype(np.float32)
    img += rng.normal(0, noise, img.shape)
    return Scene(np.clip(img, 0, 255).astype(np.uint8), np.roll(scene.gt, (dy, dx), axis=(0, 1)))


def palette() -> np.ndarray:
    """(256, 3) uint8 colours of the mask PNGs (class i -> its main colour, 255 -> white)."""
    colours = np.zeros((256, 3), np.uint8)
    for i, (_, _, fill) in enumerate(CLASSES):
        colours[i] = fill[-1]
    colours[255] = 255
    return colours


def write_scene(root: Path, image_id: str, scene: Scene) -> None:
    """Image as PNG, mask as a palette PNG (values = class ids), like VOC's masks."""
    Image.fromarray(scene.image).save(root / "images" / f"{image_id}.png")
    mask = Image.frombytes("P", (scene.gt.shape[1], scene.gt.shape[0]), scene.gt.tobytes())
    mask.putpalette(palette().ravel().tolist())
    mask.save(root / "masks" / f"{image_id}.png")


def write_synthetic(root: str | Path, count: int = 24, size: int = 224, seed: int = 0) -> Path:
    """Write ``count`` scenes in the folder layout (idempotent: existing files are kept)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    classes = root / "classes.txt"
    if not classes.exists():
        classes.write_text("\n".join(CLASS_NAMES) + "\n")
    for i in range(count):
        image_id = f"scene_{seed + i:05d}"
        if not (root / "images" / f"{image_id}.png").exists():
            write_scene(root, image_id, make_scene(seed + i, size))
    logger.info("synthetic benchmark: %d scenes of %dx%d in %s", count, size, size, root)
    return root


# Synthetic class id -> Pascal VOC id (arbitrary but fixed) for the VOC-layout fixture.
VOC_IDS = {0: 0, 1: 6, 2: 3, 3: 16, 4: 8, 5: 18, 6: 5}


def _void_border(gt: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` of a class boundary (VOC marks object outlines as void, 255)."""
    edge = np.zeros(gt.shape, bool)
    edge[:-1, :] |= gt[:-1, :] != gt[1:, :]
    edge[:, :-1] |= gt[:, :-1] != gt[:, 1:]
    for _ in range(width - 1):
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:, 1:] |= edge[:, :-1]
        edge = grown
    return edge


def write_voc_layout(root: str | Path, count: int = 3, size: int = 224, seed: int = 0) -> Path:
    """Synthetic scenes in Pascal VOC 2012's layout: ``VOCdevkit/VOC2012/{JPEGImages,
    SegmentationClass (palette PNG, 255 outlines), ImageSets/Segmentation/val.txt}``.
    Images are cropped to 4:3 like most VOC photos. Returns the ``VOCdevkit`` parent."""
    from .datasets import voc_colormap

    base = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    lut = np.zeros(256, np.uint8)
    for syn, voc in VOC_IDS.items():
        lut[syn] = voc
    ids = []
    for i in range(count):
        scene = make_scene(seed + i, size)
        height = size * 3 // 4
        image_id = f"2007_{seed + i:06d}"
        Image.fromarray(scene.image[:height]).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
        gt = lut[scene.gt[:height]]
        gt[_void_border(scene.gt[:height])] = 255
        mask = Image.frombytes("P", (gt.shape[1], gt.shape[0]), gt.tobytes())
        mask.putpalette(voc_colormap().ravel().tolist())
        mask.save(base / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return Path(root)
