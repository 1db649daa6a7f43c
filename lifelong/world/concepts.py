"""Export the held-out emoji as ready-made concepts: assets/concepts/<slug>/0..4.png + index.json.

Why ship them: the app, the tests and the benchmark need "new concept" images without the emoji font.
Each concept gets 5 reference images (128×128) with different backgrounds, positions and sizes, each with
a caption file (`0.txt`: "on a red background", kohya's convention) saying what the image shows besides the
concept; the index gives its name (a concept-safe slug), its Unicode name and a class word the base model
knows; four are marked as the app's examples.

`python -m lifelong.world.concepts --out assets/concepts` (needs the font).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .data import COLORS, HELD_OUT, Placed, Scene, render, world_words

REFERENCES = 5
# the app's one-click examples: concepts the bundled world learns visibly (2026-12-02 learnability run on all
# 26, docs/BENCHMARKS.md: each identified 8/8); not the octopus, whose coral the bundled VAE cannot hold
EXAMPLES = ("hedgehog", "llama", "sushi", "aubergine")
_LAYOUTS = (("centre", "medium"), ("left", "small"), ("centre", "big"), ("right", "medium"), ("top", "small"))


def export(out: Path, seed: int = 0, size: int = 128) -> None:
    words = set(world_words())
    colors = list(COLORS)
    index = []
    for k, emoji in enumerate(HELD_OUT):
        if emoji.category not in words:
            raise ValueError(
                f"class word {emoji.category!r} of {emoji.name!r} is not in the world vocabulary"
            )
        folder = out / emoji.slug
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, k])
        for j, (position, size_name) in enumerate(_LAYOUTS[:REFERENCES]):
            color = colors[(3 * k + 2 * j) % len(colors)]
            scene = Scene(color, (Placed(emoji, position, size_name),), "")
            render(scene, rng, size).save(folder / f"{j}.png", optimize=True)
            (folder / f"{j}.txt").write_text(f"on a {color} background\n")
        entry = {"name": emoji.slug, "emoji_name": emoji.name, "class_word": emoji.category}
        index.append(entry | ({"example": True} if emoji.slug in EXAMPLES else {}))
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("assets/concepts"))
    args = parser.parse_args()
    export(args.out)


if __name__ == "__main__":
    main()
