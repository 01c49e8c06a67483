"""User images: one clear InputError for anything that is not a usable photo, and one place
that turns any accepted image (16-bit, palette, transparent, CMYK, animated, rotated) into the
upright 8-bit RGB picture the model sees."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

MAX_FILE_BYTES = 20 * 1024 * 1024  # what the app accepts as an upload (gradio's "20mb" too)
MAX_PIXELS = 40_000_000  # decoded size; checked from the header, before any pixel is decoded
MAX_ASPECT_RATIO = 20  # longer side / shorter side; beyond it resizing would explode (see below)
# Pillow's format names; "JPEG" also opens camera JPEGs that hold several pictures (MPO).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit (and 32-bit) grey levels


def open_image(source: str | Path | Image.Image) -> Image.Image:
    """A loaded PIL image from a path (or an image already open), or an InputError saying
    what was wrong and what is accepted.

    Only the formats in ACCEPTED_FORMATS are parsed at all. The size limits are checked from
    the file's header, so a small file that declares a huge picture (a decompression bomb) is
    refused before its pixels are decoded.
    """
    if isinstance(source, Image.Image):
        check_dimensions(source.width, source.height)
        _decode(source, "")
        return source
    path = Path(source)
    if not path.is_file():
        raise InputError(f"image not found: {path.name}")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"the image file is empty (0 bytes); upload a {ACCEPTED} image.")
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"the image file is {size:,} bytes; at most {MAX_FILE_BYTES:,} bytes "
            f"({MAX_FILE_BYTES // 2**20} MB)."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(
            f"the image declares far more than {MAX_PIXELS // 1_000_000} megapixels (a "
            "decompression bomb?); it was not decoded. Send a smaller image."
        ) from error
    except UnidentifiedImageError as error:
        raise InputError(_unrecognised(path)) from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise _damaged(error, str(path)) from error
    try:
        check_dimensions(image.width, image.height)
        _decode(image, str(path))
    except InputError:
        image.close()
        raise
    return image


def _decode(image: Image.Image, path: str) -> None:
    """Decode the pixels, turning Pillow's decoding errors into an InputError."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise _damaged(error, path) from error


def _damaged(error: Exception, path: str) -> InputError:
    detail = str(error).replace(path, Path(path).name) if path else str(error)
    return InputError(
        f"the image file is truncated or damaged and could not be decoded ({detail}); "
        f"send a complete {ACCEPTED} file."
    )


def check_dimensions(width: int, height: int) -> None:
    """Refuse images over MAX_PIXELS or with an aspect ratio over MAX_ASPECT_RATIO."""
    if width * height > MAX_PIXELS:
        raise InputError(
            f"the image is {width} x {height} pixels; at most {MAX_PIXELS // 1_000_000} megapixels."
        )
    check_aspect_ratio(width, height)


def check_aspect_ratio(width: int, height: int) -> None:
    """Refuse empty images and aspect ratios beyond MAX_ASPECT_RATIO.

    The model sees the centre square after the shortest side is resized to its input size,
    so a 2 x 10000 strip would first be blown up to 224 x 1,120,000 pixels (750 MB) to keep
    1/5000 of it. Such strips are refused (crop them first) rather than silently cropped, so
    that every accepted image goes through exactly the same preprocessing.
    """
    if min(width, height) < 1:
        raise InputError(f"the image is {width} x {height} pixels: it has no pixels.")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(
            f"the image is {width} x {height} pixels: one side is {ratio:.0f} times the other, "
            f"at most {MAX_ASPECT_RATIO} is allowed; crop it closer to a square first."
        )


def normalize_image(image: Image.Image) -> Image.Image:
    """The 8-bit RGB picture the model sees, from any image Pillow opened.

    - animated images (GIF, APNG, WebP): the first frame, on purpose (an attack works on one
      picture; the frame shown as a still is the first);
    - EXIF orientation is honoured (an unreadable EXIF block is ignored);
    - 16-bit grey ('I;16*', and 32-bit 'I', read as 16-bit data) is scaled to 8 bits with
      rounding (v * 255 / 65535), not clipped as Pillow's convert('RGB') would (16-bit RGB
      PNGs Pillow already opens as 8-bit RGB; 32-bit float 'F' is read as 0-255, as Pillow
      does);
    - transparency (alpha channels, palette or tRNS transparency) is composited on white;
    - CMYK, palette, YCbCr, 1-bit and grey are converted to RGB (CMYK without colour
      management: an embedded ICC profile is not applied).
    """
    image = _first_frame(image)
    with contextlib.suppress(OSError, ValueError, SyntaxError, TypeError, KeyError):
        image = ImageOps.exif_transpose(image)  # a broken EXIF block: pixels as stored
    if image.mode in _INTEGER_MODES:
        image = _sixteen_to_eight_bits(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError:
        raise InputError(
            f"images in colour mode {image.mode} are not supported; save it as RGB."
        ) from None


def _first_frame(image: Image.Image) -> Image.Image:
    """Frame 0 of an animated image (the caller's image is left at its frame)."""
    if not getattr(image, "is_animated", False) or image.tell() == 0:
        return image
    position = image.tell()
    image.seek(0)
    first = image.copy()
    image.seek(position)
    return first


def _sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """Grey levels in [0, 65535] -> 'L' (or 'LA' where a tRNS grey level was transparent)."""
    levels = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    grey = Image.fromarray(((levels + 128) // 257).astype(np.uint8))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        grey.putalpha(Image.fromarray(np.where(levels == transparent, 0, 255).astype(np.uint8)))
    return grey


def _unrecognised(path: Path) -> str:
    """What an unreadable file seems to be, and what is accepted instead."""
    with path.open("rb") as file:
        head = file.read(1024)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"%PDF"):
        what = "a PDF document"
    elif b"<svg" in text or (text.startswith(b"<?xml") and b"svg" in text):
        what = "an SVG (vector) image"
    elif head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        what = "a HEIC/AVIF image"
    else:
        return (
            f"the file is not a readable image: it is not a {ACCEPTED} file, or it is too "
            "damaged to be recognised."
        )
    return f"the file is {what}, which is not accepted; export it as a {ACCEPTED} image."
