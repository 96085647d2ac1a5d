"""Training steps/s against the thread count, across N and policy sizes: the measurements behind
``fastpg.placement`` (the rule ``--threads auto`` follows), and a check of the rule on them.

    .venv/bin/python benchmarks/threads.py --json benchmarks/results/threads/<date>.json

For each cell (env, N, T, policy; the fused epoch, or the generic path with ``--fused off``) one
trainer runs epochs with each thread count of ``--threads`` in turn (default 1 and every core),
``--rounds`` times alternately in this one process, so the machine's drift cancels; a figure is
the median over rounds of env steps over wall time. The table gives each count's steps/s as a
ratio to one thread, the count the rule picks, and the pick's ratio: the rule must never be
slower than one thread (beyond noise) and should be near the best.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fastpg import Config, Trainer
from fastpg.placement import ThreadChoice

POLICIES = (((32,), "tanh"), ((128,), "relu"), ((64, 64), "tanh"))
FUSED_GRID = ((16, 512), (64, 256), (256, 128), (1024, 64), (4096, 32), (16384, 32))
GENERIC_GRID = ((16, 128), (256, 64), (4096, 16))


def measure(cfg: Config, counts: list[int], rounds: int) -> tuple[dict[int, float], ThreadChoice]:
    """Median steps/s of each thread count over ``rounds`` alternating rounds of one trainer, and
    the count the rule picks for it (``Trainer.thread_choice``)."""
    cfg = cfg.replace(max_epochs=10**9, max_env_steps=10**15, target_return=1e12, eval_episodes=0, quiet=True)
    reps = max(2, min(15, int(3e5 // (cfg.num_envs * cfg.num_steps)) + 2)) // (3 if cfg.fused == "off" else 1)
    runs: dict[int, list[float]] = {n: [] for n in counts}
    with Trainer(cfg) as tr:
        pick = tr.thread_choice
        tr.epoch()
        for _ in range(rounds):
            for n in counts:
                tr.threads = n
                steps, start = tr.counters.env_steps, time.perf_counter()
                for _ in range(reps):
                    tr.epoch()
                runs[n].append((tr.counters.env_steps - steps) / (time.perf_counter() - start))
    return {n: statistics.median(v) for n, v in runs.items()}, pick


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cores = torch.get_num_threads()
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, cores}))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    p.add_argument("--paths", nargs="+", default=["fused", "generic"], choices=["fused", "generic"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    rows = []
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.rounds} rounds; steps/s relative to 1 thread")  # fmt: skip
    for path in args.paths:
        grid = FUSED_GRID if path == "fused" else GENERIC_GRID
        for env in args.envs:
            for (n, t), (hidden, act) in ((c, pol) for c in grid for pol in POLICIES):
                cfg = Config.for_env(env).replace(
                    num_envs=n,
                    num_steps=t,
                    hidden_sizes=hidden,
                    activation=act,
                    fused="auto" if path == "fused" else "off",
                )
                sps, pick = measure(cfg, args.threads, args.rounds)
                nearest = min(args.threads, key=lambda c: abs(c - pick.count))
                base = sps[args.threads[0]]
                row = {"path": path, "env": env, "num_envs": n, "num_steps": t, "hidden_sizes": list(hidden),
                       "activation": act, "sps": {str(k): v for k, v in sps.items()}, "pick": pick.count,
                       "pick_vs_one": sps[nearest] / base, "best_vs_one": max(sps.values()) / base}  # fmt: skip
                rows.append(row)
                ratios = "  ".join(f"{k}: {v / base:4.2f}" for k, v in sps.items())
                print(f"{path:7s} {env:12s} N={n:5d} T={t:3d} {str(hidden):9s} {act:4s} 1 thread {base / 1e6:6.2f}M  "
                      f"{ratios}  pick {pick.count} -> {row['pick_vs_one']:4.2f}", flush=True)  # fmt: skip
    worst = min(r["pick_vs_one"] for r in rows)
    print(f"the rule's pick against 1 thread: worst {worst:.2f}, "
          f"median {statistics.median(r['pick_vs_one'] for r in rows):.2f}", file=sys.stderr)  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"rounds": args.rounds, "threads": args.threads, "rows": rows}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
