"""The fused epoch against the generic path, in one run: training steps per second of each on
the configurations issue 21 names (Pendulum-v1 and MountainCarContinuous-v0 on their settings,
CartPole-v1 with the value baseline, the example user env) and on the defaults.

    .venv/bin/python benchmarks/fused_envs.py --json benchmarks/results/fused_envs/<date>.json

Each cell trains the same configuration with ``fused="auto"`` and ``fused="off"`` for a fixed
number of epochs (the target out of reach), the two alternating over ROUNDS rounds in this one
process so that the machine's drift cancels; the figure is the median over rounds of env steps
divided by the training clock (``Trainer.counters.wall_s``: collect, update and metrics, no
evaluation), and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from fastpg import Config, Trainer

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "point_mass"))
from point_mass import PointMass

# name -> (the Config, epochs fused, epochs generic: the generic path is 15-40x slower)
CELLS: dict[str, tuple[Config, int, int]] = {
    "Pendulum-v1 (its settings)": (Config.for_env("Pendulum-v1"), 40, 8),
    "MountainCarContinuous-v0 (its settings)": (Config.for_env("MountainCarContinuous-v0"), 20, 3),
    "CartPole-v1 --baseline value": (Config(baseline="value"), 60, 6),
    "CartPole-v1 (defaults)": (Config(), 60, 6),
    "Acrobot-v1 (defaults)": (Config(env="Acrobot-v1"), 60, 6),
    "PointMass-v0 (examples/point_mass)": (
        Config(env="PointMass-v0", num_envs=32, num_steps=100, hidden_sizes=(32,), activation="tanh", baseline="value"),
        100,
        10,
    ),
}


def steps_per_s(cfg: Config, epochs: int) -> float:
    cfg = cfg.replace(max_epochs=epochs, max_env_steps=10**12, target_return=1e12, eval_episodes=0, quiet=True)
    env = PointMass(cfg.num_envs) if cfg.env == "PointMass-v0" else None
    with Trainer(cfg, env=env) as tr:
        assert (tr.fused is not None) == (cfg.fused == "auto"), tr.epoch_notice()
        for _ in tr.run():
            pass
        return tr.counters.env_steps / tr.counters.wall_s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cells", nargs="+", default=list(CELLS), help="default: all")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for name in args.cells:
        cfg, fused_epochs, generic_epochs = CELLS[name]
        fused, generic = [], []
        steps_per_s(cfg, 2)  # warm-up: the kernels built and loaded
        for _ in range(args.rounds):
            fused.append(steps_per_s(cfg, fused_epochs))
            generic.append(steps_per_s(cfg.replace(fused="off"), generic_epochs))
        row = {"cell": name, "fused_sps": statistics.median(fused), "generic_sps": statistics.median(generic),
               "fused_runs": fused, "generic_runs": generic}  # fmt: skip
        row["ratio"] = row["fused_sps"] / row["generic_sps"]
        rows.append(row)
        print(f"{name:42s} fused {row['fused_sps'] / 1e6:6.2f}M steps/s  generic {row['generic_sps'] / 1e3:7.1f}k "
              f"steps/s  {row['ratio']:5.1f}x", flush=True)  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
