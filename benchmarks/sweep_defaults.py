"""The sweep behind fastpg's defaults: time to solve CartPole-v1 AND Acrobot-v1, per configuration.

    # stage 1: the whole grid, 5 seeds
    .venv/bin/python benchmarks/sweep_defaults.py --json benchmarks/results/sweep_defaults.json \\
        > benchmarks/results/sweep_defaults.txt
    # stage 2: the leaders and the robustness candidates, 10 seeds
    .venv/bin/python benchmarks/sweep_defaults.py --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --configs N8_T512_lr0.01 N8_T512_lr0.01_ent0.01 N16_T512_lr0.01_ent0.01 N8_T512_lr0.005 \\
        N32_T512_lr0.01 N64_T512_lr0.02 --json benchmarks/results/sweep_defaults_10seeds.json \\
        > benchmarks/results/sweep_defaults_10seeds.txt

Every configuration (changes from ``Config``'s defaults: N, T, learning rate, policy) trains each task
for every seed under the protocol of ``solve_protocol.py`` (evaluation after every update, 100
fresh episodes, evaluation time excluded; the 0.5 s grid beside it). A configuration qualifies when
every seed of both tasks solves; the defaults are the qualifying configuration with the smallest
geometric mean of the two tasks' median times to solve (so that neither task alone decides). Runs
on the fused epoch where it applies (both tasks, here). On an otherwise idle machine: about 15
minutes on 2 cores.

Masking unfinished episodes (``unfinished="mask"``) keeps every return in the loss a complete
Monte-Carlo return, but an episode that starts late in the epoch only counts if it is short: the
sweep keeps T at least a sizeable fraction of the 500-step limit of both tasks and records what
shorter T costs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from solve_protocol import median_time, solve_fastpg

from fastpg import Config

TASKS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}


def grid() -> dict[str, dict[str, Any]]:
    """Configuration name -> changes from Config's defaults."""
    configs = {}
    no_bonus = dict(entropy_coef=0.0)  # explicit: the stage-1 grid ran before the default became 0.01
    for n, t, lr in itertools.product((8, 16, 32, 64), (256, 512), (1e-2, 2e-2)):
        configs[f"N{n}_T{t}_lr{lr:g}"] = dict(num_envs=n, num_steps=t, lr=lr, **no_bonus)
    configs["N16_T512_lr0.01_tanh32"] = dict(
        num_envs=16, num_steps=512, lr=1e-2, hidden_sizes=(32,), activation="tanh", **no_bonus
    )
    configs["N16_T128_lr0.01"] = dict(num_envs=16, num_steps=128, lr=1e-2, **no_bonus)  # the cost of a short T
    # Robustness candidates (a policy that collapses onto one action on Acrobot never recovers):
    # an entropy bonus, a smaller step.
    for n in (8, 16):
        configs[f"N{n}_T512_lr0.01_ent0.01"] = dict(num_envs=n, num_steps=512, lr=1e-2, entropy_coef=0.01)
    configs["N8_T512_lr0.005"] = dict(num_envs=8, num_steps=512, lr=5e-3, **no_bonus)
    return configs


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    solved = sum(r["solved"] for r in rows)
    steps = [r["env_steps_to_solve"] for r in rows if r["solved"]]
    return {
        "solved": solved,
        "seeds": len(rows),
        "median_s": median_time(rows),
        "worst_s": max((r["time_to_solve_s"] for r in rows if r["solved"]), default=None),
        "grid_median_s": median_time(rows, "grid_time_to_solve_s"),
        "median_steps": int(statistics.median(steps)) if steps else None,
        "sps": statistics.median(r["sps"] for r in rows if r["sps"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--configs", nargs="+", default=None, help="names from the grid (default: all)")
    p.add_argument("--max-train-s", type=float, default=5.0, help="training time after which a run counts as unsolved")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    configs = grid()
    names = args.configs or list(configs)
    Config(**configs[names[0]])  # fail fast on a bad grid
    report: dict[str, Any] = {"seeds": args.seeds, "max_train_s": args.max_train_s, "configs": {}}
    t0 = time.perf_counter()
    for name in names:
        entry = {"changes": {k: list(v) if isinstance(v, tuple) else v for k, v in configs[name].items()}}
        for env_id, target in TASKS.items():
            rows = [
                solve_fastpg("fastpg", seed, target, {"env": env_id, **configs[name]}, max_train_s=args.max_train_s)
                for seed in args.seeds
            ]
            entry[env_id] = {**summarize(rows), "runs": rows}
        medians = [entry[e]["median_s"] for e in TASKS]
        qualifies = all(entry[e]["solved"] == len(args.seeds) for e in TASKS)
        entry["score_s"] = math.prod(medians) ** (1 / len(medians)) if qualifies and all(medians) else None
        report["configs"][name] = entry
        cells = "  ".join(
            f"{e.split('-')[0]} {entry[e]['solved']}/{len(args.seeds)} med {_s(entry[e]['median_s'])} "
            f"worst {_s(entry[e]['worst_s'])} grid {_s(entry[e]['grid_median_s'])}"
            for e in TASKS
        )
        print(f"{name:<24} {cells}  score {_s(entry['score_s'])}", flush=True)
    scored = {n: e["score_s"] for n, e in report["configs"].items() if e["score_s"] is not None}
    best = min(scored, key=scored.get, default=None)
    report["best"] = best
    report["wall_s"] = time.perf_counter() - t0
    print(f"best: {best} ({report['wall_s']:.0f} s of sweep)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}s"


if __name__ == "__main__":
    sys.exit(main())
