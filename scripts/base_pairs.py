"""How often the bundled base model draws both objects of a two-object prompt it was trained on.

`PYTHONPATH=. python scripts/base_pairs.py [--pairs 40] [--seeds 4] [--out runs/base_pairs.png]` (needs the emoji font). For random
pairs of held-in emoji (names the base learned, in the world's own pair caption "a A on the left and a B
on the right on a white background"), it generates images with the world's evaluation settings (25 DDIM
steps, guidance 5), cuts each into its left and right halves and asks the eval CLIP which held-in name each
half shows. The same is done to the rendered scenes those captions describe: the classifier's ceiling.
Prints the share of halves named right and of images with both halves right, generated and rendered.

Why: the multi-concept benchmark's target (both learned concepts in half the images) presumes a base that
draws two objects when asked; this measures that for objects the base knows.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from lifelong.world.data import HELD_IN, Placed, Scene, render, with_article
from lifelong.world.evaluate import BASE_MODEL, EVAL_CLIP, EvalClip, generate_images, load_pipeline


def halves(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    width, height = image.size
    return image.crop((0, 0, width // 2, height)), image.crop((width // 2, 0, width, height))


def score(clip: EvalClip, images: list[Image.Image], pairs: list[tuple[int, int]]) -> tuple[float, float]:
    """Share of halves whose top-1 name is right, and of images with both halves right."""
    crops = [half for image in images for half in halves(image)]
    names = clip.top1(crops)
    right = np.array(names).reshape(-1, 2) == np.array(pairs)
    return float(right.mean()), float(right.all(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/base_pairs.png", help="sheet of the first 12 pairs")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    drawn = [
        tuple(int(k) for k in rng.choice(len(HELD_IN), size=2, replace=False)) for _ in range(args.pairs)
    ]
    pairs = [pair for pair in drawn for _ in range(args.seeds)]
    prompts = [
        f"{with_article(HELD_IN[a].name)} on the left and {with_article(HELD_IN[b].name)} on the right "
        "on a white background"
        for a, b in pairs
    ]
    pipe = load_pipeline(BASE_MODEL)
    generated = []
    for k in range(args.seeds):  # each seed on every pair's prompt: seeds k, k + 8, ... per batch
        generated += generate_images(pipe, prompts[k :: args.seeds], seed=1000 * k)
    order = [k * args.pairs + p for p in range(args.pairs) for k in range(args.seeds)]
    generated = [generated[i] for i in order]
    rendered = [
        render(
            Scene("white", (Placed(HELD_IN[a], "left", "small"), Placed(HELD_IN[b], "right", "small")), ""),
            rng,
        )
        for a, b in pairs
    ]
    clip = EvalClip(EVAL_CLIP)
    for label, images in (("generated", generated), ("rendered", rendered)):
        halves_right, both_right = score(clip, images, pairs)
        print(
            f"{label}: {len(images)} images, halves named right {halves_right:.3f}, both right {both_right:.3f}"
        )
    sheet = Image.new("RGB", (64 * args.seeds * 2, 64 * min(args.pairs, 12)), "white")
    for p in range(min(args.pairs, 12)):
        for k in range(args.seeds):
            sheet.paste(rendered[p * args.seeds + k], (64 * k, 64 * p))
            sheet.paste(generated[p * args.seeds + k], (64 * (args.seeds + k), 64 * p))
    sheet.save(args.out)
    print(f"wrote {args.out} (rendered, then generated; first 12 pairs)")


if __name__ == "__main__":
    main()
