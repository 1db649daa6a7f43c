from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("GRADIO_TEMP_DIR", "/tmp/lifelong-tests-gradio")
os.environ.setdefault("LIFELONG_COMPILE", "0")  # tests sample eagerly unless one asks for compile
torch.set_num_threads(int(os.environ.get("LIFELONG_TORCH_THREADS", "2")))  # 1 while sharing the CPU

from tiny import tiny_pipeline  # noqa: E402

from lifelong.base import BaseConfig, BaseModel, prepare_base  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base() -> BaseModel:
    """A tiny SD-1.x base built from configs: shared by the tests, which must leave it as they found it."""
    return prepare_base(tiny_pipeline(), BaseConfig(model="tiny", concept_slots=6), torch.device("cpu"))


def pattern_images(count: int = 3, size: int = 48, seed: int = 0) -> list[Image.Image]:
    """A recognisable concept: a red disc on a teal background, shifted a little per image."""
    images = []
    for i in range(count):
        yy, xx = np.mgrid[0:size, 0:size]
        cx, cy = size / 2 + (i - 1) * 3, size / 2 + ((seed + i) % 3 - 1) * 2
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (size / 4) ** 2
        array = np.zeros((size, size, 3), dtype=np.uint8)
        array[:] = (20, 160, 150)
        array[disc] = (230, 30, 40)
        images.append(Image.fromarray(array))
    return images


@pytest.fixture(scope="session")
def sharp_base():
    """A tiny base whose cross-attention is sharp, as a trained model's is: a random tiny UNet attends
    almost uniformly to every word wherever it looks, which leaves nothing for guidance to separate."""
    pipe = tiny_pipeline(seed=1)
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith(("attn2.to_q", "attn2.to_k")):
                module.weight.mul_(8.0)
    return prepare_base(pipe, BaseConfig(model="tiny-sharp", concept_slots=4), torch.device("cpu"))
