"""PointMass: a user's own env joining fastpg's fused epoch (see point_mass.h and README.md).

The env is written twice: as torch ops (``_sample_reset``, ``_dynamics``: the generic path, any
device) and as a C++ env kernel (``point_mass.h``: the fused epoch on CPU), the two bit for bit
the same in float64. Declaring ``env_kernel`` is all it takes for fastpg to compile the header
with its fused collect on first use and run the fused epoch on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fastpg.envs import EnvKernel, NativeEnv


class PointMass(NativeEnv):
    """A unit mass on a line pushed toward the origin by a force in [-1, 1] (see point_mass.h)."""

    env_kernel = EnvKernel("point_mass", header=Path(__file__).with_name("point_mass.h"), struct="examples::PointMass")
    KERNELS = ("torch", "cpp")
    state_dim = 2
    VERSIONS = {"PointMass-v0": (100, -4.0)}  # max episode steps, reward threshold (solved)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(num_envs, device, dtype, "PointMass-v0")
        self.info = self._make_info(2, action_bound=1.0)
        self._high = torch.tensor([[1.0], [0.1]], dtype=torch.float64, device=self.device)
        self._dt, self._cost, self._near = self._const(0.1), self._const(0.1), self._const(0.05)

    def _sample_reset(self, n: int) -> Tensor:
        u = torch.rand(2, n, generator=self.generator, dtype=torch.float64, device=self.device)
        return ((2.0 * self._high) * u - self._high).to(self.state_dtype)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = action.reshape(self.num_envs).to(torch.float32).to(self.state_dtype)
        v = state[1] + self._dt * a
        x = state[0] + self._dt * v
        reward = -(state[0] * state[0] + self._cost * (a * a))
        terminated = (x.abs() < self._near) & (v.abs() < self._near)
        return torch.stack((x, v)), reward.to(self.dtype), terminated
