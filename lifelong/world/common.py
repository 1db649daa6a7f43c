"""Shared plumbing for the world's training scripts: the data cache, resumable checkpoints, logs, lr.

Checkpoints live under runs/ (git-ignored): weights as safetensors via `save_pretrained`, the optimizer
state with torch.save for our own resume only (never load such a file from anyone else).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def load_cache(path: Path) -> tuple[np.ndarray, list[str]]:
    """Images (uint8, N×64×64×3, memory-mapped) and captions written by `data.render_cache`."""
    images = np.load(path / "images.npy", mmap_mode="r")
    captions = json.loads((path / "captions.json").read_text())
    return images, captions


def to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1] (the VAE's range and the eval CLIP's normalisation),
    on the device a tensor is already on."""
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
    return tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warmup, then cosine decay to `floor`·base."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class Checkpointer:
    """Saves and restores model(s), optimizer and step in one folder, atomically (write aside, then rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / "state.json").exists()

    def save(
        self, models: dict[str, Any], optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None
    ) -> None:
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, model in models.items():
            model.save_pretrained(tmp / name)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)

    def state(self) -> dict:
        return json.loads((self.folder / "state.json").read_text())

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.load_state_dict(torch.load(self.folder / "optimizer.pt", weights_only=True))


class Log:
    """Appends timestamped lines to a log file and echoes them."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.start = time.time()

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} +{time.time() - self.start:7.0f}s {message}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
