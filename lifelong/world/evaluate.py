"""Measure the shipped world model on held-in emoji rendered fresh (seeds never used for training).

Keys written to --out (JSON):
- clip_zero_shot_top1: the eval CLIP picks the right name among all world names for one-emoji scenes;
- vae_psnr_db: VAE reconstruction PSNR of fresh scenes;
- gen_object_top1: for "a NAME on a COLOUR background", the eval CLIP's top-1 world name of the image is NAME;
- gen_color_acc: the generated image's border pixels are nearest (median RGB) to the named COLOUR;
- seconds_per_image_cpu: one 64×64 image, 25 DDIM steps, guidance 5, 2 torch threads, after a warm-up
  image; the UNet is torch.compile'd as the app samples on a CPU (lifelong.base.compile_default), unless
  --eager or LIFELONG_COMPILE=0.

`python -m lifelong.world.evaluate --out runs/world/eval.json [--eager]` (needs the font for the fresh
scenes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from ..base import compile_default
from ..metrics import background_color
from .data import COLORS, FONT_PATH, HELD_IN, FontMissingError, generate, with_article

BASE_MODEL = Path("assets/base-model")
EVAL_CLIP = Path("assets/eval-clip")
STEPS = 25
GUIDANCE = 5.0
ZERO_SHOT_SEED = 1001
PSNR_SEED = 1002


class EvalClip:
    """The eval CLIP with its processor, scoring images against the world's names."""

    def __init__(self, folder: Path) -> None:
        self.model = CLIPModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
        self.processor = CLIPProcessor.from_pretrained(folder)
        prompts = [with_article(e.name) for e in HELD_IN]
        with torch.no_grad():
            text = self.model.get_text_features(
                **self.processor(text=prompts, return_tensors="pt", padding=True)
            )
        self.names = torch.nn.functional.normalize(_tensor(text), dim=-1)

    @torch.no_grad()
    def top1(self, images: list[Image.Image]) -> list[int]:
        """Index into HELD_IN of the best-matching name for each image."""
        pixels = self.processor(images=images, return_tensors="pt").pixel_values
        feats = torch.nn.functional.normalize(
            _tensor(self.model.get_image_features(pixel_values=pixels)), dim=-1
        )
        return (feats @ self.names.T).argmax(dim=-1).tolist()


def _tensor(features) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    return getattr(features, "pooler_output", features)


def one_emoji_scenes(seed: int, n: int) -> tuple[list[Image.Image], list[int], list[str]]:
    """First `n` one-emoji scenes of `seed`: images, HELD_IN indices, background colour names."""
    images: list[Image.Image] = []
    labels: list[int] = []
    colors: list[str] = []
    index = 0
    while len(images) < n:
        image, scene = generate(seed, index)
        index += 1
        if len(scene.objects) == 1:
            images.append(image)
            labels.append(HELD_IN.index(scene.objects[0].emoji))
            colors.append(scene.color)
    return images, labels, colors


def clip_zero_shot_top1(clip: EvalClip, n: int = 400) -> float:
    images, labels, _ = one_emoji_scenes(ZERO_SHOT_SEED, n)
    predictions = [p for i in range(0, n, 100) for p in clip.top1(images[i : i + 100])]
    return float(np.mean(np.array(predictions) == np.array(labels)))


@torch.no_grad()
def vae_psnr_db(pipe: StableDiffusionPipeline, n: int = 256) -> float:
    images, _, _ = one_emoji_scenes(PSNR_SEED, n)
    pixels = (
        torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
    )
    recon = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((recon - pixels) / 2).pow(2).mean().item()
    return float(10 * np.log10(1 / mse))


def generation_prompts(per_name: int = 2) -> list[tuple[int, str]]:
    """(HELD_IN index, colour) pairs: every name, `per_name` colours each, cycling through the colours."""
    colors = list(COLORS)
    return [
        (i, colors[(i * per_name + k) % len(colors)]) for i in range(len(HELD_IN)) for k in range(per_name)
    ]


def generate_images(
    pipe: StableDiffusionPipeline, prompts: list[str], seed: int, batch: int = 8
) -> list[Image.Image]:
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch):
        generator = torch.Generator().manual_seed(seed + start)
        with torch.inference_mode():  # the pipeline's own no_grad still pays autograd's bookkeeping
            out = pipe(
                prompts[start : start + batch],
                height=64,
                width=64,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                generator=generator,
            )
        images.extend(out.images)
    return images


def seconds_per_image(pipe: StableDiffusionPipeline, repeats: int = 5) -> float:
    """Wall time of one single-prompt generation, after one warm-up run."""
    generate_images(pipe, ["a cat face on a red background"], seed=0)
    start = time.perf_counter()
    for r in range(repeats):
        generate_images(pipe, ["a cat face on a red background"], seed=r)
    return (time.perf_counter() - start) / repeats


def load_pipeline(folder: Path = BASE_MODEL) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(
    base_model: Path = BASE_MODEL,
    eval_clip: Path = EVAL_CLIP,
    seed: int = 7,
    compile_unet: bool | None = None,
) -> dict[str, float]:
    torch.set_num_threads(2)
    pipe = load_pipeline(base_model)
    if compile_unet is None:
        compile_unet = compile_default(torch.device("cpu"))
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    clip = EvalClip(eval_clip)
    pairs = generation_prompts()
    prompts = [f"{with_article(HELD_IN[i].name)} on {with_article(c)} background" for i, c in pairs]
    images = generate_images(pipe, prompts, seed)
    predicted = clip.top1(images)
    return {
        "clip_zero_shot_top1": clip_zero_shot_top1(clip),
        "vae_psnr_db": vae_psnr_db(pipe),
        "gen_object_top1": float(np.mean([p == i for p, (i, _) in zip(predicted, pairs, strict=True)])),
        "gen_color_acc": float(
            np.mean([background_color(im, COLORS) == c for im, (_, c) in zip(images, pairs, strict=True)])
        ),
        "seconds_per_image_cpu": seconds_per_image(pipe),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base-model", type=Path, default=BASE_MODEL)
    parser.add_argument("--eval-clip", type=Path, default=EVAL_CLIP)
    parser.add_argument("--eager", action="store_true", help="time the uncompiled UNet")
    args = parser.parse_args()
    if not FONT_PATH.exists():
        parser.exit(
            2,
            f"error: {FontMissingError.__doc__} Install it with `apt-get install fonts-noto-color-emoji`.\n",
        )
    result = evaluate(args.base_model, args.eval_clip, compile_unet=False if args.eager else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
