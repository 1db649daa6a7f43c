"""The bundled world: 64×64 emoji scenes with template captions, generated deterministically.

Why emoji: they are freely licensed (Noto Color Emoji: SIL OFL 1.1 font, Apache-2.0 artwork), come with
names (Unicode character names, e.g. "cat face"), and are simple enough that models trained on a 2-core CPU
in an hour learn them. Each scene is a coloured background with one or two emoji placed at a named position
and size; its caption says so in words. A fixed held-out list of emoji never appears in base training: they
are the "new concepts" users and the benchmark teach the model.

A *broad* cache (``--broad SHARE``) draws that share of its scenes from every other emoji the font renders
(~1,300, :func:`broad_pool`), captioned by class word only ("an animal on a blue background"): their names
are not in the vocabulary. That is the base's prior, as SD's is wide: a model that has drawn 83 emoji has
little to compose an 84th from.

`python -m lifelong.world.data --out runs/world/data --n 30000` renders a training cache (needs the font).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..colors import NAMED_COLORS

# Debian's path; $LIFELONG_EMOJI_FONT names a copy (a GPU machine that has no Debian packages gets one carried)
FONT_PATH = Path(os.environ.get("LIFELONG_EMOJI_FONT", "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"))
_FONT_SIZE = 109  # the only size the bitmap font loads at (see NOTES.md)
_GLYPH = 136  # rendered glyph box is 136×128; we pad it to a square


@dataclass(frozen=True)
class Emoji:
    """One emoji: its character, its Unicode name in lower case, and the class word it belongs to."""

    char: str
    category: str
    named: bool = True  # captions say its name; else only its class word (a broad-pool emoji)

    @property
    def name(self) -> str:
        return unicodedata.name(self.char).lower()

    @property
    def slug(self) -> str:
        """Concept-safe folder name: lowercase [a-z0-9_-]."""
        return self.name.replace(" ", "_").replace("-", "_")

    @property
    def caption_name(self) -> str:
        return self.name if self.named else self.category


def _emoji(category: str, chars: str) -> tuple[Emoji, ...]:
    return tuple(Emoji(c, category) for c in chars)


# Chosen to be recognisable and visually distinct at 64×64; names never contain a colour word, so a
# caption's only colour is the background's.
HELD_IN: tuple[Emoji, ...] = (
    _emoji("animal", "🐶🐱🐰🐻🐼🐯🦁🐮🐷🐸🐔🐧🐦🦆🦉🐴🦄🐝🦋🐌🐢🐍🐬🐳🐟🦀🐘🦒🦊")
    + _emoji("food", "🍌🍇🍉🍓🍒🍍🍅🥕🍄🍞🍔🍕🌭🍩🍪🎂🍦🍭")
    + _emoji("vehicle", "🚗🚌🚒🚜🚲🚂✈🚁⛵🚢")
    + _emoji("object", "⚽🏀🎈🎁🔑🔔💡📷⏰🎸🏠🌂📚🔨⚓🌙🌈🔥")
    + _emoji("plant", "🌵🌻🌲🌴🍀🌹🌷🍁")
)

# Never rendered into base training data: the new concepts of tests, the app's examples and the benchmark.
HELD_OUT: tuple[Emoji, ...] = (
    _emoji("animal", "🐙🦔🦥🦩🐿🦜🦚🦙🦘🦦")
    + _emoji("food", "🥑🥐🥨🧁🍆🌮🍣")
    + _emoji("vehicle", "🚀🛸🛴")
    + _emoji("object", "🏆🎻⌛🧸🪁🔭")
)

CATEGORIES: tuple[str, ...] = ("animal", "food", "vehicle", "object", "plant")

COLORS: dict[str, tuple[int, int, int]] = NAMED_COLORS

# Blocks of single code points where the font has emoji; those that render empty are dropped.
_RANGES = ((0x2300, 0x23FF), (0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F000, 0x1FAFF))
# Class words of the broad pool by Unicode block (approximate, as web captions are); the rest are objects.
_CATEGORY_RANGES = (
    ("animal", ((0x1F400, 0x1F43E), (0x1F980, 0x1F9AE), (0x1FAB0, 0x1FABF))),
    (
        "food",
        ((0x1F32D, 0x1F32F), (0x1F345, 0x1F37F), (0x1F950, 0x1F96F), (0x1F9C0, 0x1F9CB), (0x1FAD0, 0x1FADF)),
    ),
    ("plant", ((0x1F330, 0x1F344),)),
    ("vehicle", ((0x1F680, 0x1F6C5), (0x1F6E9, 0x1F6FC))),
)

# Object centre as a fraction of the image side, and how captions say it.
POSITIONS: dict[str, tuple[float, float, str]] = {
    "left": (0.3, 0.5, "on the left"),
    "right": (0.7, 0.5, "on the right"),
    "top": (0.5, 0.3, "at the top"),
    "bottom": (0.5, 0.7, "at the bottom"),
    "centre": (0.5, 0.5, "in the centre"),
}

# Object side as a fraction of the image side; medium is the unmarked size.
SIZES: dict[str, float] = {"small": 0.42, "medium": 0.58, "big": 0.78}
# the shipped model's training scenes; it draws one of two named objects twice or a blend
# (docs/BENCHMARKS.md, "what the base draws for two objects it knows"): the next round trains on more
PAIR_SHARE = 0.25

_SINGLE_TEMPLATES = (
    "{a_name} on {a_color} background",
    "{a_name} on {a_color} background",
    "{a_name} on {a_color} background",
    "{a_name} {where} on {a_color} background",
    "{a_size_name} {where} on {a_color} background",
    "{a_size_name} on {a_color} background",
    "{a_name}",
    "{name}, {color} background",
    "{a_category} on {a_color} background",
)
_PAIR_TEMPLATES = (
    "{a_name} {where} and {a_name2} {where2} on {a_color} background",
    "{a_name} and {a_name2} on {a_color} background",
)


def with_article(phrase: str) -> str:
    """'a' or 'an' before a phrase, by its first letter."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class Placed:
    """An emoji placed in a scene."""

    emoji: Emoji
    position: str
    size: str


