"""``python -m lifelong.bench.app_timing``: what a user of the app waits for, timed through ``Studio``.

The app's buttons call :class:`lifelong.service.Studio`; this builds one as the app does (the bundled or
$LIFELONG_BASE_MODEL base, sampling compiled in the background at start), waits for that start-up compile
to finish, then times, ``--repeats`` times each: learning the first shipped example concept with the app's
default method and settings, and generating 1 and 4 images of it (the app's default sampling settings).
It prints one line per measurement and the minimum and median of each, plus the torch thread count, so a
number in README can be checked on any machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

import torch

from lifelong.base import get_base
from lifelong.configs import GenerateConfig, LearnConfig
from lifelong.folders import load_examples
from lifelong.service import Studio


def _timed(label: str, action: Callable[[], object], results: dict[str, list[float]]) -> None:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    results.setdefault(label, []).append(seconds)
    print(f"{label}: {seconds:.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    studio = Studio(get_base(), root=tempfile.mkdtemp(prefix="lifelong-timing-"))
    studio.warm_up().join()
    print(f"start-up compile: {time.perf_counter() - started:.1f} s, torch threads {torch.get_num_threads()}")
    concept = load_examples()[0]
    results: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        user = f"timing{repeat:02d}"
        images = list(concept.images)
        learn = partial(
            studio.learn,
            user,
            images,
            concept.name,
            concept.class_word,
            LearnConfig(),
            None,
            concept.captions,
        )  # as the app's example button: its captions filled in
        steps = f"{LearnConfig().method}, {LearnConfig().steps} steps"
        _timed(f"learn <{concept.name}> ({steps})", learn, results)
        prompt = f"a <{concept.name}> {concept.class_word} on a blue background"
        for count in (1, 4):
            config = GenerateConfig(num_images=count, seed=repeat)
            _timed(f"generate {count} image(s)", partial(studio.generate, user, prompt, config), results)
    for label, values in results.items():
        print(
            f"{label}: min {min(values):.2f} s, median {statistics.median(values):.2f} s over {len(values)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
