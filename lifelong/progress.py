"""The progress and cancellation types shared by the library, the CLI and the UI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float = float("nan")
    seconds: float = 0.0
    message: str = ""

    @property
    def eta_seconds(self) -> float:
        return self.seconds / self.step * (self.total - self.step) if self.step else float("nan")


ProgressFn = Callable[[Progress], None]


class CancelToken(Protocol):
    """Anything with ``is_set()``, e.g. ``threading.Event``."""

    def is_set(self) -> bool: ...
