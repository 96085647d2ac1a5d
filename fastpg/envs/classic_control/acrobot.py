"""Acrobot-v1, batched in torch (gymnasium's ``acrobot.py``, "book" dynamics)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from fastpg.envs.classic_control._base import NativeEnv
from fastpg.envs.env_kernel import EnvKernel

__all__ = ["TorchAcrobot"]

# wrap() on CUDA: how many masked 2*pi steps to take, a fixed count so that no step waits for the
# GPU. A step moves an angle by dt times a weighted mean of the velocities at the four Runge-Kutta
# stages; from the velocity bounds the largest move found is 29.7 rad, which needs 5 steps
# (tests/test_native_classic_control.py searches extreme states). 8 covers 53 rad. On CPU the loop
# runs until no angle is out of range, so it is exact for any state.
CUDA_WRAP_ITERATIONS = 8


class TorchAcrobot(NativeEnv):
    """Acrobot-v1: two links, torque -1/0/+1 on the joint between them; reach the height line.

    State ``[theta1, theta2, dtheta1, dtheta2]``; observation ``[cos theta1, sin theta1,
    cos theta2, sin theta2, dtheta1, dtheta2]``. Reward -1 per step, 0 on the terminal step;
    terminated when ``-cos(theta1) - cos(theta2 + theta1) > 1``; truncated at 500 steps. Reset
    uniform in ``[-0.1, 0.1]^4``, rounded to float32 as gymnasium does. One step integrates the
    dynamics with fourth-order Runge-Kutta over dt = 0.2, wraps the angles to ``[-pi, pi]`` and
    clips the velocities to ``4 pi`` and ``9 pi``. The arithmetic is gymnasium's, in its order.
    """

    env_kernel = EnvKernel("acrobot")  # fastpg/csrc/acrobot.h
    KERNELS = ("torch", "cpp")
    state_dim = 4
    VERSIONS = {"Acrobot-v1": (500, -100.0)}
    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    AVAIL_TORQUE = (-1.0, 0.0, 1.0)
    g = 9.8

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        env_id: str = "Acrobot-v1",
    ):
        super().__init__(num_envs, device, dtype, env_id)
        self.info = self._make_info(6, num_actions=3)
        m1, m2, l1 = self.LINK_MASS_1, self.LINK_MASS_2, self.LINK_LENGTH_1
        lc1, lc2, I1, I2, g = self.LINK_COM_POS_1, self.LINK_COM_POS_2, self.LINK_MOI, self.LINK_MOI, self.g
        c = self._const
        # Constant prefixes of gymnasium's products, evaluated as Python evaluates them (left to
        # right), so that each product below performs the same roundings.
        self._m1_lc1_sq, self._m2, self._I1, self._I2 = c(m1 * lc1**2), c(m2), c(I1), c(I2)
        self._d1_inner, self._d1_cos = c(l1**2 + lc2**2), c(2 * l1 * lc2)
        self._d2_inner, self._d2_cos = c(lc2**2), c(l1 * lc2)
        self._phi2_k = c(m2 * lc2 * g)
        self._phi1_k1, self._phi1_k2 = c(-m2 * l1 * lc2), c(2 * m2 * l1 * lc2)
        self._phi1_k3 = c((m1 * lc1 + m2 * l1) * g)
        self._dd2_k, self._dd2_den = c(m2 * l1 * lc2), c(m2 * lc2**2 + I2)
        self._half_pi = c(math.pi / 2.0)
        self._dt2, self._dt, self._dt6 = c(self.dt / 2.0), c(self.dt), c(self.dt / 6.0)
        self._two = c(2.0)
        self._pi, self._two_pi = c(math.pi), c(math.pi - (-math.pi))
        self._vel_max = torch.tensor([[self.MAX_VEL_1], [self.MAX_VEL_2]], dtype=self.state_dtype, device=self.device)
        self._torque = torch.tensor(self.AVAIL_TORQUE, dtype=self.state_dtype, device=self.device)
        self._one = c(1.0)

    def _sample_reset(self, n: int) -> Tensor:
        # gymnasium: uniform(-0.1, 0.1, size=4).astype(float32); drawn in float64, then rounded.
        u = torch.rand(4, n, generator=self.generator, dtype=torch.float64, device=self.device)
        return u.mul_(0.2).add_(-0.1).to(torch.float32).to(self.state_dtype)

    def _observe(self, state: Tensor) -> Tensor:
        cos, sin = torch.cos(state[:2]), torch.sin(state[:2])
        return torch.stack((cos[0], sin[0], cos[1], sin[1], state[2], state[3]), dim=1).to(self.dtype)

    def _derivs(self, y: Tensor, torque: Tensor) -> Tensor:
        """gymnasium's ``_dsdt`` ("book"): [4, N] state -> [4, N] time derivative."""
        theta1, theta2, dtheta1, dtheta2 = y[0], y[1], y[2], y[3]
        cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
        d1 = (self._m1_lc1_sq + self._m2 * (self._d1_inner + self._d1_cos * cos2)) + self._I1 + self._I2
        d2 = self._m2 * (self._d2_inner + self._d2_cos * cos2) + self._I2
        phi2 = self._phi2_k * torch.cos(theta1 + theta2 - self._half_pi)
        phi1 = (
            self._phi1_k1 * dtheta2.square() * sin2
            - self._phi1_k2 * dtheta2 * dtheta1 * sin2
            + self._phi1_k3 * torch.cos(theta1 - self._half_pi)
            + phi2
        )
        ddtheta2 = (torque + d2 / d1 * phi1 - self._dd2_k * dtheta1.square() * sin2 - phi2) / (
            self._dd2_den - d2.square() / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2))

    def _rk4(self, state: Tensor, torque: Tensor) -> Tensor:
        """gymnasium's rk4 over t = [0, dt]: one classical Runge-Kutta step (angles not wrapped)."""
        k1 = self._derivs(state, torque)
        k2 = self._derivs(state + self._dt2 * k1, torque)
        k3 = self._derivs(state + self._dt2 * k2, torque)
        k4 = self._derivs(state + self._dt * k3, torque)
        return state + self._dt6 * (k1 + self._two * k2 + self._two * k3 + k4)

    def _wrap(self, angles: Tensor) -> Tensor:
        """gymnasium's wrap(x, -pi, pi): subtract 2*pi while above pi, then add 2*pi while below
        -pi, one step at a time (x - 2*d and (x - d) - d can round differently)."""
        for above in (True, False):
            for i in itertools.count():
                mask = angles > self._pi if above else angles < -self._pi
                if self.device.type == "cpu":
                    if not mask.any():  # exact for any state; a CPU tensor costs no device sync
                        break
                elif i == CUDA_WRAP_ITERATIONS:
                    break
                angles = torch.where(mask, angles - self._two_pi if above else angles + self._two_pi, angles)
        return angles

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        new = self._rk4(state, self._torque[action])
        angles = self._wrap(new[:2])
        velocities = torch.minimum(torch.maximum(new[2:], -self._vel_max), self._vel_max)
        new = torch.cat((angles, velocities))
        terminated = (-torch.cos(new[0]) - torch.cos(new[1] + new[0])) > self._one
        reward = terminated.to(self.dtype) - 1.0  # -1, or 0 on the terminal step
        return new, reward, terminated
