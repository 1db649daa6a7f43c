"""Peak memory of a block of work: CUDA allocator peak on GPUs, sampled resident-set growth on CPUs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import threading
from types import TracebackType

import torch

_STATM = "/proc/self/statm"
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory(threshold: int = 64 * 1024) -> bool:
    """Have glibc serve every allocation above ``threshold`` bytes by its own mapping, handed back to the
    system when freed (``mallopt(M_MMAP_THRESHOLD)``; a fixed value also stops glibc raising it as it does
    after each large free). Without it the resident set keeps freed blocks for reuse, and PeakMemory on a
    CPU reads about 0 for any block of work smaller than one before it. Returns whether it took effect
    (False off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    return bool(getattr(libc, "mallopt", lambda *_: 0)(_M_MMAP_THRESHOLD, threshold))


def resident_bytes() -> int:
    """Current resident set size (Linux /proc); elsewhere the process's high-water mark (getrusage)."""
    if os.path.exists(_STATM):
        with open(_STATM) as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager: ``peak_mb`` is the most memory the block held above what was held at its start.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at entry (tensors only). CPU: the process's
    resident set size sampled every ``interval`` seconds by a thread, minus the RSS at entry — tracemalloc
    would miss torch's tensors, which are not allocated through Python's allocator.
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0
        self._start = 0
        self._peak = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._peak = resident_bytes()
            self._done.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self._peak = max(self._peak, resident_bytes())

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._done.set()
            if self._thread is not None:
                self._thread.join()
            peak = max(self._peak, resident_bytes())
        self.peak_mb = max(0, peak - self._start) / 2**20
