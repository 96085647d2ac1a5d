"""Time-to-solve CartPole-v1: fastpg on its defaults vs the classic per-episode REINFORCE.

Runs both, one after the other in this one process, for the same seeds, and prints a table with
the medians and their ratio, then writes every figure as JSON.

    python benchmarks/compare_cartpole.py --seeds 0 1 2 --json benchmarks/results/cartpole_solve.json

Run it on an otherwise idle machine: two CPU-bound processes on 2 cores slow each other down by
far more than 2x (torch's OpenMP threads spin).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classic_reinforce import train_classic  # noqa: E402

from fastpg import Config, __version__, train  # noqa: E402


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--classic-max-time-s", type=float, default=300.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    rows = []
    for seed in args.seeds:
        with contextlib.redirect_stdout(io.StringIO()):
            s = train(Config(seed=seed, quiet=True))
        rows.append({"system": "fastpg", "seed": seed, **{k: s[k] for k in (
            "solved", "time_to_solve_s", "env_steps_to_solve", "train_wall_s", "env_steps", "eval_return_mean", "sps")}})
        print(json.dumps(rows[-1]), flush=True)
        rows.append(train_classic(seed, max_time_s=args.classic_max_time_s))
        print(json.dumps(rows[-1]), flush=True)

    def col(system, key):
        return [r[key] for r in rows if r["system"] == system]

    print(f"\n{'system':<20}{'solved':>8}{'median time_to_solve_s':>26}{'median env_steps':>20}{'median sps':>14}")
    med = {}
    for system in ("fastpg", "classic_reinforce"):
        solved = col(system, "solved")
        med[system] = _median(col(system, "time_to_solve_s"))
        print(f"{system:<20}{sum(map(bool, solved)):>5}/{len(solved):<2}{med[system] or float('nan'):>26.2f}"
              f"{_median(col(system, 'env_steps_to_solve')) or float('nan'):>20,.0f}{_median(col(system, 'sps')):>14,.0f}")
    ratio = med["classic_reinforce"] / med["fastpg"] if med["fastpg"] and med["classic_reinforce"] else None
    print(f"\nspeed-up in time to solve (classic median / fastpg median): {ratio and round(ratio, 2)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"fastpg": __version__, "torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads()}
        args.json.write_text(json.dumps({"meta": meta, "runs": rows, "speedup": ratio}, indent=1))


if __name__ == "__main__":
    main()
