"""Image intake and names: every bad input gets a typed error a user can act on; odd images are converted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import pattern_images
from PIL import Image

from lifelong.concepts import Session
from lifelong.errors import DuplicateConceptError, ImageCountError, InvalidConceptNameError, InvalidImageError
from lifelong.intake import load_images, validate_name
from lifelong.learner import LearnConfig, learn


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_text_file_named_png_is_refused(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("definitely not an image")
    with pytest.raises(InvalidImageError, match="photo.png.*not a readable image"):
        load_images([fake], 64)


def test_truncated_image_is_refused():
    data = encoded(pattern_images(1)[0], "PNG")
    with pytest.raises(InvalidImageError):
        load_images([data[: len(data) // 2]], 64)


def test_unsupported_format_is_named():
    with pytest.raises(InvalidImageError, match="BMP images are not supported"):
        load_images([encoded(pattern_images(1)[0], "BMP")], 64)


@pytest.mark.parametrize("count", [0, 21, 50])
def test_image_count_outside_1_to_20_is_refused(count):
    with pytest.raises(ImageCountError, match="3–5"):
        load_images(pattern_images(1) * count, 64)


def test_one_image_is_accepted():
    assert len(load_images(pattern_images(1), 32)) == 1


def test_cmyk_alpha_16bit_palette_and_animated_become_rgb_squares():
    base = pattern_images(1, size=40)[0]
    cmyk = encoded(base.convert("CMYK"), "JPEG")
    rgba = Image.new("RGBA", (50, 30), (255, 0, 0, 0))  # fully transparent red: must come out white
    gray16 = Image.fromarray((np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16))
    palette = encoded(base.convert("P"), "PNG")
    frames = [Image.new("RGB", (40, 40), c) for c in ((0, 0, 255), (0, 255, 0))]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    webp = encoded(base, "WEBP")
    out = load_images(
        [cmyk, encoded(rgba, "PNG"), encoded(gray16, "PNG"), palette, animated.getvalue(), webp], 32
    )
    assert all(image.mode == "RGB" and image.size == (32, 32) for image in out)
    assert np.asarray(out[1]).min() > 250  # transparency composited over white
    assert np.asarray(out[2])[0, 0, 0] < np.asarray(out[2])[-1, -1, 0]  # the 16-bit ramp survives
    assert tuple(np.asarray(out[4])[16, 16]) == (0, 0, 255)  # the first frame of the animation


def test_huge_image_is_shrunk_and_centre_cropped():
    wide = np.zeros((300, 12000, 3), dtype=np.uint8)
    wide[:, 5800:6200] = (255, 255, 255)  # a white band in the middle: the centre crop must keep it
    out = load_images([encoded(Image.fromarray(wide), "PNG")], 16)[0]
    assert out.size == (16, 16) and np.asarray(out)[8, 8].min() > 200


def test_exif_rotation_is_applied():
    tall = Image.new("RGB", (20, 40), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 20, 20))  # top half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = load_images([encoded(tall, "JPEG", exif=exif)], 20)[0]
    array = np.asarray(out).mean(axis=2)
    assert array[:, 15:].mean() > 200 and array[:, :5].mean() < 60  # white moved to the right


@pytest.mark.parametrize(
    "name", ["", "   ", "../etc", "a/b", "rex.png", "🐶dog", "has space", "x" * 40, "-lead"]
)
def test_unsafe_or_empty_names_are_refused(name):
    with pytest.raises(InvalidConceptNameError):
        validate_name(name)


@pytest.mark.parametrize(
    ("given", "expected"), [("Rex", "rex"), (" <rex_2> ", "rex_2"), ("my-mug", "my-mug")]
)
def test_names_are_normalised(given, expected):
    assert validate_name(given) == expected


def test_bad_input_to_learn_touches_nothing(tiny_base, tmp_path):
    session = Session.create(tmp_path / "s", "tiny")
    learn(tiny_base, session, pattern_images(), "rex", "dog", LearnConfig(method="finetune", steps=2))
    manifest = (session.root / "manifest.json").read_bytes()
    bad_calls = [
        (DuplicateConceptError, dict(images=pattern_images(), name="rex")),
        (InvalidConceptNameError, dict(images=pattern_images(), name="../rex")),
        (ImageCountError, dict(images=[], name="mug")),
        (InvalidImageError, dict(images=[b"not an image"], name="mug")),
    ]
    for error, kwargs in bad_calls:
        with pytest.raises(error):
            learn(
                tiny_base, session, class_word="mug", config=LearnConfig(method="finetune", steps=2), **kwargs
            )
    assert (session.root / "manifest.json").read_bytes() == manifest
    assert Session.open(session.root).names() == ["rex"]
