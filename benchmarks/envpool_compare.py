"""Raw env stepping of fastpg's pool against gymnasium's SyncVectorEnv and EnvPool (C++ envs, a
thread pool), in numpy, the policy left out: the measurement behind docs/backends.md's choice.

    .venv/bin/pip install envpool==1.2.5   # not a fastpg dependency; its last wheel for Python 3.11
    .venv/bin/python benchmarks/envpool_compare.py --envs HalfCheetah-v5 --num-envs 16 64 \\
        --json benchmarks/results/pool/<date>-envpool.json

Each variant is built once; in ``--rounds`` alternating rounds each does 10 warm-up and
``--steps`` timed lockstep steps with one fixed action; figures are medians over rounds, ratios to
sync in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from fastpg.envs.pool import PoolVectorEnv
from fastpg.placement import usable_cores


def variants(env_id: str, n: int, cores: int) -> dict:
    out = {
        "sync": lambda: gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", vector_kwargs={"copy": False}),
        f"pool W={cores}": lambda: PoolVectorEnv(env_id, n, min(cores, n)),
    }
    try:
        import envpool
    except ImportError:
        print("envpool is not installed: measuring sync and the pool only", file=sys.stderr)
        return out
    for threads in sorted({1, cores}):
        out[f"envpool t={threads}"] = lambda t=threads: envpool.make(
            env_id, env_type="gymnasium", num_envs=n, num_threads=t, seed=0
        )
    return out


def rate(env, action: np.ndarray, steps: int) -> float:
    for _ in range(10):
        env.step(action)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return len(action) * steps / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v5"])
    p.add_argument("--num-envs", type=int, nargs="+", default=[16, 64])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    cores, rows = usable_cores(), []
    for env_id in a.envs:
        for n in a.num_envs:
            envs = {name: make() for name, make in variants(env_id, n, cores).items()}
            space = envs["sync"].single_action_space
            if space.shape:
                action = np.random.default_rng(0).uniform(-1, 1, (n, *space.shape)).astype(space.dtype)
            else:
                action = np.zeros(n, dtype=np.int64)
            for env in envs.values():  # EnvPool's seed is given when it is made (reset(seed=) warns)
                env.reset(seed=0) if isinstance(env, gym.vector.VectorEnv) else env.reset()
            runs = {name: [] for name in envs}
            for _ in range(a.rounds):
                for name, env in envs.items():
                    runs[name].append(rate(env, action, a.steps))
            for name, r in runs.items():
                ratio = statistics.median(x / s for x, s in zip(r, runs["sync"]))
                rows.append(
                    {"env": env_id, "num_envs": n, "variant": name, "sps": statistics.median(r), "vs_sync": ratio}
                )
                print(
                    f"{env_id:<16} N={n:<5} {name:<13} {statistics.median(r):>9.0f} steps/s {ratio:>5.2f}x sync",
                    flush=True,
                )
            for env in envs.values():
                env.close()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
                                      "usable_cores": cores, "results": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
