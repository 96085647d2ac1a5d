"""Environments that misbehave on purpose, for the reliability tests (importable by async workers)."""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FaultyEnv(gym.Env):
    """A 4-dim random-walk env that misbehaves at step ``at`` when built with ``fault``:
    "raise" (ValueError), "die" (the process exits), "hang" (sleeps), or "nan" (NaN reward)."""

    metadata: dict = {}

    def __init__(self, fault: str | None = None, at: int = 3):
        self.observation_space = spaces.Box(-10.0, 10.0, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.fault, self.at, self.t = fault, at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        reward = 1.0
        if self.fault is not None and self.t == self.at:
            if self.fault == "raise":
                raise ValueError("the simulator exploded")
            if self.fault == "die":
                os._exit(3)
            if self.fault == "hang":
                time.sleep(60)
            if self.fault == "nan":
                reward = float("nan")
        obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return obs, reward, self.t >= 20, False, {}
