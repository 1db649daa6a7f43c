"""The app's model jobs, each under ``@spaces.GPU`` (a no-op off a ZeroGPU Space) with a duration computed
from its settings by lifelong.limits, the same cost that refuses a job over the app's budget (the tabs call
the ``check_*`` functions here before a job waits for the GPU). What crosses into a job is plain data
(strings, paths, config dataclasses); a job finds the model through ``STUDIOS``, which a ZeroGPU worker
inherits when it forks."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import gradio as gr
import spaces
from PIL import Image

from lifelong.configs import GenerateConfig, LearnConfig
from lifelong.limits import generate_seconds, learn_seconds
from lifelong.lora_import import REFERENCE_IMAGES
from lifelong.service import ForgettingReport, Studio
from lifelong.ui.common import reporter, shown

STUDIOS: dict[str, Studio] = {}

P = ParamSpec("P")
T = TypeVar("T")

# Every model call of the app runs on this one thread. PyTorch's OpenMP (libgomp) keeps a thread pool for
# each thread that ever ran a parallel op; once the pools' threads outnumber the cores, libgomp stops
# spinning between ops and every op waits on a futex. Jobs on Gradio's worker threads, beside the main
# thread's pool, learned in 53 s what one thread learns in 27 s on the 2-core CPU (docs/BENCHMARKS.md, "What
# the app's buttons wait for").
_MODEL = threading.local()
_MODEL_THREAD = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="lifelong-model", initializer=lambda: setattr(_MODEL, "here", True)
)


def start_on_model_thread(job: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Queue ``job`` on the model thread with the caller's context (Gradio finds a job's progress bar there)."""
    context = contextvars.copy_context()
    return _MODEL_THREAD.submit(lambda: context.run(job, *args, **kwargs))


def on_model_thread(job: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``job(*args, **kwargs)`` run on the model thread (directly when called there), its result or error."""
    if getattr(_MODEL, "here", False):
        return job(*args, **kwargs)
    return start_on_model_thread(job, *args, **kwargs).result()


def register(studio: Studio) -> str:
    """A picklable key for ``studio``, so GPU jobs receive the key rather than the model."""
    key = str(id(studio))
    STUDIOS[key] = studio
    return key


def check_learn(key: str, user: str, config: LearnConfig) -> None:
    """Refuse a learn out of range or over the budget before it is queued for the GPU."""
    studio = STUDIOS[key]
    studio.check_learn(config, studio.concept_count(user))


def check_generate(key: str, config: GenerateConfig) -> None:
    STUDIOS[key].check_generate(config)


def check_forgetting(key: str, user: str, config: GenerateConfig) -> None:
    STUDIOS[key].check_forgetting(user, config)


def _learn_duration(
    key: str,
    user: str,
    images: list[str],
    name: str,
    class_word: str,
    config: LearnConfig,
    captions: list[str],
    progress: gr.Progress,
) -> int:
    """Seconds to ask ZeroGPU for (spaces calls it with the job's own arguments)."""
    return int(learn_seconds(config, STUDIOS[key].concept_count(user)))


@spaces.GPU(duration=_learn_duration)
def learn_job(
    key: str,
    user: str,
    images: list[str],
    name: str,
    class_word: str,
    config: LearnConfig,
    captions: list[str],
    progress: gr.Progress,
) -> str:
    concept = STUDIOS[key].learn(user, images, name, class_word, config, reporter(progress), captions)
    return f"Learned **{shown(concept.token)}** with {concept.method} in {concept.seconds:.1f} s."


def _generate_duration(
    key: str, user: str, prompt: str, config: GenerateConfig, maps: bool, progress: gr.Progress
) -> int:
    return int(generate_seconds(config))


@spaces.GPU(duration=_generate_duration)
def generate_job(
    key: str, user: str, prompt: str, config: GenerateConfig, maps: bool, progress: gr.Progress
) -> tuple[list[Image.Image], list[tuple[Image.Image, str]]]:
    studio = STUDIOS[key]
    if maps:
        return studio.generate_with_maps(user, prompt, config, progress=reporter(progress))
    return studio.generate(user, prompt, config, progress=reporter(progress)), []


def _forgetting_duration(key: str, user: str, config: GenerateConfig, progress: gr.Progress) -> int:
    return int(generate_seconds(config, STUDIOS[key].forgetting_generations(user)))


@spaces.GPU(duration=_forgetting_duration)
def forgetting_job(key: str, user: str, config: GenerateConfig, progress: gr.Progress) -> ForgettingReport:
    def report(done: int, total: int) -> None:
        progress((done, total), desc=f"comparing checkpoints · image set {done}/{total}", unit="sets")

    return STUDIOS[key].forgetting(user, config, report)


def _import_duration(key: str, user: str, lora: str, embedding: str, name: str, class_word: str) -> int:
    return int(generate_seconds(GenerateConfig(num_images=REFERENCE_IMAGES)))


@spaces.GPU(duration=_import_duration)
def import_lora_job(key: str, user: str, lora: str, embedding: str, name: str, class_word: str) -> str:
    """An imported concept draws the images it keeps: a model job like a generation."""
    concept = STUDIOS[key].import_lora(user, lora, embedding, name, class_word)
    return f"Imported **{shown(concept.token)}** ({concept.settings['source']})."
