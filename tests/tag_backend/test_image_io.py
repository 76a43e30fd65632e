"""Every kind of bad or unusual image file gives RGB or a clear ImageError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tag_backend.errors import ImageError
from tag_backend.image_io import open_image


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "CMYK", "1", "I;16", "I", "F"])
def test_any_mode_becomes_rgb(mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        (np.arange(600).reshape(20, 30) * 50).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    out = open_image(img)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(open_image(path))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200


def test_transparent_background_becomes_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert np.asarray(open_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert open_image(path).size == (20, 40)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, _ = np.asarray(open_image(path))[0, 0]
    assert r > 200 and g < 50


def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(0, 0, 255), (0, 255, 0)]]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    assert np.asarray(open_image(path))[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "not an image"),
    (_bytes(Image.new("RGB", (64, 64)), "PNG")[:60], "corrupt or truncated"),
    (_bytes(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:200], "corrupt or truncated"),
])
def test_bad_files_raise_clear_errors(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        open_image(path)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path)


def test_unreadable_file(tmp_path):
    import os

    path = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(path)
    os.chmod(path, 0)
    # As root permission bits are not enforced; /proc/self/mem fails on read() for everyone.
    unreadable = "/proc/self/mem" if os.access(path, os.R_OK) else path
    with pytest.raises(ImageError, match="cannot read"):
        open_image(unreadable)


def test_decompression_bomb_guard(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ImageError, match="more than the limit"):
        open_image(path, max_pixels=1_000_000)
    assert open_image(path, max_pixels=10_000_000).size == (3000, 3000)