@dataclass(frozen=True)
class Scene:
    """A background colour, one or two placed emoji, and the caption that describes them."""

    color: str
    objects: tuple[Placed, ...]
    caption: str


def world_words() -> list[str]:
    """Every word a base-training caption can contain, sorted: the tokenizer's vocabulary."""
    words: set[str] = {","}
    for emoji in HELD_IN:
        words.update(emoji.name.split())
    words.update(CATEGORIES)
    words.update(COLORS)
    words.update(s for s in SIZES if s != "medium")
    for _, _, phrase in POSITIONS.values():
        words.update(phrase.split())
    words.update({"a", "an", "and", "on", "background"})
    return sorted(words)


def renderable_emoji() -> list[str]:
    """Every single code point the emoji font draws as a non-empty glyph, held-out concepts included."""
    chars = []
    for low, high in _RANGES:
        for code in range(low, high + 1):
            char = chr(code)
            try:
                alpha = np.asarray(_glyph(char, 32))[..., 3]
            except (OSError, ValueError):
                continue
            if alpha.max() > 0:
                chars.append(char)
    for emoji in HELD_OUT:  # a few are written with a variation selector elsewhere; keep them all
        if emoji.char not in chars:
            chars.append(emoji.char)
    return chars


def category_of(char: str) -> str:
    code = ord(char)
    for category, ranges in _CATEGORY_RANGES:
        if any(low <= code <= high for low, high in ranges):
            return category
    return "object"


@cache
def broad_pool() -> tuple[Emoji, ...]:
    """Every renderable emoji that is neither held in nor held out, captioned by class word only."""
    excluded = {e.char for e in HELD_IN + HELD_OUT}
    return tuple(Emoji(c, category_of(c), named=False) for c in renderable_emoji() if c not in excluded)


def sample_scene(
    rng: np.random.Generator,
    pool: tuple[Emoji, ...] = HELD_IN,
    extra: tuple[Emoji, ...] = (),
    extra_share: float = 0.0,
    pairs: float = PAIR_SHARE,
) -> Scene:
    """Draw a scene and its caption; ``pairs`` of the scenes hold two emoji side by side or stacked. With
    ``extra``, ``extra_share`` of the scenes draw their emoji from it instead (the stream without it is
    unchanged)."""
    if extra and rng.random() < extra_share:
        pool = extra
    color = list(COLORS)[rng.integers(len(COLORS))]
    if rng.random() < pairs:
        first, second = rng.choice(len(pool), size=2, replace=False)
        pos1, pos2 = (("left", "right"), ("top", "bottom"))[rng.integers(2)]
        if rng.random() < 0.5:
            pos1, pos2 = pos2, pos1
        objects: tuple[Placed, ...] = (
            Placed(pool[first], pos1, "small"),
            Placed(pool[second], pos2, "small"),
        )
        template = _PAIR_TEMPLATES[rng.integers(len(_PAIR_TEMPLATES))]
    else:
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        if size == "big":
            position = "centre"  # a big emoji fills the image; any other position would crop it
        objects = (Placed(pool[rng.integers(len(pool))], position, size),)
        template = _SINGLE_TEMPLATES[rng.integers(len(_SINGLE_TEMPLATES))]
    return Scene(color, objects, _caption(template, color, objects))


