"""Environments that misbehave on purpose, for the reliability tests (importable by async workers)."""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FaultyEnv(gym.Env):
    """A 4-dim random-walk env (episodes of 20 steps) that misbehaves at its ``at``-th step in all
    (episodes counted together) when built with ``fault``: "raise" (ValueError), "die" (the
    process exits), "hang" (sleeps), or "nan" (NaN reward); "close" makes ``close`` raise. With
    ``only_seed`` only the copy first reset with that seed misbehaves (copy i of a run with
    ``--seed 0`` gets seed i)."""

    metadata: dict = {"render_modes": []}

    def __init__(self, fault: str | None = None, at: int = 3, only_seed: int | None = None):
        self.observation_space = spaces.Box(-10.0, 10.0, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.fault, self.at, self.t, self.total = fault, at, 0, 0
        self.only_seed, self.first_seed = only_seed, None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.first_seed is None:
            self.first_seed = seed
        self.t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def close(self):
        if self.fault == "close":
            raise OSError("the simulator's licence server is gone")

    def step(self, action):
        self.t += 1
        self.total += 1
        reward = 1.0
        chosen = self.only_seed is None or self.first_seed == self.only_seed
        if self.fault is not None and self.total == self.at and chosen:
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


# Ids for command-line tests (registered when this module is imported).
gym.register("FaultyRaise-v0", entry_point=FaultyEnv, kwargs=dict(fault="raise", at=40, only_seed=1))
gym.register("FaultyDie-v0", entry_point=FaultyEnv, kwargs=dict(fault="die", at=40, only_seed=1))
gym.register("FaultyClose-v0", entry_point=FaultyEnv, kwargs=dict(fault="close"))
gym.register("Fault-free-v0", entry_point=FaultyEnv)
