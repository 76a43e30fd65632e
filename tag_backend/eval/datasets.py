"""Readers for segmentation datasets in their usual on-disk layouts.

Every reader returns a :class:`Dataset`: class list + samples (image path, mask path) + a lookup
table from raw mask values to class indices. Decoding a sample (:func:`load_sample`) yields the
RGB image and an ``int32`` ground-truth array of class indices, ``IGNORE`` (-1) for void pixels.

Layouts (``--root`` may point at the folder shown or at a parent holding it):

- ``voc20``: ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt}``;
  palette PNG masks, 0 = background, 1..20 classes, 255 = void.
- ``context59``: the MMSegmentation layout ``VOCdevkit/VOC2010/{JPEGImages,
  SegmentationClassContext, ImageSets/SegmentationContext/val.txt}``; masks 0 = background,
  1..59 = the 59 classes (MMSegmentation's converted ``trainval_merged.json``), 255 = void.
- ``ade150``: ``ADEChallengeData2016/{images,annotations}/validation``; masks 1..150, 0 = unlabelled.
- ``folder``: ``DIR/images/<stem>.<jpg|png|...>``, ``DIR/masks/<stem>.png`` (mask value = line
  index in ``DIR/classes.txt``, 255 = ignore), ``classes.txt`` one class a line, aliases after
  ``|`` (``tv monitor|television``); a class named ``background`` is the background class.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, TagError
from ..image_io import open_image

logger = logging.getLogger(__name__)

IGNORE = -1
_UNKNOWN = -2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DATASETS = ("voc20", "context59", "ade150", "folder", "synthetic")

VOC_CLASSES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)


class DatasetError(TagError):
    """The dataset as a whole cannot be read (missing folders, empty class list, ...)."""


class SampleError(TagError):
    """One image/mask pair cannot be used; counted and listed, the run goes on."""


@dataclass(frozen=True)
class EvalClass:
    """A ground-truth class: its name, optional aliases (also matched) and background flag."""

    name: str
    aliases: tuple[str, ...] = ()
    background: bool = False

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class Sample:
    image_id: str
    image_path: Path
    mask_path: Path


@dataclass
class Dataset:
    """classes[i] is class index i in decoded ground truth; lut maps raw mask values 0..255."""

    name: str
    root: Path
    classes: list[EvalClass]
    samples: list[Sample]
    lut: np.ndarray = field(repr=False)
    rgb_palette: np.ndarray | None = field(default=None, repr=False)

    @property
    def background_ids(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) if c.background]


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard Pascal VOC palette, (n, 3) uint8 (index i -> colour)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, _UNKNOWN, dtype=np.int32)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


def _find_base(root: Path, candidates: list[Path], required: list[str], layout: str) -> Path:
    if not root.exists():
        raise DatasetError(f"{root}: no such directory")
    for base in candidates:
        if all((base / r).exists() for r in required):
            return base
    missing = [r for r in required if not (candidates[0] / r).exists()]
    raise DatasetError(
        f"{root}: not a {layout} dataset: expected {', '.join(required)} under it "
        f"(or under {', '.join(str(c.relative_to(root)) for c in candidates[1:])}); "
        f"missing: {', '.join(missing)}"
    )


def _ids_from_split(split_file: Path) -> list[str]:
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{split_file}: the split lists no images")
    return ids


def _pairs(ids: list[str], images: Path, masks: Path, suffix: str) -> list[Sample]:
    return [Sample(i, images / f"{i}{suffix}", masks / f"{i}.png") for i in ids]


def read_voc20(root: str | Path, split: str = "val") -> Dataset:
    """Pascal VOC 2012 segmentation (background + 20 classes, 255 void)."""
    root = Path(root)
    split_rel = f"ImageSets/Segmentation/{split}.txt"
    base = _find_base(root, [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"],
                      ["JPEGImages", "SegmentationClass", split_rel], "Pascal VOC 2012")
    ids = _ids_from_split(base / split_rel)
    classes = [EvalClass("background", background=True)] + [EvalClass(n) for n in VOC_CLASSES]
    lut = _lut({**{i: i for i in range(21)}, 255: IGNORE})
    return Dataset("voc20", base, classes, _pairs(ids, base / "JPEGImages", base / "SegmentationClass", ".jpg"),
                   lut, voc_colormap())


def _packaged_names(filename: str) -> list[str]:
    text = resources.files("tag_backend.eval").joinpath("classes", filename).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_context59(root: str | Path, split: str = "val") -> Dataset:
    """Pascal Context-59 in MMSegmentation's layout (0 = background, 1..59, 255 void)."""
    root = Path(root)
    split_rel = f"ImageSets/SegmentationContext/{split}.txt"
    base = _find_base(root, [root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"],
                      ["JPEGImages", "SegmentationClassContext", split_rel], "Pascal Context (mmseg)")
    ids = _ids_from_split(base / split_rel)
    names = _packaged_names("context59.txt")
    classes = [EvalClass("background", background=True)] + [EvalClass(n) for n in names]
    lut = _lut({**{i: i for i in range(len(classes))}, 255: IGNORE})
    return Dataset("context59", base, classes,
                   _pairs(ids, base / "JPEGImages", base / "SegmentationClassContext", ".jpg"), lut)


def read_ade150(root: str | Path, split: str = "val") -> Dataset:
    """ADE20K SceneParsing (ADEChallengeData2016): ids 1..150, 0 = unlabelled (ignored)."""
    root = Path(root)
    sub = {"val": "validation", "validation": "validation", "train": "training",
           "training": "training"}.get(split)
    if sub is None:
        raise DatasetError(f"ADE20K split must be val or train, got {split!r}")
    req = [f"images/{sub}", f"annotations/{sub}"]
    base = _find_base(root, [root, root / "ADEChallengeData2016"], req, "ADE20K (ADEChallengeData2016)")
    images = sorted(p for p in (base / req[0]).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{base / req[0]}: no images")
    names = _packaged_names("ade150.txt")
    lut = _lut({0: IGNORE, **{i + 1: i for i in range(len(names))}})
    samples = [Sample(p.stem, p, base / req[1] / f"{p.stem}.png") for p in images]
    return Dataset("ade150", base, [EvalClass(n) for n in names], samples, lut)


def parse_class_list(path: Path) -> list[EvalClass]:
    """``classes.txt``: line i = mask value i; ``name|alias|...``; ``background`` is background."""
    if not path.is_file():
        raise DatasetError(f"{path}: class list not found (one class name a line)")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(f"{path}: the class list is empty")
    if len(lines) > 255:
        raise DatasetError(f"{path}: {len(lines)} classes; at most 255 fit in a PNG mask (255 = ignore)")
    classes = []
    for number, line in enumerate(lines, 1):
        texts = [t.strip() for t in line.split("|") if t.strip()]
        if not texts:
            raise DatasetError(f"{path}:{number}: empty class name (line i is mask value i-1)")
        classes.append(EvalClass(texts[0], tuple(texts[1:]), texts[0].lower() == "background"))
    return classes


def read_folder(root: str | Path, name: str = "folder") -> Dataset:
    """``images/`` + ``masks/`` (same stems, PNG) + ``classes.txt``."""
    root = Path(root)
    _find_base(root, [root], ["images", "masks", "classes.txt"], "folder")
    classes = parse_class_list(root / "classes.txt")
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{root / 'images'}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    lut = _lut({**{i: i for i in range(len(classes))}, 255: IGNORE})
    samples = [Sample(p.stem, p, root / "masks" / f"{p.stem}.png") for p in images]
    return Dataset(name, root, classes, samples, lut)


def read_dataset(kind: str, root: str | Path, split: str = "val", limit: int | None = None) -> Dataset:
    """Dispatch on ``kind``; ``synthetic`` is read as a folder (see :mod:`.synthetic`)."""
    readers = {"voc20": read_voc20, "context59": read_context59, "ade150": read_ade150}
    if kind in readers:
        dataset = readers[kind](root, split)
    elif kind in ("folder", "synthetic"):
        dataset = read_folder(root, kind)
    else:
        raise DatasetError(f"unknown dataset {kind!r}; choose one of: {', '.join(DATASETS)}")
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--limit must be >= 1, got {limit}")
        dataset.samples = dataset.samples[:limit]
    return dataset


def _mask_values(path: Path, palette: np.ndarray | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L", "I", "I;16", "1"):
                values = np.asarray(img, dtype=np.int64)
            elif mode in ("RGB", "RGBA") and palette is not None:
                return _rgb_to_index(np.asarray(img.convert("RGB")), palette, path)
            else:
                raise SampleError(f"{path.name}: mask mode {mode} is not an index/palette PNG")
    except FileNotFoundError:
        raise SampleError(f"{path}: mask not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"{path.name}: unreadable mask ({exc})") from None
    if values.size and (values.min() < 0 or values.max() > 255):
        raise SampleError(f"{path.name}: mask values outside 0..255")
    return values


def _rgb_to_index(rgb: np.ndarray, palette: np.ndarray, path: Path) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal = (palette[:, 0].astype(np.int64) << 16) | (palette[:, 1].astype(np.int64) << 8) | palette[:, 2]
    lookup = {int(c): i for i, c in reversed(list(enumerate(pal)))}
    uniq, inverse = np.unique(codes, return_inverse=True)
    bad = [hex(int(u)) for u in uniq if int(u) not in lookup]
    if bad:
        raise SampleError(f"{path.name}: RGB mask has colours not in the palette: {', '.join(bad[:5])}")
    return np.array([lookup[int(u)] for u in uniq], dtype=np.int64)[inverse].reshape(codes.shape)


def load_sample(dataset: Dataset, sample: Sample, max_pixels: int) -> tuple[Image.Image, np.ndarray]:
    """(RGB image, (H, W) int32 class indices with IGNORE); raises SampleError on bad input."""
    try:
        image = open_image(sample.image_path, max_pixels)
    except ImageError as exc:
        raise SampleError(str(exc)) from None
    values = _mask_values(sample.mask_path, dataset.rgb_palette)
    if values.shape != (image.height, image.width):
        raise SampleError(
            f"{sample.image_id}: mask is {values.shape[1]}x{values.shape[0]} but the image is "
            f"{image.width}x{image.height}"
        )
    gt = dataset.lut[values]
    unknown = np.unique(values[gt == _UNKNOWN])
    if unknown.size:
        raise SampleError(
            f"{sample.image_id}: mask has class ids not in the class list: "
            f"{', '.join(str(int(v)) for v in unknown[:10])} ({len(dataset.classes)} classes)"
        )
    return image, gt.astype(np.int32)
