"""The suites side by side: fastpg on each MuJoCo / Box2D id's shipped settings (3 seeds), next to
Tianshou's published REINFORCE figures and, on the same wall-clock budget on this machine,
stable-baselines3 PPO with rl-baselines3-zoo's settings.

    .venv/bin/pip install -q -c constraints.txt -e '.[test,peers]'
    .venv/bin/python benchmarks/suite_results.py --envs HalfCheetah-v5 \\
        --json benchmarks/results/suites/<date>.json

fastpg: one ``fastpg train --env ID`` process per seed (its shipped settings, ``Config.for_env``),
the final evaluation of ``--eval-episodes`` fresh episodes as the settings say (the Gaussian's
mean for the MuJoCo ids and BipedalWalker, sampled for LunarLander), the env steps
and the whole process's wall time. PPO: ``--ppo-seeds`` runs, each given the median fastpg wall
time of that env (``--ppo-budget-s`` overrides), trained in chunks until the budget is spent,
then evaluated on the same number of episodes (deterministic actions, as rl-zoo evaluates; with
its VecNormalize statistics frozen). Runs go one at a time (2 cores).

Tianshou's figures are REINFORCE's max average return within the budget over 10 seeds, from its
MuJoCo benchmark page; they publish no wall times. Honest where REINFORCE falls short.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from suite_sweep import run as run_fastpg

# Tianshou's REINFORCE (mean +- std over 10 seeds, max average return within the budget)
TIANSHOU = {
    "HalfCheetah-v5": "884 +- 41 (3M steps)",
    "Hopper-v5": "396 +- 65 (3M)",
    "Walker2d-v5": "412 +- 52 (3M)",
    "InvertedPendulum-v5": "999 +- 2 (3M)",
}

# rl-baselines3-zoo's PPO settings (hyperparams/ppo.yml; MuJoCo entries are for the -v4 ids)
_MUJOCO_POLICY = dict(log_std_init=-2, ortho_init=False, net_arch=dict(pi=[256, 256], vf=[256, 256]))
ZOO_PPO = {
    "HalfCheetah-v5": dict(
        normalize=True, n_envs=1, batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05,
        ent_coef=0.000401762, clip_range=0.1, n_epochs=20, gae_lambda=0.92, max_grad_norm=0.8, vf_coef=0.58096,
        policy_kwargs=_MUJOCO_POLICY,
    ),
    "Hopper-v5": dict(
        normalize=True, n_envs=1, batch_size=32, n_steps=512, gamma=0.999, learning_rate=9.80828e-05,
        ent_coef=0.00229519, clip_range=0.2, n_epochs=5, gae_lambda=0.99, max_grad_norm=0.7, vf_coef=0.835671,
        policy_kwargs=_MUJOCO_POLICY,
    ),
    "InvertedPendulum-v5": dict(
        normalize=True, n_envs=1, batch_size=64, n_steps=32, gamma=0.999, learning_rate=0.000222425,
        ent_coef=1.37976e-07, clip_range=0.4, n_epochs=5, gae_lambda=0.9, max_grad_norm=0.3, vf_coef=0.19816,
    ),
    "Walker2d-v5": dict(
        normalize=True, n_envs=1, batch_size=32, n_steps=512, gamma=0.99, learning_rate=5.05041e-05,
        ent_coef=0.000585045, clip_range=0.1, n_epochs=20, gae_lambda=0.95, max_grad_norm=1, vf_coef=0.871923,
    ),
    "LunarLander-v3": dict(
        normalize=False, n_envs=16, n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999, n_epochs=4,
        ent_coef=0.01,
    ),
    "BipedalWalker-v3": dict(
        normalize=True, n_envs=32, n_steps=2048, batch_size=64, gae_lambda=0.95, gamma=0.999, n_epochs=10,
        ent_coef=0.0, learning_rate=3e-4, clip_range=0.18,
    ),
}  # fmt: skip


def run_ppo(env_id: str, seed: int, budget_s: float, episodes: int) -> dict:
    """SB3 PPO with rl-zoo's settings, trained in chunks until ``budget_s`` seconds, then evaluated."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)  # rl-zoo's default for PPO on CPU
    hp = dict(ZOO_PPO[env_id])
    normalize, n_envs = hp.pop("normalize"), hp.pop("n_envs")
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, gamma=hp.get("gamma", 0.99))
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **hp)
    chunk = max(hp.get("n_steps", 2048) * n_envs, 2048)
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s:
        model.learn(chunk, reset_num_timesteps=False)
    train_s = time.perf_counter() - start
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if normalize:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, gamma=hp.get("gamma", 0.99))
        eval_env.obs_rms = env.obs_rms
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True)
    return {"eval_return_mean": float(mean), "eval_return_std": float(std), "env_steps": int(model.num_timesteps),
            "train_wall_s": round(train_s, 2)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=list(ZOO_PPO))
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="fastpg seeds (none: PPO alone)")
    p.add_argument("--ppo-seeds", type=int, nargs="*", default=[0])
    p.add_argument("--ppo-budget-s", type=float, help="PPO's wall-clock budget (default: fastpg's median)")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows = []
    for env_id in a.envs:
        mine = []
        for seed in a.seeds:
            r = run_fastpg(env_id, [], seed, a.eval_episodes, [])
            mine.append(r)
            rows.append({"env": env_id, "algo": "fastpg REINFORCE", "seed": seed, **r})
            print(json.dumps(rows[-1]), flush=True)
        ok = [r for r in mine if "error" not in r]
        budget = a.ppo_budget_s or (statistics.median(r["process_wall_s"] for r in ok) if ok else 60.0)
        for seed in a.ppo_seeds:
            r = run_ppo(env_id, seed, budget, a.eval_episodes)
            rows.append({"env": env_id, "algo": "SB3 PPO (rl-zoo)", "seed": seed, "budget_s": round(budget, 1), **r})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'env':<20} {'algo':<18} {'runs':>4} {'eval median':>12} {'env steps':>10} {'wall s':>7}  Tianshou")
    for env_id in a.envs:
        for algo in ("fastpg REINFORCE", "SB3 PPO (rl-zoo)"):
            mine = [r for r in rows if r["env"] == env_id and r["algo"] == algo and "error" not in r]
            if not mine:
                continue
            ev = statistics.median(r["eval_return_mean"] for r in mine)
            steps = statistics.median(r["env_steps"] for r in mine)
            wall = statistics.median(r.get("process_wall_s", r["train_wall_s"]) for r in mine)
            ref = TIANSHOU.get(env_id, "-") if algo.startswith("fastpg") else ""
            print(f"{env_id:<20} {algo:<18} {len(mine):>4} {ev:>12.1f} {steps:>10.0f} {wall:>7.1f}  {ref}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
                "date": time.strftime("%Y-%m-%d"), "tianshou": TIANSHOU}  # fmt: skip
        a.json.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
