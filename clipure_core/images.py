"""Opening user images: one clear InputError for anything that is not a usable photo."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import InputError

MAX_FILE_BYTES = 20 * 1024 * 1024  # what the app accepts as an upload
MAX_PIXELS = 40_000_000  # decoded size; Pillow's bomb guard fires before memory is used


def open_image(source: str | Path | Image.Image) -> Image.Image:
    """A loaded PIL image from a path (or an image already open), or an InputError saying
    what was wrong and what is accepted."""
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    if not path.is_file():
        raise InputError(f"image not found: {path.name}")
    size = path.stat().st_size
    if size == 0:
        raise InputError("the image file is empty.")
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"the image file is {size / 2**20:.1f} MB; at most {MAX_FILE_BYTES // 2**20} MB."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise InputError(
                    f"the image is {image.width} x {image.height} pixels; at most "
                    f"{MAX_PIXELS // 1_000_000} megapixels."
                )
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"the image is too large to decode safely ({error}).") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputError(
            "the file is not a readable image (PNG, JPEG, WebP, GIF, BMP or TIFF); "
            f"details: {error}"
        ) from error
    return image
