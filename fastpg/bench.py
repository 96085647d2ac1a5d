"""``fastpg bench``: throughput of each phase of the straight line, per backend and N.

Phases (each a rate from the median of ``repeats`` timed repetitions, after ``warmup`` untimed ones):

- ``env``: env-only steps/s with random actions (drawn before timing), through fastpg's
  ``BatchedEnv`` interface (tensors in and out, as the trainer sees it);
- ``collect``: env + policy sampling + storage writes, one epoch of T steps (``Trainer.collect``);
- ``update``: samples/s of the batched loss, backward and optimizer step over the ``[T, N]`` epoch
  (``Trainer.update``), counted as the epoch's T x N stored entries per second; as in training, the
  entries outside the loss (reset steps; steps of unfinished episodes under ``unfinished="mask"``)
  skip the forward and backward passes, and the JSON records their share (``mask_frac``);
- ``train``: end-to-end training steps/s (``Trainer.epoch``: collect + update + metrics);
- ``returns``: elements/s of the ``reward_to_go`` kernel on ``[T, N]`` float32 (random rewards,
  done with probability 0.02), written into a preallocated output as the trainer does.

A step is a valid transition: gymnasium's NEXT_STEP reset steps are not counted in the rates and
are reported on their own (``reset_steps``). CUDA is synchronized before every clock read. Setup
(building envs and policy; compiling the fused kernel on its first use) is timed separately as
``setup_s``, and the untimed warm-up repetitions as ``warmup_s``; neither enters a rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from fastpg.config import ACTIVATIONS, Config, ConfigError
from fastpg.metrics import format_si, synchronize

__all__ = ["BenchConfig", "run_bench", "PHASES", "format_table", "machine_info"]

PHASES = ("env", "collect", "update", "train", "returns")
Phase = Literal["env", "collect", "update", "train", "returns"]
# Building this many gymnasium env objects in one process (sync) or processes (async) takes
# minutes; larger N for those backends is skipped and reported as skipped.
MAX_ENVS_GYM_LOOP = 4096
# async starts one worker process per copy, each ~100 MB (it imports torch): 256 of them filled the
# 24 GB of the development machine. Larger N is skipped for async.
MAX_ENVS_ASYNC = 64
# Target length of one timed repetition of the env phase (it adapts its step count to it).
ENV_REPEAT_TARGET_S = 0.25


@dataclass(frozen=True)
class BenchConfig:
    """Measure fastpg's throughput per phase, backend and number of envs."""

    env: str = "CartPole-v1"
    """Gymnasium environment id."""
    backends: tuple[Literal["torch", "vector", "sync", "async"], ...] = ("torch", "vector")
    """Backends to compare (sync is skipped above N = 4096, async above 64)."""
    num_envs: tuple[int, ...] = (16, 256, 4096)
    """Values of N. The defaults take a few minutes on 2 CPU cores; larger N suits a GPU (on CPU one update of 128 x 65536 samples takes ~30 s)."""
    num_steps: int = 128
    """T: steps per epoch (collect, update, train) and rows of the returns kernel."""
    phases: tuple[Phase, ...] = PHASES
    """Phases to measure: env, collect, update, train, returns."""
    repeats: int = 5
    """Timed repetitions per measurement (the median is reported, with min and max)."""
    warmup: int = 1
    """Untimed repetitions before timing."""
    hidden_sizes: tuple[int, ...] = (128,)
    """Policy MLP widths (the default policy of fastpg train)."""
    activation: Literal["tanh", "relu", "elu", "gelu", "silu"] = "relu"
    """Policy hidden-layer activation."""
    env_kernel: Literal["torch", "cpp"] = "torch"
    """Native CartPole step on CPU: torch ops or the fused C++ kernel."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N."""
    seed: int = 0
    """Seed of envs, policy and random actions."""
    json: Path | None = None
    """Write every figure, with the machine description, to this JSON file."""
    plot: Path | None = None
    """Write a PNG of rate against N (log axes, one line per backend, a panel per phase); needs
    matplotlib (pip install matplotlib)."""
    quiet: bool = False
    """No progress lines."""

    def __post_init__(self) -> None:
        _validate(self)

    def train_config(self, backend: str, num_envs: int) -> Config:
        """The training ``Config`` one (backend, N) cell is measured with."""
        return Config(
            env=self.env,
            backend=backend,
            num_envs=num_envs,
            num_steps=self.num_steps,
            hidden_sizes=self.hidden_sizes,
            activation=self.activation,
            env_kernel=self.env_kernel if backend == "torch" else "torch",
            device=self.device,
            seed=self.seed,
            eval_episodes=0,
            quiet=True,
        )


