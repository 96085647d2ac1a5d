"""Pendulum-v1, batched in torch (gymnasium's ``pendulum.py``, g = 10)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastpg.envs.classic_control._base import NativeEnv
from fastpg.envs.env_kernel import EnvKernel

__all__ = ["TorchPendulum"]


class TorchPendulum(NativeEnv):
    """Pendulum-v1: swing up and hold a pendulum with a torque in ``[-2, 2]`` (clipped).

    State ``[theta, theta_dot]``; observation ``[cos theta, sin theta, theta_dot]``. Reward
    ``-(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)`` for the state the action was taken in;
    never terminates; truncated at 200 steps. Reset uniform in ``[-pi, pi] x [-1, 1]``. The torque
    is float32 (the action space's dtype) and its terms are float32 products, as in gymnasium.
    """

    env_kernel = EnvKernel("pendulum")  # fastpg/csrc/pendulum.h
    KERNELS = ("torch", "cpp")
    state_dim = 2
    VERSIONS = {"Pendulum-v1": (200, None)}
    max_speed, max_torque, dt, g, m, length = 8, 2.0, 0.05, 10.0, 1.0, 1.0  # gymnasium: l

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        env_id: str = "Pendulum-v1",
    ):
        super().__init__(num_envs, device, dtype, env_id)
        self.info = self._make_info(3, action_bound=self.max_torque)
        c, f32 = self._const, torch.float32
        g, m, length = self.g, self.m, self.length
        self._gravity_k, self._torque_k = c(3 * g / (2 * length)), c(3.0 / (m * length**2), f32)
        self._u_cost = c(0.001, f32)
        self._speed_cost, self._dt = c(0.1), c(self.dt)
        self._max_torque = c(self.max_torque, f32)
        self._max_speed = c(float(self.max_speed))
        self._pi, self._two_pi = c(math.pi), c(2 * math.pi)
        self._reset_high = torch.tensor([[math.pi], [1.0]], dtype=torch.float64, device=self.device)
        self._terminated = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _sample_reset(self, n: int) -> Tensor:
        u = torch.rand(2, n, generator=self.generator, dtype=torch.float64, device=self.device)
        # numpy's uniform(-high, high): low + (high - low) * u
        return (-self._reset_high + (self._reset_high - -self._reset_high) * u).to(self.state_dtype)

    def _observe(self, state: Tensor) -> Tensor:
        theta = state[0]
        return torch.stack((torch.cos(theta), torch.sin(theta), state[1]), dim=1).to(self.dtype)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        th, thdot = state[0], state[1]
        u = action.reshape(self.num_envs).to(torch.float32).clamp(-self._max_torque, self._max_torque)
        normalized = torch.remainder(th + self._pi, self._two_pi) - self._pi  # angle_normalize
        costs = normalized.square() + self._speed_cost * thdot.square() + (self._u_cost * u.square()).to(th.dtype)
        accel = self._gravity_k * torch.sin(th) + (self._torque_k * u).to(th.dtype)
        newthdot = (thdot + accel * self._dt).clamp(-self._max_speed, self._max_speed)
        newth = th + newthdot * self._dt
        return torch.stack((newth, newthdot)), (-costs).to(self.dtype), self._terminated
