"""The app's model thread: every model call of the app runs on one thread (lifelong/ui/jobs.py says why)."""

from __future__ import annotations

import contextvars
import threading

import pytest

from lifelong.errors import InvalidPromptError
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
