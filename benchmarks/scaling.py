"""Data-parallel scaling: K gloo ranks of 1 thread each against 1 process of 1 thread, same global batch.

    .venv/bin/python benchmarks/scaling.py --json benchmarks/results/scaling.json > benchmarks/results/scaling.txt

For each (N, T) of the grid, in alternating order, ``--rounds`` times: ``fastpg train`` on CartPole-v1
as one process, as ``torchrun --nproc-per-node K`` ranks of one thread, and as one process of K
threads (the same cores used by threads instead of processes), each on the generic path
(``--fused off``) and on the fused epoch (``--fused auto``). Every run trains ``--epochs`` epochs
with the target out of reach (no early stop, no evaluation). Throughput is the valid steps of
epochs 2.. over their collect + update time (rank 0's, which includes waiting for the others);
``comm`` is the share of that time rank 0 spent in collectives (all-reduces, gathers, the per-step
exchange of reset counts above 512 copies, waiting for the slower rank included).

Run it on an otherwise idle machine with at least K cores: ranks that share a core measure the
scheduler, not fastpg.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GRID = ((16, 512, 12), (256, 128, 12), (4096, 64, 6), (16384, 32, 6))  # (N, T, epochs)


def _run(path: str, n: int, t: int, epochs: int, ranks: int, threads: int = 1) -> dict[str, float]:
    """One run: ``ranks`` processes (1: plain ``python -m fastpg``) of ``threads`` threads each on
    ``path`` (generic or fused)."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        flags = [
            "-m", "fastpg", "train", "--num-envs", str(n), "--num-steps", str(t), "--max-epochs", str(epochs),
            "--target-return", "1e9", "--eval-episodes", "0", "--quiet", "--metrics-file", str(metrics),
            "--fused", "auto" if path == "fused" else "off",
        ]  # fmt: skip
        launcher = [sys.executable]
        if ranks > 1:  # torchrun's own -m: each rank runs "python -m fastpg train ..."
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
        cmd = [*launcher, *flags]
        done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        summary = rows[-1]
        if summary.get("epoch") != path:
            raise SystemExit(f"{' '.join(cmd)} ran the {summary.get('epoch')} path, not {path}")
        epochs_ = [r for r in rows if isinstance(r.get("epoch"), int) and not r.get("summary")][1:]
        steps = epochs_[-1]["env_steps"] - rows_first_steps(rows)
        seconds = sum(r["collect_s"] + r["update_s"] for r in epochs_)
        comm = sum(r.get("comm_s", 0.0) for r in epochs_)
        return {"sps": steps / seconds, "comm_share": comm / seconds}


def rows_first_steps(rows: list[dict]) -> int:
    """The env steps after epoch 1 (the warm-up epoch left out)."""
    return next(r["env_steps"] for r in rows if r.get("epoch") == 1)


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # (path, ranks, threads): 1 process of 1 thread, K ranks of 1 thread, and 1 process of K threads
    # (the same cores used by threads instead of processes)
    kinds = [
        (path, ranks, threads)
        for path in ("generic", "fused")
        for ranks, threads in ((1, 1), (args.ranks, 1), (1, args.ranks))
    ]
    results = []
    for n, t, epochs in GRID:
        runs: dict[tuple[str, int, int], list[dict[str, float]]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for path, ranks, threads in kinds if r % 2 == 0 else kinds[::-1]:
                runs[path, ranks, threads].append(_run(path, n, t, epochs, ranks, threads))
        row: dict[str, float] = {"num_envs": n, "num_steps": t, "epochs": epochs}
        line = f"N={n:6d} T={t:4d}"
        for path in ("generic", "fused"):
            one = statistics.median(x["sps"] for x in runs[path, 1, 1])
            many = statistics.median(x["sps"] for x in runs[path, args.ranks, 1])
            threaded = statistics.median(x["sps"] for x in runs[path, 1, args.ranks])
            comm = statistics.median(x["comm_share"] for x in runs[path, args.ranks, 1])
            row |= {f"{path}_1_sps": one, f"{path}_ranks_sps": many, f"{path}_speedup": many / one}
            row |= {
                f"{path}_comm_share": comm,
                f"{path}_threads_sps": threaded,
                f"{path}_threads_speedup": threaded / one,
            }
            line += (
                f" | {path}: 1 proc {one / 1e3:6.0f}k, {args.ranks} ranks {many / 1e3:6.0f}k ({many / one:.2f}x; "
                f"{comm:.0%} in collectives), 1 proc x {args.ranks} threads {threaded / 1e3:6.0f}k "
                f"({threaded / one:.2f}x)"
            )
        results.append(row)
        print(line, flush=True)
    if args.json:
        import platform

        import torch

        record = {
            "ranks": args.ranks,
            "rounds": args.rounds,
            "threads_per_process": 1,
            "cpu": _cpu_model() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
