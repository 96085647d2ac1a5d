"""``fastpg bench``'s grid of measurements and its outputs: table, JSON with the machine, plot."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastpg.bench.config import PHASES, BenchConfig, check_bench_config
from fastpg.bench.engine import env_runner, returns_runner, time_runner, trainer_runner
from fastpg.metrics import format_si, machine_info
from fastpg.preflight import resolve_device

__all__ = [
    "run_bench",
    "main_bench",
    "format_table",
    "write_plot",
    "machine_info",
    "RATE_UNIT",
    "MAX_ENVS_GYM_LOOP",
    "MAX_ENVS_ASYNC",
]

# Building this many gymnasium env objects in one process (sync) or processes (async) takes
# minutes; larger N for those backends is skipped and reported as skipped.
MAX_ENVS_GYM_LOOP = 4096
# async starts one worker process per copy, each ~100 MB (it imports torch): 256 of them filled the
# 24 GB of the development machine. Larger N is skipped for async.
MAX_ENVS_ASYNC = 64

RATE_UNIT = {"env": "steps/s", "collect": "steps/s", "update": "samples/s", "train": "steps/s", "returns": "elements/s"}


def _skip_reason(backend: str | None, n: int) -> str | None:
    if backend in ("sync", "async") and n > MAX_ENVS_GYM_LOOP:
        return f"{backend} builds one gymnasium env per copy; N > {MAX_ENVS_GYM_LOOP} is skipped"
    if backend == "async" and n > MAX_ENVS_ASYNC:
        return f"async runs one worker process per copy (~100 MB each); N > {MAX_ENVS_ASYNC} is skipped"
    return None


def _measure(b: BenchConfig, phase: str, backend: str | None, n: int, device: torch.device) -> dict[str, Any]:
    if phase == "returns":
        runner = returns_runner(b.num_steps, n, device, b.seed)
    elif phase == "env":
        runner = env_runner(b.train_config(backend, n), device)
    else:
        runner = trainer_runner(phase, b.train_config(backend, n))
    return time_runner(runner, device, b.warmup, b.repeats)


def run_bench(b: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every (phase, backend, N) cell of ``b``; returns the report (see ``--json``)."""
    check_bench_config(b)
    device = resolve_device(b.device)
    cells = [
        (p, None if p == "returns" else be, n)
        for p in b.phases
        for n in b.num_envs
        for be in (("-",) if p == "returns" else b.backends)
    ]
    results = []
    for i, (phase, backend, n) in enumerate(cells, 1):
        row: dict[str, Any] = {
            "phase": phase,
            "backend": backend,
            "num_envs": n,
            "num_steps": b.num_steps,
            "unit": RATE_UNIT[phase],
        }
        skipped = _skip_reason(backend, n)
        try:
            row.update({"skipped": skipped} if skipped else _measure(b, phase, backend, n, device))
        except torch.OutOfMemoryError as e:  # a cell too big for this device: report and go on
            row["skipped"] = f"out of memory: {str(e).splitlines()[0]}"
        results.append(row)
        if progress:
            label = f"[{i}/{len(cells)}] {phase:<7} {backend or '-':<6} N={n:<7}"
            if "skipped" in row:
                progress(f"{label} skipped: {row['skipped']}")
            else:
                progress(
                    f"{label} {format_si(row['rate_median'])} {row['unit']} "
                    f"(min {format_si(row['rate_min'])}, max {format_si(row['rate_max'])})"
                )
    return {"config": b.to_dict(), "device": str(device), "machine": machine_info(device), "results": results}


def format_table(report: dict[str, Any]) -> str:
    """Rates (median of the repetitions) as a table: a row per phase and backend, a column per N."""
    rows = report["results"]
    ns = sorted({r["num_envs"] for r in rows})
    keys = list(dict.fromkeys((r["phase"], r["backend"]) for r in rows))
    by_cell = {(r["phase"], r["backend"], r["num_envs"]): r for r in rows}
    head = f"{'phase':<8} {'backend':<8} {'unit':<11}" + "".join(f"{'N=' + str(n):>11}" for n in ns)
    lines = [head, "-" * len(head)]
    for phase, backend in keys:
        cells = []
        for n in ns:
            r = by_cell.get((phase, backend, n))
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
    fig, axes = plt.subplots(
        math.ceil(len(phases) / cols), cols, figsize=(4.2 * cols, 3.4 * math.ceil(len(phases) / cols)), squeeze=False
    )
    for ax in axes.flat[len(phases) :]:
        ax.set_visible(False)
    for ax, phase in zip(axes.flat, phases):
        rows = [r for r in report["results"] if r["phase"] == phase and "skipped" not in r]
        for backend in dict.fromkeys(r["backend"] for r in rows):
            pts = sorted((r["num_envs"], r["rate_median"]) for r in rows if r["backend"] == backend)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=backend or "reward_to_go")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(title=phase, xlabel="N (envs)", ylabel=RATE_UNIT[phase])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    m = report["machine"]
    fig.suptitle(
        f"fastpg bench: {report['config']['env']}, T={report['config']['num_steps']}, "
        f"{m['device']} ({m['gpu'] or m['cpu']})",
        fontsize=9,
    )
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
