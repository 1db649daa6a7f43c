"""Turn what a user uploads into clean square RGB images, or say exactly what is wrong with it."""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lifelong.errors import ImageCountError, InvalidConceptNameError, InvalidImageError

MIN_IMAGES, MAX_IMAGES = 1, 20
RECOMMENDED = "3–5"
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "MPO"}  # MPO: JPEGs from phone cameras
MAX_INPUT_PIXELS = 100_000_000  # as large as phone cameras go; beyond this it is a decompression bomb
# Pillow's own guard, kept consistent: it warns above its limit and refuses only above twice it, so images
# are measured from their header (below) and refused before a single pixel is decoded
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
WORKING_SIDE = 2048  # huge images are shrunk to this first, so the rest is cheap
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

ImageSource = str | Path | bytes | Image.Image


def _open(source: ImageSource, label: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as error:
        raise InvalidImageError(f"{label}: cannot read the file ({error.strerror}).") from error
    try:
        with warnings.catch_warnings():  # Pillow's warning between its limit and twice it: ours refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
        if image.format not in ALLOWED_FORMATS:
            raise InvalidImageError(
                f"{label}: {image.format} images are not supported; use JPEG, PNG or WebP."
            )
        _check_pixels(image.width, image.height, label)
        image.load()
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidImageError(_too_large(label)) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(
            f"{label}: this is not a readable image (is it a JPEG, PNG or WebP?)."
        ) from error
    return image


def _too_large(label: str, size: str = "") -> str:
    return (
        f"{label}: the image{size} is too large to open safely; "
        f"resize it below {MAX_INPUT_PIXELS // 1_000_000} megapixels."
    )


def _check_pixels(width: int, height: int, label: str) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise InvalidImageError(_too_large(label, f" ({width}×{height} px)"))


def _to_rgb(image: Image.Image) -> Image.Image:
    """First frame, EXIF-rotated, shrunk if huge, alpha over white, any mode (CMYK, 16-bit, palette) to RGB."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if max(image.size) > WORKING_SIDE:
        image = image.copy()
        image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.LANCZOS)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.clip(np.asarray(image, dtype=np.float32) / 257.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size``."""
    return ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def load_images(sources: Sequence[ImageSource], size: int) -> list[Image.Image]:
    """Validate and normalise a concept's images to ``size``×``size`` RGB.

    Raises ImageCountError for 0 or more than 20 images and InvalidImageError naming the first bad file.
    """
    if len(sources) < MIN_IMAGES:
        raise ImageCountError(f"Add at least one image of the concept ({RECOMMENDED} work best).")
    if len(sources) > MAX_IMAGES:
        raise ImageCountError(
            f"{len(sources)} images is too many: use at most {MAX_IMAGES} ({RECOMMENDED} work best)."
        )
    images = []
    for index, source in enumerate(sources):
        label = Path(source).name if isinstance(source, str | Path) else f"image {index + 1}"
        image = _open(source, label)
        width, height = image.size
        if min(width, height) < 16:
            raise InvalidImageError(
                f"{label}: {width}×{height} px is too small; use images of at least 64 px."
            )
        images.append(square(_to_rgb(image), size))
    return images


def validate_name(name: str) -> str:
    """A concept name: 1–32 characters of a–z, 0–9, '-' or '_', starting with a letter or digit.

    Upper case and surrounding spaces or angle brackets are forgiven; anything else is refused, so a name is
    always safe as a folder name and as a prompt token ``<name>``.
    """
    if not isinstance(name, str | None):
        raise InvalidConceptNameError("The concept name must be text, e.g. 'rex'.")
    cleaned = unicodedata.normalize("NFKC", name or "").strip().strip("<>").strip().lower()
    if not cleaned:
        raise InvalidConceptNameError("Give the concept a name, e.g. 'rex' (letters, digits, '-' or '_').")
    if not NAME_PATTERN.match(cleaned):
        raise InvalidConceptNameError(
            f"{name!r} cannot be a concept name: use 1–32 letters a–z, digits, '-' or '_' "
            "(no spaces, slashes, dots or emoji), starting with a letter or digit."
        )
    return cleaned


def validate_class_word(word: str) -> str:
    """An optional class word ('dog'): plain words only, since it goes into training prompts."""
    if not isinstance(word, str | None):
        raise InvalidConceptNameError("The class word must be text, e.g. 'dog'.")
    cleaned = " ".join((word or "").split()).lower()
    if len(cleaned) > 40 or any(ch in cleaned for ch in "<>|{}"):
        raise InvalidConceptNameError(
            f"{word!r} is not a usable class word: use a short plain word like 'dog'."
        )
    return cleaned
