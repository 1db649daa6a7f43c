"""The app's model jobs, each under ``@spaces.GPU`` (a no-op off a ZeroGPU Space) with a duration computed
from its settings. What crosses into a job is plain data (strings, paths, config dataclasses); a job finds
the model through ``STUDIOS``, which a ZeroGPU worker inherits when it forks."""

from __future__ import annotations

import gradio as gr
import spaces
from PIL import Image

from lifelong.configs import GenerateConfig, LearnConfig
from lifelong.service import ForgettingReport, Studio
from lifelong.ui.common import reporter, shown

GPU_SECONDS_PER_SAMPLE = 0.08  # one training sample (or one denoising step of one image) on a Space GPU
STUDIOS: dict[str, Studio] = {}


def register(studio: Studio) -> str:
    """A picklable key for ``studio``, so GPU jobs receive the key rather than the model."""
    key = str(id(studio))
    STUDIOS[key] = studio
    return key


def _learn_duration(
    key: str,
    user: str,
    images: list[str],
    name: str,
    class_word: str,
    config: LearnConfig,
    progress: gr.Progress,
) -> int:
    """Seconds to ask ZeroGPU for (spaces calls it with the job's own arguments)."""
    samples = config.steps * config.batch_size * max(1, config.gradient_accumulation)
    return int(30 + samples * GPU_SECONDS_PER_SAMPLE)


@spaces.GPU(duration=_learn_duration)
def learn_job(
    key: str,
    user: str,
    images: list[str],
    name: str,
    class_word: str,
    config: LearnConfig,
    progress: gr.Progress,
) -> str:
    concept = STUDIOS[key].learn(user, images, name, class_word, config, reporter(progress))
    return f"Learned **{shown(concept.token)}** with {concept.method} in {concept.seconds:.1f} s."


def _generate_duration(
    key: str, user: str, prompt: str, config: GenerateConfig, maps: bool, progress: gr.Progress
) -> int:
    guided = config.attention_steps if config.caa or config.oaa else 0  # guided steps run the UNet twice
    return int(15 + 2 * (config.steps + guided) * config.num_images * GPU_SECONDS_PER_SAMPLE)


@spaces.GPU(duration=_generate_duration)
def generate_job(
    key: str, user: str, prompt: str, config: GenerateConfig, maps: bool, progress: gr.Progress
) -> tuple[list[Image.Image], list[tuple[Image.Image, str]]]:
    studio = STUDIOS[key]
    if maps:
        return studio.generate_with_maps(user, prompt, config, progress=reporter(progress))
    return studio.generate(user, prompt, config, progress=reporter(progress)), []


def _forgetting_duration(key: str, user: str, config: GenerateConfig, progress: gr.Progress) -> int:
    count = len(STUDIOS[key].session(user).concepts)
    generations = count * (count + 1) // 2
    return int(15 + 2 * generations * config.steps * config.num_images * GPU_SECONDS_PER_SAMPLE)


@spaces.GPU(duration=_forgetting_duration)
def forgetting_job(key: str, user: str, config: GenerateConfig, progress: gr.Progress) -> ForgettingReport:
    def report(done: int, total: int) -> None:
        progress((done, total), desc=f"comparing checkpoints · image set {done}/{total}", unit="sets")

    return STUDIOS[key].forgetting(user, config, report)
