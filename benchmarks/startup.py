"""Whole-process wall time of ``fastpg train`` on the defaults, as a user waits for it, against
``python -c "import torch"`` measured alternately in the same run (issue 24's measure).

    .venv/bin/python benchmarks/startup.py --json benchmarks/results/startup/<date>.json

Each round runs, one after another: ``python -c "import torch"``, ``fastpg train`` (the defaults:
CartPole-v1, train until solved, the final 100-episode evaluation), and, with ``--before REV``, the
same command from a checkout of an earlier commit (a temporary git worktree on ``PYTHONPATH``,
the same environment), so that the change is a ratio measured in one run. Then the quick paths:
``fastpg --help``, ``fastpg --version`` and a refused flag (``fastpg train --num-envs 0``). The
figures are medians over ``--rounds`` rounds of wall time (``time.perf_counter`` around
``subprocess.run``, as ``/usr/bin/time`` measures). The compiled kernels must be built already
(run ``fastpg train`` once): a first build is not start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds of one whole process (its output discarded); exits if the process fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 2) or (done.returncode == 2 and "--num-envs" not in cmd):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--before", default=None, help="an earlier commit to time in the same run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    py = sys.executable
    fastpg = [py, "-m", "fastpg"]
    cells: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "import torch": ([py, "-c", "import torch"], None),
        "fastpg train": ([*fastpg, "train"], None),
    }
    worktree = None
    if args.before:
        worktree = Path(tempfile.mkdtemp()) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(worktree), args.before],
                       check=True, capture_output=True)  # fmt: skip
        cells[f"fastpg train @ {args.before}"] = ([*fastpg, "train"], {**os.environ, "PYTHONPATH": str(worktree)})
    quick = {
        "fastpg --help": [*fastpg, "--help"],
        "fastpg --version": [*fastpg, "--version"],
        "fastpg train --num-envs 0 (refused)": [*fastpg, "train", "--num-envs", "0"],
    }
    times: dict[str, list[float]] = {name: [] for name in [*cells, *quick]}
    try:
        for cmd, env in cells.values():  # warm-up: caches, kernels loaded once
            wall(cmd, env)
        for r in range(args.rounds):
            for name, (cmd, env) in cells.items():
                times[name].append(wall(cmd, env))
            for name, cmd in quick.items():
                times[name].append(wall(cmd))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    torch_s = statistics.median(times["import torch"])
    rows = []
    print(f"{platform.processor() or platform.machine()}, {args.rounds} rounds, medians of wall time")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"command": name, "median_s": med, "runs_s": ts, "vs_import_torch": med / torch_s})
        print(f"{name:42s} {med:6.2f} s  {med / torch_s:5.2f}x import torch")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rounds": args.rounds, "before": args.before, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