def _validate(b: BenchConfig) -> None:
    def fail(field: str, detail: str) -> None:
        raise ConfigError(field, detail)

    if not b.backends:
        fail("backends", "needs at least one backend")
    if not b.num_envs or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in b.num_envs):
        fail("num_envs", f"must be integers >= 1, got {b.num_envs!r}")
    bad = [p for p in b.phases if p not in PHASES]
    if not b.phases or bad:
        fail("phases", f"must be some of {', '.join(PHASES)}; got {', '.join(map(str, b.phases)) or 'none'}")
    for name, low in (("num_steps", 1), ("repeats", 1), ("warmup", 0)):
        v = getattr(b, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            fail(name, f"must be an integer >= {low}, got {v!r}")
    if b.activation not in ACTIVATIONS:
        fail("activation", f"must be one of {', '.join(ACTIVATIONS)}; got {b.activation!r}")
    for field in ("json", "plot"):
        path = getattr(b, field)
        if path is not None and not Path(path).parent.is_dir():
            fail(field, f"directory {Path(path).parent} does not exist")
    if b.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("plot", "needs matplotlib, which is not installed (pip install matplotlib)")
    # Every cell's training config must be valid: env id, backend for that id, device, kernel.
    for backend in b.backends:
        try:
            b.train_config(backend, b.num_envs[0])
        except ConfigError as e:
            field = "backends" if e.field == "backend" else e.field
            raise ConfigError(field, e.detail) from None


# -- measurement ----------------------------------------------------------------------------------


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[list[float], list[Any], float]:
    """Wall times of ``repeats`` calls of ``fn`` after ``warmup`` calls, what each returned, and
    the warm-up's total time (where first-call compilation lands)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    times, outs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        outs.append(out)
    return times, outs, warmup_s


def _random_actions(info, n: int, device: torch.device, g: torch.Generator, count: int = 16) -> list[torch.Tensor]:
    if info.discrete:
        return [torch.randint(0, info.num_actions, (n,), generator=g, device=device) for _ in range(count)]
    low, high = info.action_low.to(device), info.action_high.to(device)
    return [torch.rand((n, *info.action_shape), generator=g, device=device) * (high - low) + low for _ in range(count)]


def _measure_env(cfg: Config, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    from fastpg.envs import make_env

    t0 = time.perf_counter()
    env = make_env(cfg.env, cfg.num_envs, backend=cfg.backend, device=device, dtype=cfg.torch_env_dtype, fused=cfg.env_kernel == "cpp")
    setup_s = time.perf_counter() - t0
    try:
        env.reset(seed=cfg.seed)
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        actions = _random_actions(env.info, cfg.num_envs, device, g)
        with torch.inference_mode():  # as the collector steps envs
            # Size a repetition to about ENV_REPEAT_TARGET_S from a few probe steps.
            t1 = time.perf_counter()
            for i in range(3):
                env.step(actions[i % 16])
            synchronize(device)
            per_step = (time.perf_counter() - t1) / 3
            steps = int(min(2000, max(4, ENV_REPEAT_TARGET_S / max(per_step, 1e-7))))

            def run() -> tuple[int, int]:
                valid = torch.zeros((), dtype=torch.int64, device=device)
                for i in range(steps):
                    valid += env.step(actions[i % 16]).valid.sum()
                return int(valid), steps * cfg.num_envs

            times, outs, warmup_s = _time(run, device, warmup, repeats)
    finally:
        env.close()
    valid, total = outs[0]
    return _result(times, valid, total - valid, setup_s, warmup_s=warmup_s, steps=steps)


def _measure_trainer(phase: str, cfg: Config, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    from fastpg.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    setup_s = time.perf_counter() - t0
    T, N = cfg.num_steps, cfg.num_envs
    try:
        if phase == "collect":

            def run() -> tuple[int, int]:
                trainer.collect()
                return int(trainer.buf["valid"].sum()), T * N

        elif phase == "update":
            trainer.collect()

            def run() -> tuple[int, float]:
                frac = float(trainer.update()["mask_frac"])
                return T * N, frac  # T x N entries per update; frac of them in the loss

        else:  # train

            def run() -> tuple[int, int]:
                trainer.epoch()
                return int(trainer.buf["valid"].sum()), T * N

        times, outs, warmup_s = _time(run, device, warmup, repeats)
    finally:
        trainer.close()
    items = [o[0] for o in outs]
    if phase == "update":
        return _result(times, items[0], 0, setup_s, warmup_s=warmup_s, mask_frac=[o[1] for o in outs])
    return _result(times, statistics.median(items), T * N - statistics.median(items), setup_s, warmup_s=warmup_s, per_repeat_items=items)


def _measure_returns(T: int, N: int, device: torch.device, seed: int, warmup: int, repeats: int) -> dict[str, Any]:
    from fastpg.returns import reward_to_go

    g = torch.Generator(device=device).manual_seed(seed)
    reward = torch.rand(T, N, generator=g, device=device)
    done = torch.rand(T, N, generator=g, device=device) < 0.02
    out = torch.empty_like(reward)
    times, _, warmup_s = _time(lambda: reward_to_go(reward, done, 0.99, out=out), device, warmup, repeats)
    return _result(times, T * N, 0, 0.0, warmup_s=warmup_s)


def _result(times: list[float], items: float, reset_steps: float, setup_s: float, **extra: Any) -> dict[str, Any]:
    rates = sorted(items / t for t in times)
    return {
        "rate_median": statistics.median(rates),
        "rate_min": rates[0],
        "rate_max": rates[-1],
        "time_median_s": statistics.median(times),
        "times_s": times,
        "items": items,
        "reset_steps": reset_steps,
        "setup_s": setup_s,
        **extra,
    }


RATE_UNIT = {"env": "steps/s", "collect": "steps/s", "update": "samples/s", "train": "steps/s", "returns": "elements/s"}


def run_bench(b: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every (phase, backend, N) cell of ``b``; returns the report (see ``--json``)."""
    from fastpg.trainer import resolve_device

    device = resolve_device(b.device)
    cells: list[tuple[str, str | None, int]] = []
    for phase in b.phases:
        for n in b.num_envs:
            if phase == "returns":
                cells.append((phase, None, n))
            else:
                cells.extend((phase, backend, n) for backend in b.backends)
    results = []
    for i, (phase, backend, n) in enumerate(cells, 1):
        label = f"[{i}/{len(cells)}] {phase:<7} {backend or '-':<6} N={n:<7}"
        row: dict[str, Any] = {"phase": phase, "backend": backend, "num_envs": n, "num_steps": b.num_steps, "unit": RATE_UNIT[phase]}
        if backend in ("sync", "async") and n > MAX_ENVS_GYM_LOOP:
            row["skipped"] = f"{backend} builds one gymnasium env per copy; N > {MAX_ENVS_GYM_LOOP} is skipped"
        elif backend == "async" and n > MAX_ENVS_ASYNC:
            row["skipped"] = f"async runs one worker process per copy (~100 MB each); N > {MAX_ENVS_ASYNC} is skipped"
        else:
            try:
                if phase == "returns":
                    row.update(_measure_returns(b.num_steps, n, device, b.seed, b.warmup, b.repeats))
                else:
                    cfg = b.train_config(backend, n)
                    if phase == "env":
                        row.update(_measure_env(cfg, device, b.warmup, b.repeats))
                    else:
                        row.update(_measure_trainer(phase, cfg, device, b.warmup, b.repeats))
            except torch.OutOfMemoryError as e:  # a cell too big for this device: report and go on
                row["skipped"] = f"out of memory: {str(e).splitlines()[0]}"
        results.append(row)
        if progress:
            if "skipped" in row:
                progress(f"{label} skipped: {row['skipped']}")
            else:
                progress(f"{label} {format_si(row['rate_median'])} {row['unit']} (min {format_si(row['rate_min'])}, max {format_si(row['rate_max'])})")
    return {"config": _jsonable_config(b), "device": str(device), "machine": machine_info(device), "results": results}


def _jsonable_config(b: BenchConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(b).items()}


def machine_info(device: torch.device) -> dict[str, Any]:
    """Versions, CPU, GPU and thread count: what a reader needs to compare figures."""
    import gymnasium
    import numpy
    import tensordict

    from fastpg import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fastpg": __version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "tensordict": tensordict.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
    }


