"""Timing (named phase timers), the episode window, and metric sinks (console progress, JSON Lines)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
import string
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from fastpg.errors import OutputError

__all__ = [
    "synchronize",
    "PhaseTimer",
    "EpisodeWindow",
    "ConsoleProgress",
    "JsonlSink",
    "format_si",
    "jsonable",
    "rounded",
    "final_line",
    "machine_info",
    "run_header",
    "TensorBoardSink",
    "WandbSink",
    "wandb_run_ids",
    "new_wandb_id",
]


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so a clock read covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Seconds spent per named phase: ``with timer("collect"): ...`` adds to ``timer.seconds["collect"]``.

    The device is synchronized before the clock is read at the end of a phase, so queued GPU work
    is counted in the phase that queued it. ``reset()`` starts a new round (one epoch).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def reset(self) -> PhaseTimer:
        self.seconds.clear()
        return self

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[phase] += time.perf_counter() - t0

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


class EpisodeWindow:
    """Returns and lengths of the latest ``size`` finished episodes."""

    def __init__(self, size: int = 100):
        self.returns: deque[float] = deque(maxlen=size)
        self.lengths: deque[int] = deque(maxlen=size)

    def extend(self, returns: list[float], lengths: list[int]) -> None:
        self.returns.extend(returns)
        self.lengths.extend(lengths)

    def __len__(self) -> int:
        return len(self.returns)

    @property
    def full(self) -> bool:
        return len(self.returns) == self.returns.maxlen

    def mean_return(self) -> float | None:
        return sum(self.returns) / len(self.returns) if self.returns else None


def format_si(x: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def jsonable(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rounded(value: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits (a summary meant to be read: 0.136182, not
    0.13618211300490657); everything else as it is."""
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.{digits}g}")
    return value


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


class ConsoleProgress:
    """One human-readable line on stderr per ``interval_s`` seconds (and always for the last
    epoch), with the share of the budget spent and an estimate of the training time left.
    ``budget(metrics)`` gives that share in [0, 1] (None: no estimate)."""

    def __init__(
        self,
        interval_s: float = 1.0,
        stream: IO[str] | None = None,
        budget: Callable[[dict[str, Any]], float | None] | None = None,
    ):
        self.interval_s = interval_s
        self.stream = stream
        self.budget = budget
        self._last = -math.inf

    def __call__(self, m: dict[str, Any], *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        line = (
            f"epoch {m['epoch']:>5} | steps {format_si(m['env_steps']):>6} | "
            f"sps {format_si(m['sps']):>6} | return {_fmt(m['return_mean'])} "
            f"(last100 {_fmt(m['return_mean_100'])}) | len {_fmt(m['length_mean'])} | "
            f"loss {m['loss']:+.3f} | ent {m['entropy']:.3f} | {m['wall_s']:.1f}s"
        )
        share = self.budget(m) if self.budget else None
        if share is not None and share > 0:
            eta = m["wall_s"] * (1 - share) / share
            line += f" | {100 * share:3.0f}% eta {eta:.1f}s"
        print(line, file=self.stream or sys.stderr, flush=True)


class JsonlSink:
    """Writes one JSON object per line, each straight to the file, so a killed run keeps every
    whole line. A write that fails (a full disk, say) is undone to the last whole line and raises
    ``OutputError``. A context manager (closes the file)."""

    def __init__(self, path: str | Path, *, append: bool = False):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self._fd: int | None = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise OutputError(f"could not open the metrics file {self.path} ({e.strerror or e})") from e

    def write(self, record: dict[str, Any]) -> None:
        data = memoryview((json.dumps({k: jsonable(v) for k, v in record.items()}) + "\n").encode())
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # no torn line
            raise OutputError(
                f"could not write to the metrics file {self.path} ({e.strerror or e}); "
                "it ends with the last whole record"
            ) from e

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def final_line(summary: dict[str, Any]) -> str:
    """The run's outcome for a person (the JSON summary is for programs): ``solved in 0.14 s of
    training, 418k steps, evaluation 482.6 +- 55.0``."""
    s = summary
    ev = s.get("eval_return_mean")
    evaluation = f", evaluation {ev:.1f} +- {s.get('eval_return_std', 0.0):.1f}" if ev is not None else ""
    work = f"{format_si(s['env_steps'])} steps, {s['epochs']} epochs"
    if s.get("solved"):
        return f"fastpg: solved in {s['time_to_solve_s']:.3g} s of training, {work}{evaluation}"
    return f"fastpg: stopped ({s['stop_reason']}) after {s['train_wall_s']:.3g} s of training, {work}{evaluation}"


def _cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        return cpu


def machine_info(device: torch.device) -> dict[str, Any]:
    """Versions, CPU, GPU, thread count and date: what a reader needs to compare figures."""
    import gymnasium
    import numpy

    from fastpg import __version__
    from fastpg._lazy_compiler import tensordict

    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fastpg": __version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "tensordict": tensordict.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
    }


