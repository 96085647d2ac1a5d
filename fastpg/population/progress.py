"""The population's progress line: one per interval on stderr, readable at any population size.

    epoch    14 | members 20 solved, 12 training, 0 failed | last100 median 243.1 worst 20.5 | 9.52M steps/s | 0.3s

Each member's latest ``return_mean_100`` gives the median and the worst; the stop reasons of the
members that have stopped count them solved (``target_return``), failed (``error: ...``) or
stopped (a budget, a signal). Without a target (an env with no reward threshold and no
``target_return``) nothing can be solved, and the line counts the members stopped instead:

    epoch   125 | members 4 stopped, 0 training, 0 failed | last100 median -802.8 worst -906.8 | 3.32M steps/s | 1.0s
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import IO, Any

from fastpg.metrics import format_si

__all__ = ["PopulationProgress"]


class PopulationProgress:
    """Call with each batched epoch's ``(member, metrics)`` pairs and the stop reasons of the
    members that have stopped; prints at most one line per ``interval_s`` (and always when
    ``force``)."""

    def __init__(self, size: int, interval_s: float = 1.0, stream: IO[str] | None = None, *, has_target: bool = True):
        self.size, self.interval_s, self.stream, self.has_target = size, interval_s, stream, has_target
        self.latest: dict[int, float | None] = {}
        self.stopped: dict[int, str] = {}
        self.wall_s = 0.0
        self._last = -math.inf
        self._epoch = 0

    def __call__(
        self,
        epoch: list[tuple[int, dict[str, Any]]],
        stopped: dict[int, str],
        *,
        sps: float,
        force: bool = False,
    ) -> None:
        self.stopped = stopped
        for number, m in epoch:
            self.latest[number] = m.get("return_mean_100")
            self.wall_s = max(self.wall_s, m["wall_s"])
        self._epoch += 1
        now = time.perf_counter()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        print(self.line(sps), file=self.stream or sys.stderr, flush=True)

    def line(self, sps: float) -> str:
        reasons = list(self.stopped.values())
        failed = sum(r.startswith("error") for r in reasons)
        training = self.size - len(reasons)
        if self.has_target:
            done = f"{reasons.count('target_return')} solved"
        else:
            done = f"{len(reasons) - failed} stopped"
        returns = [r for r in self.latest.values() if r is not None]
        ret = f"median {statistics.median(returns):.1f} worst {min(returns):.1f}" if returns else "-"
        return (
            f"epoch {self._epoch:>5} | members {done}, {training} training, {failed} failed | "
            f"last100 {ret} | {format_si(sps)} steps/s | {self.wall_s:.1f}s"
        )
