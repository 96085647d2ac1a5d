"""Ctrl-C and SIGTERM during training: stop between epochs, keep everything, exit non-zero.

``StopOnSignals`` is a context manager used by ``fastpg.train``. While it is active (in the main
thread; elsewhere it does nothing), the first SIGINT or SIGTERM only records the request: the
epoch in progress finishes, then ``train`` writes the checkpoint and the summary, closes the
environments and returns. A second signal raises ``KeyboardInterrupt`` at once. The previous
handlers are restored on exit, so embedding fastpg leaves the process's signal handling as it was.
"""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["StopOnSignals", "signal_of"]


def signal_of(stop_reason: str | None) -> signal.Signals | None:
    """The signal of a stop reason ``"interrupted (SIGTERM)"`` (``StopOnSignals.requested``), else
    None (how a data-parallel run's ranks learn which signal one of them received)."""
    if stop_reason is None or not stop_reason.startswith("interrupted (") or not stop_reason.endswith(")"):
        return None
    name = stop_reason[len("interrupted (") : -1]
    return signal.Signals[name] if name in signal.Signals.__members__ else None


class StopOnSignals:
    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopOnSignals:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        print(
            f"fastpg: {self.received.name} received: stopping after this epoch (checkpoint and summary "
            "follow); send it again to quit at once",
            file=sys.stderr,
            flush=True,
        )

    def requested(self) -> str | None:
        """``"interrupted (SIGINT)"`` once a signal came, else None (for ``Trainer.run``)."""
        return f"interrupted ({self.received.name})" if self.received is not None else None

    @property
    def exit_code(self) -> int | None:
        """128 + the signal number, the shell convention, once a signal came."""
        return 128 + int(self.received) if self.received is not None else None
