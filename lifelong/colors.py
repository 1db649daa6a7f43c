"""Colour words a prompt may ask for as a background, as sRGB: the bundled world draws its scenes in them
and the metrics read a generation's background against them (any base can be asked for these colours)."""

from __future__ import annotations

NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 225, 50),
    "green": (50, 170, 60),
    "blue": (40, 90, 220),
    "purple": (130, 60, 190),
    "pink": (245, 150, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
