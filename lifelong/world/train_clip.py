"""Train the world's tiny CLIP contrastively on cached scenes and captions.

Its text tower becomes the diffusion text encoder (frozen while the UNet trains); the whole model is the
evaluation CLIP of the metrics. Pooling: CLIPTextModel pools at the first eos token, so the config's
eos_token_id is the tokenizer's eos id (1, not the legacy 2). Once the UNet trains on the text tower,
`--resume --freeze-text` can keep improving the vision side without changing the diffusion conditioning.

`nice -n 10 python -m lifelong.world.train_clip [--resume]`
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel

from .common import Checkpointer, Log, cosine_lr, load_cache, to_pixels
from .data import HELD_IN, generate, with_article
from .tokenizer import MODEL_MAX_LENGTH, tokenize, world_tokenizer


@dataclass
class ClipTrainConfig:
    data: Path = Path("runs/world/data")
    out: Path = Path("runs/world/clip")
    steps: int = 2000
    batch: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 1
    save_every: int = 200
    until: int | None = None  # stop early at this step, keeping the lr schedule of `steps`
    freeze_text: bool = False


def clip_config(vocab_size: int) -> CLIPConfig:
    """Text tower: 4 layers × 128 (it conditions the UNet); vision tower: ViT 8×8 patches on 64×64."""
    tokenizer = world_tokenizer()
    text = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=64,
        patch_size=8,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def name_prompts() -> list[str]:
    """One zero-shot prompt per held-in emoji, in HELD_IN order."""
    return [with_article(e.name) for e in HELD_IN]


@torch.no_grad()
def zero_shot_top1(model: CLIPModel, n: int = 400, seed: int = 1) -> float:
    """How often CLIP picks the right name among all world names, on fresh one-emoji scenes of `seed`."""
    model.eval()
    text = model.get_text_features(input_ids=tokenize(name_prompts()))
    text = getattr(text, "pooler_output", text)
    hits, total, index = 0, 0, 0
    while total < n:
        image, scene = generate(seed, index)
        index += 1
        if len(scene.objects) != 1:
            continue
        pixels = to_pixels(np.asarray(image)[None])
        feats = model.get_image_features(pixel_values=pixels)
        feats = getattr(feats, "pooler_output", feats)
        hits += int((feats @ text.T).argmax().item() == HELD_IN.index(scene.objects[0].emoji))
        total += 1
    return hits / total


def train(cfg: ClipTrainConfig, resume: bool) -> None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    log = Log(cfg.out / "train.log")
    images, captions = load_cache(cfg.data)
    ids = tokenize(captions)
    ckpt = Checkpointer(cfg.out / "ckpt")
    if resume and ckpt.exists():
        model = CLIPModel.from_pretrained(ckpt.folder / "model")
        start = ckpt.state()["step"]
    else:
        model = CLIPModel(clip_config(len(world_tokenizer())))
        start = 0
    if cfg.freeze_text:
        model.text_model.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if start:
        ckpt.load_optimizer(optimizer)
    log(f"clip {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, start at step {start}")
    rng = np.random.default_rng([cfg.seed, start])
    for step in range(start, min(cfg.steps, cfg.until or cfg.steps)):
        model.train()
        batch = np.sort(rng.choice(len(captions), size=cfg.batch, replace=False))
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        loss = model(input_ids=ids[batch], pixel_values=to_pixels(images[batch]), return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 in (cfg.steps, cfg.until):
            ckpt.save({"model": model}, optimizer, step + 1)
            log(f"step {step + 1} saved; zero-shot top-1 {zero_shot_top1(model, n=200):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, default=ClipTrainConfig.steps)
    parser.add_argument("--threads", type=int, default=ClipTrainConfig.threads)
    parser.add_argument("--until", type=int, help="stop at this step; the lr schedule still spans --steps")
    parser.add_argument(
        "--freeze-text",
        action="store_true",
        help="train only the vision side: the text tower already conditions a UNet and must not change",
    )
    args = parser.parse_args()
    cfg = ClipTrainConfig(
        steps=args.steps, threads=args.threads, freeze_text=args.freeze_text, until=args.until
    )
    train(cfg, args.resume)


if __name__ == "__main__":
    main()
