"""Train REINFORCE on PointMass to its threshold with the fused epoch (its env kernel), then
measure the fused and the generic path (its torch version) on one fixed budget in this run:
``python examples/point_mass/train.py`` from the repository root."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from point_mass import PointMass

from fastpg import Config, Trainer


def train(fused: str, max_env_steps: int, *, to_threshold: bool = True) -> dict:
    """One run; ``to_threshold=False`` spends the whole budget (the target is set out of reach)."""
    cfg = Config(env="PointMass-v0", num_envs=32, num_steps=100, hidden_sizes=(32,), activation="tanh",
                 baseline="value", lr=3e-3, max_env_steps=max_env_steps, eval_episodes=32, fused=fused,
                 target_return=None if to_threshold else 0.0, quiet=True)  # fmt: skip
    with Trainer(cfg, env=PointMass(cfg.num_envs), eval_env=PointMass) as tr:
        start = time.perf_counter()
        metrics = list(tr.run())
        seconds = time.perf_counter() - start
        evaluation = tr.evaluate(100)
    steps = metrics[-1]["env_steps"]
    return {"epoch": "fused" if fused == "auto" else "generic", "env_steps": steps, "train_s": round(seconds, 3),
            "steps_per_s": round(steps / seconds), "eval_return": round(evaluation["eval_return_mean"], 2),
            "stop_reason": tr.stop_reason}  # fmt: skip


if __name__ == "__main__":
    print("to the threshold:", train("auto", 2_000_000))
    fused, generic = train("auto", 300_000, to_threshold=False), train("off", 300_000, to_threshold=False)
    print("fixed budget:", fused)
    print("fixed budget:", generic)
    print(f"fused / generic training steps per second: {fused['steps_per_s'] / generic['steps_per_s']:.1f}x")
