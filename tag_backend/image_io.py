"""Robust image decoding: any file a user may throw at the backend becomes RGB or a clear error.

Handles EXIF orientation, every PIL mode (RGBA, LA, L, P, CMYK, I;16, I, F, 1), animated
GIF/WebP/APNG (first frame), decompression bombs (pixel cap), 0-byte, truncated and non-image
files.
"""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000


def open_image(source: str | Path | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (path, bytes or PIL image) to an EXIF-transposed RGB image.

    Raises :class:`ImageError` with a one-line reason for anything unusable.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(_first_frame(source), max_pixels)
    name = "<bytes>"
    if isinstance(source, (str, Path)):
        name = str(source)
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{name}: file not found")
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    else:
        data = bytes(source)
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img, max_pixels, name)
            img = _first_frame(img)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image too large (decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    return _to_rgb(img, max_pixels, name)


def _check_pixels(img: Image.Image, max_pixels: int, name: str) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: image has {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} "
            "(TAG_MAX_IMAGE_PIXELS)"
        )


def _first_frame(img: Image.Image) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    return img


def _to_rgb(img: Image.Image, max_pixels: int, name: str = "<image>") -> Image.Image:
    _check_pixels(img, max_pixels, name)
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception as exc:  # broken EXIF must not lose the image
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite transparency on white: a transparent background is not black content.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img
