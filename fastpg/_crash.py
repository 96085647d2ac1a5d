"""Crash points: where the reliability tests kill a process, at a chosen moment, for real.

``FASTPG_CRASH_AT=POINT:N:RANK:MARKER`` makes the process of rank ``RANK`` (torchrun's ``RANK``; 0
outside torchrun) kill itself with SIGKILL the ``N``-th time it reaches ``POINT``, once: the file
``MARKER`` is created first, and a process that finds it does not crash (a restarted process goes
on). The points:

- ``epoch``: in the middle of an epoch (its collect done, its update not);
- ``checkpoint-write``: a checkpoint's temporary file written, neither fsynced nor renamed;
- ``checkpoint-renamed``: the new checkpoint renamed into place, the directory not yet fsynced,
  nothing pruned.

Without the variable (every run outside the tests) ``crash_point`` returns at once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["crash_point", "POINTS"]

POINTS = ("epoch", "checkpoint-write", "checkpoint-renamed")
_SPEC = os.environ.get("FASTPG_CRASH_AT")
_reached: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process here if ``FASTPG_CRASH_AT`` says so (module docstring)."""
    if _SPEC is None:
        return
    point, count, rank, marker = _SPEC.split(":", 3)
    if point != name or os.environ.get("RANK", "0") != rank:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(count) and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
