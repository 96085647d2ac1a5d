"""Candidate settings for the MuJoCo and Box2D ids, each trained for some seeds: the sweep behind
``Config.ENV_DEFAULTS`` for the suites (and the record of what each candidate reached).

    .venv/bin/python benchmarks/suite_sweep.py --env HalfCheetah-v5 --seeds 0 \\
        --json benchmarks/results/suite_sweep/<date>-HalfCheetah.json

Each candidate is ``Config.for_env(env)`` (the settings fastpg ships) with the changes listed in
``CANDIDATES[env]``; a run is one ``fastpg train`` process (whole-process wall time, as a user
sees it), its final evaluation of ``--eval-episodes`` fresh episodes, env steps and training time
taken from its summary line. Runs go one at a time: two trainings on 2 cores slow each other.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# env -> name -> flags on top of the env's shipped settings
CANDIDATES: dict[str, dict[str, list[str]]] = {
    "HalfCheetah-v5": {
        "shipped": [],
        "whole-episodes-T1001": ["--num-steps", "1001", "--baseline", "none", "--unfinished", "mask"],
        "lr3e-3": ["--lr", "3e-3"],
    },
    "InvertedPendulum-v5": {
        "shipped": [],
        "lr3e-3": ["--lr", "3e-3"],
        "lr3e-3-T1001": ["--lr", "3e-3", "--num-steps", "1001"],
        "lr1e-2": ["--lr", "1e-2"],
        "N32": ["--num-envs", "32"],
        "clip0.5": ["--max-grad-norm", "0.5"],
        "log-std-0": ["--log-std-init", "0"],
        "N64": ["--num-envs", "64"],
        "log-std-0-N32": ["--log-std-init", "0", "--num-envs", "32"],
        "gamma0.995": ["--gamma", "0.995"],
        "lr2e-3": ["--lr", "2e-3"],
        "det-eval": ["--eval-deterministic"],
    },
    "Hopper-v5": {"shipped": [], "gamma0.995": ["--gamma", "0.995"]},
    "Walker2d-v5": {"shipped": []},
    "LunarLander-v3": {
        "shipped": [],
        "lr1e-3": ["--lr", "1e-3"],
        "entropy0": ["--entropy-coef", "0"],
        "no-obs-norm": ["--no-obs-norm"],
        "gamma0.999": ["--gamma", "0.999"],
        "6M": ["--max-env-steps", "6000000"],
        "N32": ["--num-envs", "32"],
        "N64": ["--num-envs", "64"],
        "det-eval": ["--eval-deterministic"],
        "det-eval-6M": ["--eval-deterministic", "--max-env-steps", "6000000"],
        "gamma0.999-e0": ["--gamma", "0.999"],
        "clip0.5": ["--max-grad-norm", "0.5"],
        "T500": ["--num-steps", "500"],
    },
    "BipedalWalker-v3": {"shipped": []},
}


def run(env: str, flags: list[str], seed: int, eval_episodes: int, extra: list[str]) -> dict:
    """One ``fastpg train`` process; its summary, and the whole process's wall time."""
    cmd = [sys.executable, "-m", "fastpg.cli", "train", "--env", env, "--seed", str(seed), "--quiet"]
    cmd += ["--eval-episodes", str(eval_episodes), *flags, *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["no output"], "process_wall_s": wall}
    summary = json.loads(lines[-1])
    keep = ("eval_return_mean", "eval_return_std", "return_mean_100", "env_steps", "train_wall_s", "stop_reason")
    return {**{k: summary.get(k) for k in keep}, "process_wall_s": round(wall, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", required=True, choices=sorted(CANDIDATES))
    p.add_argument("--candidates", nargs="+", help="names from CANDIDATES[env] (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags added to every run")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    names = a.candidates or list(CANDIDATES[a.env])
    rows = []
    for name in names:
        for seed in a.seeds:
            r = run(a.env, CANDIDATES[a.env][name], seed, a.eval_episodes, a.extra)
            rows.append({"env": a.env, "candidate": name, "flags": CANDIDATES[a.env][name], "seed": seed, **r})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'candidate':<18} {'seeds':>5} {'eval median':>12} {'steps':>10} {'process s':>10}")
    for name in names:
        mine = [r for r in rows if r["candidate"] == name and "error" not in r]
        if mine:
            ev = statistics.median(r["eval_return_mean"] for r in mine)
            steps = statistics.median(r["env_steps"] for r in mine)
            wall = statistics.median(r["process_wall_s"] for r in mine)
            print(f"{name:<18} {len(mine):>5} {ev:>12.1f} {steps:>10.0f} {wall:>10.1f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
                "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        a.json.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
