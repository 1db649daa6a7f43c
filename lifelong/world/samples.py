"""Draw a grid of base-model generations with their prompts written under them (docs/world_samples.png).

`python -m lifelong.world.samples --out docs/world_samples.png`
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .evaluate import BASE_MODEL, generate_images, load_pipeline

PROMPTS = (
    "a cat face on a red background",
    "a hamburger on a blue background",
    "a sailboat on a yellow background",
    "a sunflower on a purple background",
    "an elephant on a white background",
    "a guitar on a green background",
    "a big penguin on an orange background",
    "a small bus on the left on a pink background",
    "a doughnut at the top on a gray background",
    "a fox face and a rainbow on a black background",
    "an animal on a green background",
    "a food on a blue background",
)
TILE = 128
CAPTION_HEIGHT = 40


def grid(images: list[Image.Image], prompts: list[str], columns: int = 4) -> Image.Image:
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        x, y = (k % columns) * TILE, (k // columns) * (TILE + CAPTION_HEIGHT)
        sheet.paste(image.resize((TILE, TILE), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text(
            (x + 3, y + TILE + 2), textwrap.fill(prompt, 22), fill="black", font=font, spacing=1
        )
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/world_samples.png"))
    parser.add_argument("--base-model", type=Path, default=BASE_MODEL)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = generate_images(load_pipeline(args.base_model), list(PROMPTS), args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid(images, list(PROMPTS)).save(args.out, optimize=True)


if __name__ == "__main__":
    main()