def run_header(
    config: dict[str, Any],
    device: torch.device,
    *,
    resumed_at_epoch: int | None = None,
    processes: int = 1,
    placement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record that makes a metrics file describe itself: the whole config, the versions, the
    device, the machine (rank 0's), the date, the number of processes of a data-parallel run (a
    resumed run adds one, with the epoch it continues from) and, where known, the device and the
    threads of the run's epochs with the reasons (``fastpg.placement``)."""
    header = {
        "header": True,
        "resumed_at_epoch": resumed_at_epoch,
        "processes": processes,
        "config": config,
        "machine": machine_info(device),
    }
    if placement is not None:
        header["placement"] = placement
    return header


class TensorBoardSink:
    """Every numeric per-epoch metric as a TensorBoard scalar (``train/<name>`` against env
    steps), the header (config, versions, machine) and the summary as text. torch's
    ``SummaryWriter``; needs the ``tensorboard`` package. A context manager."""

    def __init__(self, directory: str | Path, header: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(directory))
        self._writer.add_text("run/header", "```\n" + json.dumps(header, indent=1) + "\n```", 0)

    def write(self, record: dict[str, Any]) -> None:
        if record.get("summary"):
            self._writer.add_text("run/summary", "```\n" + json.dumps(record, indent=1) + "\n```", 0)
            return
        step = record["env_steps"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "env_steps":
                if math.isfinite(value):
                    self._writer.add_scalar(f"train/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WandbSink:
    """Every numeric per-epoch metric logged to Weights & Biases (``train/<name>``, with
    ``env_steps`` as the step), the config as the run's config, the header's machine and placement,
    and the summary as the run's summary. Needs the ``wandb`` package (the wandb extra); with
    ``WANDB_MODE=offline`` it writes the run under ``WANDB_DIR`` (default ``./wandb``) and needs no
    network (``wandb sync`` uploads it later). A context manager; the run is finished on close."""

    def __init__(
        self,
        project: str,
        header: dict[str, Any],
        *,
        name: str | None = None,
        group: str | None = None,
        run_id: str | None = None,
    ):
        import wandb

        config = dict(header.get("config", {}))
        config["machine"] = header.get("machine")
        if header.get("placement") is not None:
            config["placement"] = header["placement"]
        self._run = wandb.init(
            project=project,
            name=name,
            group=group,
            config=config,
            id=run_id,  # a resumed fastpg run continues its W&B run (wandb_run_ids)
            resume="allow" if run_id is not None else None,
            reinit="create_new",  # a population's members: one run each, open together
        )
        self._run.define_metric("train/*", step_metric="env_steps")

    def write(self, record: dict[str, Any]) -> None:
        if record.get("summary"):
            self._run.summary.update({k: jsonable(v) for k, v in record.items() if k != "summary"})
            return
        values = {
            f"train/{key}": value
            for key, value in record.items()
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key != "env_steps"
            and math.isfinite(value)
        }
        self._run.log({"env_steps": record["env_steps"], **values})

    def close(self) -> None:
        self._run.finish()

    def __enter__(self) -> WandbSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


WANDB_IDS_FILE = "wandb-runs.json"


def new_wandb_id() -> str:
    """A fresh W&B run id: 8 random lowercase letters and digits, as W&B makes its own."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_run_ids(resumed_from: Path | None, checkpoint_dir: Path | None, fresh: dict[str, str]) -> dict[str, str]:
    """The W&B run ids (and group) of a run, kept in its checkpoint directory so that a resumed
    run logs on into the W&B runs it started (``wandb.init(id=..., resume="allow")``): those
    saved in ``resumed_from`` (the checkpoint directory a resumed run continues), else ``fresh``
    (``new_wandb_id()`` per run); saved in ``checkpoint_dir`` for a later resume. Without a
    checkpoint directory nothing can resume."""
    ids = fresh
    saved_at = None if resumed_from is None else Path(resumed_from) / WANDB_IDS_FILE
    if saved_at is not None and saved_at.is_file():
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(saved_at.read_text())
            if isinstance(saved, dict) and all(isinstance(v, str) for v in saved.values()):
                ids = {**fresh, **saved}
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / WANDB_IDS_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(ids))
            os.replace(tmp, path)
        except OSError as e:
            raise OutputError(f"checkpoint_dir: cannot write {path}: {e.strerror or e}") from e
    return ids
