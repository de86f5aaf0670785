"""One image file or array -> one normalised image and its content id.

Normalising first (8-bit ``L`` or ``RGB``, orientation applied, no metadata) makes the id a property
of what the picture looks like, not of how it was stored: the same pixels saved as PNG or under
another name get the same id.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bilaf.errors import InvalidInputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "decode_image_file",
    "image_id",
    "is_image_name",
    "normalize_image",
    "pixels_id",
    "png_bytes",
]

# Files with any other extension (README.md, labels.csv, .DS_Store...) are ignored, not unreadable.
IMAGE_EXTENSIONS = frozenset(
    {
        ".bmp",
        ".gif",
        ".jpe",
        ".jpeg",
        ".jpg",
        ".pbm",
        ".pgm",
        ".png",
        ".pnm",
        ".ppm",
        ".tif",
        ".tiff",
        ".webp",
    }
)
# PNG settings are part of the data format: changing them changes every copied file in data/.
_PNG_SETTINGS = {"format": "PNG", "optimize": False, "compress_level": 6}
_ID_LENGTH = 16


class UnreadableImageError(InvalidInputError):
    """An input file is not a decodable image (corrupt, truncated, empty, wrong format...)."""


def is_image_name(name: str) -> bool:
    """Whether a file called ``name`` is meant to be an image: an image extension, not hidden."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def normalize_image(image: Image.Image) -> Image.Image:
    """Return ``image`` as a fresh 8-bit ``L`` (grayscale) or ``RGB`` image without metadata.

    EXIF orientation is applied, transparency is composited onto white, 16-bit grayscale is scaled
    to 8 bits (65535 -> 255). Float images are rejected: their value range is unknown.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(image, dtype=np.int64).clip(0, 65535)
        result = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif mode == "F":
        raise UnreadableImageError("unsupported image mode 'F' (32-bit float pixels)")
    elif mode in ("1", "L"):
        result = image.convert("L")
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flattened = Image.alpha_composite(background, rgba)
        result = flattened.convert("L" if mode in ("LA", "La") else "RGB")
    else:
        result = image.convert("RGB")
    # A fresh image carries no .info (ICC profile, dpi, text chunks) into the PNG we write.
    return Image.frombytes(result.mode, result.size, result.tobytes())


def image_id(image: Image.Image) -> str:
    """Content hash of a normalised image: sha256 over mode, size and pixels (16 hex chars)."""
    return pixels_id(image.mode, image.width, image.height, image.tobytes())


def pixels_id(mode: str, width: int, height: int, pixels: bytes) -> str:
    """:func:`image_id` of a normalised image given as raw row-major pixel bytes (no PIL round trip)."""
    header = f"{mode}:{width}x{height}:".encode()
    return hashlib.sha256(header + pixels).hexdigest()[:_ID_LENGTH]


def decode_image_file(path: Path) -> Image.Image:
    """Decode an image file completely and normalise it (truncation is detected here, not later)."""
    try:
        size = Path(path).stat().st_size
    except OSError as error:
        raise UnreadableImageError(f"cannot read file ({error.strerror or error})") from error
    if size == 0:
        raise UnreadableImageError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            return normalize_image(image)
    except Image.UnidentifiedImageError as error:
        raise UnreadableImageError("not an image (format not recognised)") from error
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot decode image ({type(error).__name__}: {error})") from error


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding a copied pool image is stored with (fixed settings: reproducible bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, **_PNG_SETTINGS)
    return buffer.getvalue()
