"""The app's model thread: every model call of the app runs on one thread (lifelong/ui/jobs.py says why)."""

from __future__ import annotations

import contextvars
import threading

import pytest
from tiny_clip import save_tiny_model_and_clip

from lifelong.configs import GenerateConfig
from lifelong.errors import InvalidPromptError
from lifelong.ui.app import default_studio
from lifelong.ui.jobs import on_model_thread, start_on_model_thread

WHO = contextvars.ContextVar("who", default="nobody")


def where() -> tuple[str, str]:
    return threading.current_thread().name, WHO.get()


def test_calls_from_any_thread_run_on_one_model_thread_with_the_callers_context():
    seen = []

    def caller(name: str) -> None:
        WHO.set(name)  # as Gradio sets its event's context before calling a handler
        seen.append(on_model_thread(where))

    threads = [threading.Thread(target=caller, args=(f"user{k}",)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = {name for name, _ in seen}
    assert len(names) == 1 and next(iter(names)).startswith("lifelong-model")
    assert sorted(who for _, who in seen) == ["user0", "user1", "user2"]
    assert threading.current_thread().name not in names


def test_a_call_from_the_model_thread_runs_inline_and_errors_reach_the_caller():
    assert on_model_thread(on_model_thread, where)[0].startswith("lifelong-model")  # no deadlock

    def refuse() -> None:
        raise InvalidPromptError("the prompt is empty.")

    with pytest.raises(InvalidPromptError, match="the prompt is empty"):
        on_model_thread(refuse)
    assert start_on_model_thread(where).result()[0].startswith("lifelong-model")


def test_the_app_studio_loads_and_serves_on_the_model_thread(tmp_path, monkeypatch):
    model, _ = save_tiny_model_and_clip(tmp_path)
    monkeypatch.setenv("LIFELONG_BASE_MODEL", str(model))
    monkeypatch.setenv("LIFELONG_SESSIONS_DIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("LIFELONG_COMPILE", "0")  # the plumbing, not the compiler
    studio = default_studio()  # queues its sampling warm-up on the model thread
    assert studio.base.name == str(model)
    images = on_model_thread(studio.generate, "someone", "a toy", GenerateConfig(steps=2, num_images=1))
    assert len(images) == 1 and images[0].size == (studio.base.resolution,) * 2