# -- output -----------------------------------------------------------------------------------------


def format_table(report: dict[str, Any]) -> str:
    """Rates (median of the repetitions) as a table: a row per phase and backend, a column per N."""
    rows = report["results"]
    ns = sorted({r["num_envs"] for r in rows})
    keys: list[tuple[str, str | None]] = []
    for r in rows:
        if (r["phase"], r["backend"]) not in keys:
            keys.append((r["phase"], r["backend"]))
    head = f"{'phase':<8} {'backend':<8} {'unit':<11}" + "".join(f"{'N=' + str(n):>11}" for n in ns)
    lines = [head, "-" * len(head)]
    for phase, backend in keys:
        cells = []
        for n in ns:
            r = next((r for r in rows if (r["phase"], r["backend"], r["num_envs"]) == (phase, backend, n)), None)
            cells.append("" if r is None else "skipped" if "skipped" in r else format_si(r["rate_median"]))
        lines.append(f"{phase:<8} {backend or '-':<8} {RATE_UNIT[phase]:<11}" + "".join(f"{c:>11}" for c in cells))
    m = report["machine"]
    lines.append(
        f"T={report['config']['num_steps']}, median of {report['config']['repeats']} repetitions; {m['device']}"
        f" ({m['gpu'] or m['cpu']}), {m['torch_threads']} torch threads, torch {m['torch']}, gymnasium {m['gymnasium']}"
    )
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Rate against N on log axes: a panel per phase, a line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in PHASES if any(r["phase"] == p for r in report["results"])]
    cols = min(3, len(phases))
    rows_n = math.ceil(len(phases) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(phases):]:
        ax.set_visible(False)
    for ax, phase in zip(axes.flat, phases):
        rows = [r for r in report["results"] if r["phase"] == phase and "skipped" not in r]
        for backend in dict.fromkeys(r["backend"] for r in rows):
            pts = sorted((r["num_envs"], r["rate_median"]) for r in rows if r["backend"] == backend)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=backend or "reward_to_go")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(phase)
        ax.set_xlabel("N (envs)")
        ax.set_ylabel(RATE_UNIT[phase])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    m = report["machine"]
    fig.suptitle(f"fastpg bench: {report['config']['env']}, T={report['config']['num_steps']}, {m['device']} ({m['gpu'] or m['cpu']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main_bench(b: BenchConfig) -> dict[str, Any]:
    """Run, print the table, write JSON and PNG as asked; returns the report."""
    progress = None if b.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_bench(b, progress)
    print(format_table(report), flush=True)
    if b.json is not None:
        Path(b.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    if b.plot is not None:
        write_plot(report, Path(b.plot))
    return report
