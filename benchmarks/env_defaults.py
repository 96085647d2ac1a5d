"""What every natively implemented id reaches with the settings fastpg gives it (``Config.for_env``:
``ENV_DEFAULTS`` where the id has some, else Config's own defaults), over a few seeds.

    .venv/bin/python benchmarks/env_defaults.py --json benchmarks/results/env_defaults.json \\
        > benchmarks/results/env_defaults.txt

Each run is ``fastpg.train`` as ``fastpg train --env ID --seed S`` runs it (its own stop rule: the
latest 100 episodes reach the env's reward threshold and 100 fresh episodes confirm it; ids without
a threshold train to their step budget), then the final evaluation of 100 fresh episodes. The table
gives the median evaluation return, how many seeds solved, and the median training time and steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fastpg import Config, train
from fastpg.config import ENV_DEFAULTS
from fastpg.envs import native_env_ids


def run(env_id: str, seed: int) -> dict[str, Any]:
    cfg = Config.for_env(env_id, seed=seed, quiet=True)
    with contextlib.redirect_stdout(io.StringIO()):
        s = train(cfg)
    keys = ("solved", "eval_return_mean", "train_wall_s", "env_steps", "stop_reason", "target_return", "epoch")
    return {"env": env_id, "seed": seed, **{k: s.get(k) for k in keys}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--envs", nargs="+", default=list(native_env_ids()))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    t0 = time.perf_counter()
    rows = []
    print("env                       settings          solved  eval return (median)  train time  env steps", flush=True)
    for env_id in args.envs:
        runs = [run(env_id, seed) for seed in args.seeds]
        rows.extend(runs)
        solved = sum(bool(r["solved"]) for r in runs)
        target = runs[0]["target_return"]
        print(
            f"{env_id:<25} {'ENV_DEFAULTS' if env_id in ENV_DEFAULTS else 'Config':<17} "
            f"{f'{solved}/{len(runs)}' if target is not None else 'no target':<7} "
            f"{statistics.median(r['eval_return_mean'] for r in runs):>20.1f}  "
            f"{statistics.median(r['train_wall_s'] for r in runs):>9.2f}s  "
            f"{statistics.median(r['env_steps'] for r in runs):>9,.0f}",
            flush=True,
        )
    print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"seeds": args.seeds, "env_defaults": ENV_DEFAULTS, "runs": rows}, indent=1, default=list) + "\n"
        )


if __name__ == "__main__":
    sys.exit(main())
