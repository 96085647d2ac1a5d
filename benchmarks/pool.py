"""Env stepping and collection through ``--backend pool`` against ``sync`` and ``async``: the
measurements behind the pool's default W and ``auto``'s choice (docs/backends.md).

    .venv/bin/python benchmarks/pool.py --json benchmarks/results/pool/<date>.json

For each env and N, one trainer per backend (pool once per W of ``--workers``) is built, and in
``--rounds`` alternating rounds each does ``--steps`` lockstep env steps with a fixed action
(``step``: what stepping costs through fastpg's adapter, after 10 warm-up steps) and one collect of T steps with the MLP
policy (``collect``: the policy's forward, sampling and storage writes included). A figure is the
median over rounds of env steps per second; ratios are to sync in the same round, so the
machine's drift cancels. Needs the env's package (``pip install 'fastpg-rl[mujoco]'``).
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
from fastpg.placement import usable_cores


def variants(num_envs: int, workers: list[int], with_async: bool) -> list[tuple[str, dict]]:
    """(label, Config changes) for each backend measured at ``num_envs``."""
    out = [("sync", dict(backend="sync"))]
    out += [(f"pool W={w}", dict(backend="pool", pool_workers=w)) for w in workers if w <= num_envs]
    if with_async:
        out.append(("async", dict(backend="async")))
    return out


def step_rate(tr: Trainer, steps: int, warm: int = 10) -> float:
    """Env steps per second of ``steps`` lockstep steps with one fixed action, after ``warm``
    steps (a pool's workers asleep since the last block wake slowly: a few ms on a VM)."""
    env = tr.env
    gen = torch.Generator().manual_seed(0)
    shape = (env.num_envs,) if env.info.discrete else (env.num_envs, *env.info.action_shape)
    if env.info.discrete:
        action = torch.randint(env.info.num_actions, shape, generator=gen)
    else:
        action = torch.rand(shape, generator=gen) * 2 - 1
    for _ in range(warm):
        env.step(action)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return env.num_envs * steps / (time.perf_counter() - start)


def collect_rate(tr: Trainer) -> float:
    """Env steps per second of one collect (T steps of N copies, the policy sampling)."""
    start = time.perf_counter()
    tr.collect()
    return tr.cfg.num_envs * tr.cfg.num_steps / (time.perf_counter() - start)


def measure(env_id: str, num_envs: int, num_steps: int, labels, rounds: int, steps: int) -> dict:
    base = Config.for_env(env_id, num_envs=num_envs, num_steps=num_steps, eval_episodes=0, quiet=True)
    trainers = {label: Trainer(base.replace(**changes)) for label, changes in labels}
    try:
        for tr in trainers.values():  # warm up: first steps, first forward
            step_rate(tr, 20)
            tr.collect()
        runs = {label: {"step": [], "collect": []} for label in trainers}
        for _ in range(rounds):
            for label, tr in trainers.items():
                runs[label]["step"].append(step_rate(tr, steps))
                runs[label]["collect"].append(collect_rate(tr))
    finally:
        for tr in trainers.values():
            tr.close()
    out = {}
    for label, r in runs.items():
        out[label] = {}
        for kind in ("step", "collect"):
            ratios = [a / b for a, b in zip(r[kind], runs["sync"][kind])]
            out[label][kind] = {"sps": statistics.median(r[kind]), "vs_sync": statistics.median(ratios)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cores = usable_cores()
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v5"])
    p.add_argument("--num-envs", type=int, nargs="+", default=[16, 64])
    p.add_argument("--num-steps", type=int, default=200, help="T of each collect")
    p.add_argument("--workers", type=int, nargs="+", default=sorted({1, 2, cores, 2 * cores}))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=200, help="lockstep steps of each 'step' measurement")
    p.add_argument("--async-max", type=int, default=16, help="measure async up to this N (a process per copy)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    results = []
    print(f"{'env':<16} {'N':>5} {'backend':<10} {'step sps':>10} {'vs sync':>8} {'collect sps':>12} {'vs sync':>8}")
    for env_id in a.envs:
        for n in a.num_envs:
            labels = variants(n, a.workers, n <= a.async_max)
            cell = measure(env_id, n, a.num_steps, labels, a.rounds, a.steps)
            for label, r in cell.items():
                s, c = r["step"], r["collect"]
                print(
                    f"{env_id:<16} {n:>5} {label:<10} {s['sps']:>10.0f} {s['vs_sync']:>7.2f}x"
                    f" {c['sps']:>12.0f} {c['vs_sync']:>7.2f}x",
                    flush=True,
                )
                results.append({"env": env_id, "num_envs": n, "backend": label, **r})
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "command": " ".join(sys.argv),
            "cpu": platform.processor() or platform.machine(),
            "usable_cores": cores,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "pid": os.getpid(),
        }
        a.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
