"""``python -m lifelong.bench.app_timing``: what a user of the app waits for, timed through ``Studio``.

The app's buttons call :class:`lifelong.service.Studio`; this builds one as the app does (the bundled or
$LIFELONG_BASE_MODEL base, sampling compiled in the background at start), waits for that start-up compile
to finish, then times, ``--repeats`` times each: learning the first shipped example concept with the app's
default method and settings, and generating 1 and 4 images of it (the app's default sampling settings).
It prints one line per measurement and the minimum and median of each, plus the torch thread count, so a
number in README can be checked on any machine.

Every model call runs on the app's model thread (lifelong.ui.jobs), as in the app. With ``--http`` the same
is also timed as a client of the app sees it, interleaved with the direct calls: the app served on a local
port in this process, the learn (uploading the example's images and captions) and the generations called
through gradio_client, the images downloaded; the difference is what the HTTP API adds.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from lifelong.base import get_base
from lifelong.configs import GenerateConfig, LearnConfig
from lifelong.folders import FolderConcept, load_examples
from lifelong.service import Studio, default_scorer
from lifelong.ui.jobs import on_model_thread


def _timed(label: str, action: Callable[[], object], results: dict[str, list[float]]) -> None:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    results.setdefault(label, []).append(seconds)
    print(f"{label}: {seconds:.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--http", action="store_true", help="also through the app's HTTP API (gradio_client)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    root = tempfile.mkdtemp(prefix="lifelong-timing-")
    studio = on_model_thread(_studio, root)
    on_model_thread(studio.compile_sampling)
    print(f"start-up compile: {time.perf_counter() - started:.1f} s, torch threads {torch.get_num_threads()}")
    concept = load_examples()[0]
    results: dict[str, list[float]] = {}
    url, close = _serve(studio) if args.http else ("", lambda: None)
    try:
        for repeat in range(args.repeats):
            if url:
                _time_http(url, concept, repeat, results)
            user = f"timing{repeat:02d}"
            learn = partial(
                on_model_thread,
                studio.learn,
                user,
                list(concept.images),
                concept.name,
                concept.class_word,
                LearnConfig(),
                None,
                concept.captions,
            )  # as the app's example button: its images and captions
            steps = f"{LearnConfig().method}, {LearnConfig().steps} steps"
            _timed(f"learn <{concept.name}> ({steps})", learn, results)
            prompt = f"a <{concept.name}> {concept.class_word} on a blue background"
            for count in (1, 4):
                config = GenerateConfig(num_images=count, seed=repeat)
                generate = partial(on_model_thread, studio.generate, user, prompt, config)
                _timed(f"generate {count} image(s)", generate, results)
    finally:
        close()
    for label, values in results.items():
        print(
            f"{label}: min {min(values):.2f} s, median {statistics.median(values):.2f} s over {len(values)}"
        )
    return 0


def _studio(root: str) -> Studio:
    scorer, why = default_scorer()  # as the app builds its Studio
    return Studio(get_base(), root=root, scorer=scorer, scorer_note=why)


def _serve(studio: Studio) -> tuple[str, Callable[[], None]]:
    """The app on ``studio`` at a free local port: its URL and how to close it."""
    from lifelong.ui.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    demo = create_app(studio)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    return url, demo.close


def _call(client: Any, described: dict[str, Any], api: str, by_label: dict[str, Any]) -> object:
    """An endpoint called with inputs by their UI label; the rest keep the defaults the UI shows."""
    parameters = described["named_endpoints"][api]["parameters"]
    return client.predict(
        *[by_label.get(p["label"], p.get("parameter_default")) for p in parameters], api_name=api
    )


def _time_http(url: str, concept: FolderConcept, repeat: int, results: dict[str, list[float]]) -> None:
    """As a client of the app: a fresh client (its own session) learns the example, uploading its images and
    captions, then generates 1 and 4 images and downloads them."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    call = partial(_call, client, client.view_api(return_format="dict", print_info=False))
    learn = {
        "3–5 images of your concept (drop them here)": [
            {"image": handle_file(str(p))} for p in concept.images
        ],
        "Concept name": concept.name,
        "Class word": concept.class_word,
        "Captions (optional)": "\n".join(concept.captions),
    }
    _timed(f"HTTP API: learn <{concept.name}>", partial(call, "/learn", learn), results)
    prompt = f"a <{concept.name}> {concept.class_word} on a blue background"
    for count in (1, 4):
        by_label = {"Prompt": prompt, "Num images": count, "Seed": repeat}
        _timed(f"HTTP API: generate {count} image(s)", partial(call, "/generate", by_label), results)


if __name__ == "__main__":
    raise SystemExit(main())
