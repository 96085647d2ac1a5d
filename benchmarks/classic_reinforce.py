"""The per-episode REINFORCE of the classic CartPole tutorials, as a baseline for fastpg.

One gymnasium ``CartPole-v1`` env, one episode per update; MLP 4-128-2 (ReLU), Adam lr 1e-2,
gamma 0.99, returns normalized per episode, loss ``-sum(log_prob * G)``, actions sampled with
``torch.distributions.Categorical`` from the global RNG (seeded), as the tutorials do.

``ClassicReinforce(seed).episode()`` plays and learns from one episode; ``peers.py`` drives it under
the common time-to-solve protocol. Run alone, it trains until the mean return of the latest 100
episodes reaches 475 (or the time limit) and prints the steps and time:

    .venv/bin/python benchmarks/classic_reinforce.py --seed 0
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


class ClassicReinforce:
    """The tutorial loop, one episode per call of ``episode()``."""

    def __init__(self, seed: int = 0, gamma: float = 0.99, lr: float = 1e-2):
        torch.manual_seed(seed)
        self.env = gym.make("CartPole-v1")
        self.policy = nn.Sequential(nn.Linear(4, 128), nn.ReLU(), nn.Linear(128, 2))
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.gamma = gamma
        self.eps = np.finfo(np.float32).eps.item()
        self.obs, _ = self.env.reset(seed=seed)
        self.steps = 0
        self.episodes = 0

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs)

    def episode(self) -> float:
        """Play one episode, update once; returns the episode's return."""
        log_probs, rewards = [], []
        done = False
        while not done:
            dist = torch.distributions.Categorical(logits=self.policy(torch.as_tensor(self.obs, dtype=torch.float32)))
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            self.obs, reward, terminated, truncated, _ = self.env.step(action.item())
            rewards.append(float(reward))
            done = terminated or truncated
        self.obs, _ = self.env.reset()
        returns, g = [], 0.0
        for r in reversed(rewards):
            g = r + self.gamma * g
            returns.insert(0, g)
        ret = torch.tensor(returns)
        ret = (ret - ret.mean()) / (ret.std() + self.eps)
        loss = -(torch.stack(log_probs) * ret).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.steps += len(rewards)
        self.episodes += 1
        return sum(rewards)

    def close(self) -> None:
        self.env.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-time-s", type=float, default=300.0)
    args = p.parse_args()
    learner = ClassicReinforce(args.seed)
    window: deque[float] = deque(maxlen=100)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.max_time_s:
        window.append(learner.episode())
        if len(window) == 100 and sum(window) / 100 >= 475:
            break
    train_s = time.perf_counter() - t0
    learner.close()
    print(
        json.dumps(
            {
                "seed": args.seed,
                "last100_mean": sum(window) / len(window),
                "env_steps": learner.steps,
                "episodes": learner.episodes,
                "train_s": train_s,
                "sps": learner.steps / train_s,
            }
        )
    )


if __name__ == "__main__":
    main()