def _caption(template: str, color: str, objects: tuple[Placed, ...]) -> str:
    first = objects[0]
    size_word = "" if first.size == "medium" else first.size + " "
    fields = {
        "name": first.emoji.caption_name,
        "a_name": with_article(first.emoji.caption_name),
        "a_size_name": with_article(size_word + first.emoji.caption_name),
        "a_category": with_article(first.emoji.category),
        "where": POSITIONS[first.position][2],
        "color": color,
        "a_color": with_article(color),
    }
    if len(objects) == 2:
        fields["a_name2"] = with_article(objects[1].emoji.caption_name)
        fields["where2"] = POSITIONS[objects[1].position][2]
    return template.format(**fields)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of scene `index` under `seed`: any scene can be regenerated on its own."""
    return np.random.default_rng([seed, index])


class FontMissingError(RuntimeError):
    """The emoji font that renders the world is not installed."""


@cache
def _font() -> ImageFont.FreeTypeFont:
    if not FONT_PATH.exists():
        raise FontMissingError(
            f"the world is drawn with Noto Color Emoji, expected at {FONT_PATH}: install it with "
            "`apt-get install fonts-noto-color-emoji` (Debian/Ubuntu)"
        )
    return ImageFont.truetype(str(FONT_PATH), _FONT_SIZE)


@cache
def _glyph(char: str, side: int) -> Image.Image:
    """The emoji as an RGBA square of `side` pixels (rendered once at the font's size, then scaled)."""
    canvas = Image.new("RGBA", (_GLYPH, _GLYPH), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, (_GLYPH - 128) // 2), char, font=_font(), embedded_color=True)
    return canvas.resize((side, side), Image.Resampling.LANCZOS)


def render(scene: Scene, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Draw a scene; `rng` adds small jitter to the background tint and object placement."""
    tint = np.clip(np.array(COLORS[scene.color]) + rng.integers(-12, 13, size=3), 0, 255)
    image = Image.new("RGBA", (size, size), (*map(int, tint), 255))
    for placed in scene.objects:
        side = round(SIZES[placed.size] * size)
        cx, cy, _ = POSITIONS[placed.position]
        jitter = rng.integers(-size // 20, size // 20 + 1, size=2)
        x = int(np.clip(round(cx * size - side / 2) + jitter[0], 0, size - side))
        y = int(np.clip(round(cy * size - side / 2) + jitter[1], 0, size - side))
        image.alpha_composite(_glyph(placed.emoji.char, side), (x, y))
    return image.convert("RGB")


def generate(
    seed: int,
    index: int,
    pool: tuple[Emoji, ...] = HELD_IN,
    size: int = 64,
    broad: float = 0.0,
    pairs: float = PAIR_SHARE,
) -> tuple[Image.Image, Scene]:
    """Scene `index` of the world drawn with `seed`: the same arguments always give the same pixels.
    ``broad``: the share of scenes drawn from :func:`broad_pool` instead of ``pool``; ``pairs``: the share
    holding two emoji."""
    rng = scene_rng(seed, index)
    scene = sample_scene(rng, pool, broad_pool() if broad else (), broad, pairs)
    return render(scene, rng, size), scene


def _render_range(
    seed: int, start: int, stop: int, broad: float, pairs: float
) -> tuple[np.ndarray, list[str]]:
    scenes = [generate(seed, i, broad=broad, pairs=pairs) for i in range(start, stop)]
    return np.stack([np.asarray(image) for image, _ in scenes]), [scene.caption for _, scene in scenes]


def render_cache(
    out: Path, n: int, seed: int, workers: int = 1, broad: float = 0.0, pairs: float = PAIR_SHARE
) -> None:
    """Write `n` scenes as images.npy (uint8, N×64×64×3) and captions.json next to each other.

    Scenes are drawn per index, so the cache is the same for any number of `workers`."""
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(1, min(2000, -(-n // (4 * workers))))
    if broad:
        broad_pool()  # found once, before the workers fork
    ranges = [(seed, start, min(n, start + chunk), broad, pairs) for start in range(0, n, chunk)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(_render_range, ranges)
    else:
        parts = [_render_range(*r) for r in ranges]
    np.save(out / "images.npy", np.concatenate([images for images, _ in parts]))
    (out / "captions.json").write_text(json.dumps([c for _, captions in parts for c in captions]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/world/data"))
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="render in this many processes")
    parser.add_argument(
        "--broad", type=float, default=0.0, help="share of scenes drawn from every other emoji (0-1)"
    )
    parser.add_argument(
        "--pairs",
        type=float,
        default=PAIR_SHARE,
        help=f"share of scenes holding two emoji (default {PAIR_SHARE}, the shipped model's)",
    )
    args = parser.parse_args()
    render_cache(args.out, args.n, args.seed, args.workers, args.broad, args.pairs)


if __name__ == "__main__":
    main()
