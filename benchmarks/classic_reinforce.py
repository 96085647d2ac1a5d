"""The per-episode REINFORCE of the classic CartPole tutorials, as a baseline for fastpg.

One gymnasium ``CartPole-v1`` env, one episode per update; MLP 4-128-2 (ReLU), Adam lr 1e-2,
gamma 0.99, returns normalized per episode, loss ``-sum(log_prob * G)``. It stops with fastpg's
criterion (mean return of the latest 100 episodes >= the target), then evaluates 100 fresh
episodes sampling from the policy, as fastpg does by default; evaluation time is excluded from the
training time.

    python benchmarks/classic_reinforce.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch
from torch import nn


def train_classic(seed: int = 0, target: float = 475.0, max_time_s: float = 300.0, max_episodes: int = 20_000) -> dict:
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    policy = nn.Sequential(nn.Linear(4, 128), nn.ReLU(), nn.Linear(128, 2))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    window: deque[float] = deque(maxlen=100)
    gamma, eps = 0.99, np.finfo(np.float32).eps.item()
    steps, episodes, solved_window = 0, 0, False
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    while time.perf_counter() - t0 < max_time_s and episodes < max_episodes:
        log_probs, rewards = [], []
        done = False
        while not done:
            dist = torch.distributions.Categorical(logits=policy(torch.as_tensor(obs, dtype=torch.float32)))
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            obs, reward, terminated, truncated, _ = env.step(action.item())
            rewards.append(float(reward))
            done = terminated or truncated
        obs, _ = env.reset()
        steps += len(rewards)
        episodes += 1
        window.append(sum(rewards))
        returns, g = [], 0.0
        for r in reversed(rewards):
            g = r + gamma * g
            returns.insert(0, g)
        ret = torch.tensor(returns)
        ret = (ret - ret.mean()) / (ret.std() + eps)
        loss = -(torch.stack(log_probs) * ret).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if len(window) == 100 and sum(window) / 100 >= target:
            solved_window = True
            break
    train_s = time.perf_counter() - t0
    eval_returns = []
    g = torch.Generator().manual_seed(10_000_000 + seed)
    with torch.no_grad():
        for i in range(100):
            o, _ = env.reset(seed=10_000_000 + seed * 1000 + i)
            total, done = 0.0, False
            while not done:
                probs = torch.softmax(policy(torch.as_tensor(o, dtype=torch.float32)), -1)
                a = torch.multinomial(probs, 1, generator=g).item()
                o, r, term, trunc, _ = env.step(a)
                total += r
                done = term or trunc
            eval_returns.append(total)
    env.close()
    eval_mean = float(np.mean(eval_returns))
    solved = solved_window and eval_mean >= target
    return {
        "system": "classic_reinforce",
        "seed": seed,
        "solved": solved,
        "time_to_solve_s": train_s if solved else None,
        "env_steps_to_solve": steps if solved else None,
        "train_wall_s": train_s,
        "env_steps": steps,
        "episodes": episodes,
        "eval_return_mean": eval_mean,
        "sps": steps / train_s,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-time-s", type=float, default=300.0)
    args = p.parse_args()
    print(json.dumps(train_classic(args.seed, max_time_s=args.max_time_s)))
