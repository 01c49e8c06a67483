"""Progress of an audit in model queries, and wall time per stage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

# on_progress(done_queries, total_queries, stage): raising in it aborts the audit
ProgressCallback = Callable[[int, int, str], None]


class Progress:
    """Counts model queries against a planned total. Each stage has a budget: queries past it
    are not counted, and a stage that ends early (an attack that succeeded, a sweep not
    needed) jumps to its budget, so `done` reaches `total` exactly at the end."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total, self.callback = total, callback
        self.done = self._reported = 0

    def report(self, done: int, stage: str) -> None:
        if self.callback is not None and done != self._reported:
            self._reported = done
            self.callback(done, self.total, stage)

    @contextmanager
    def stage(self, name: str, budget: int) -> Iterator[Callable[[int], None]]:
        """A block that makes up to `budget` queries; it gets `on_query(n)` (n so far)."""
        start = self.done

        def on_query(queries: int) -> None:
            self.report(start + min(queries, budget), name)

        yield on_query
        self.done = start + budget
        self.report(self.done, name)


class Timer:
    """Wall time per stage in milliseconds (CUDA work synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = self._now()
        yield
        self.ms[stage] = self.ms.get(stage, 0.0) + (self._now() - start) * 1000

    def finish(self) -> dict[str, float]:
        return {**self.ms, "total": (self._now() - self.start) * 1000}
