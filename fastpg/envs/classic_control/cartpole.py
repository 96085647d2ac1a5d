"""CartPole-v1 / CartPole-v0, batched in torch (gymnasium's ``cartpole.py``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastpg._kernels import kernels
from fastpg.envs.base import Step
from fastpg.envs.classic_control._base import NativeEnv
from fastpg.envs.env_kernel import EnvKernel

__all__ = ["TorchCartPole"]


class TorchCartPole(NativeEnv):
    """CartPole-v1 (500-step limit, threshold 475) or CartPole-v0 (200, 195), batched in torch.

    State and observation: ``[x, x_dot, theta, theta_dot]``; actions 0 (push left) / 1 (right);
    reward 1 for every step including the terminal one; terminated when ``|x| > 2.4`` or
    ``|theta| > 12 degrees``; reset uniform in ``[-0.05, 0.05]^4``. Euler integration, tau 0.02.
    The arithmetic is gymnasium's, operation for operation.

    ``kernel="cpp"`` (CPU only) steps with one compiled C++ loop instead of ~35 torch ops: several
    times faster at small N, and bit-identical to gymnasium in float64; it is compiled on first use
    (see ``fastpg._kernels``).
    """

    env_kernel = EnvKernel("cartpole")  # fastpg/csrc/cartpole.h
    state_dim = 4
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    VERSIONS = {"CartPole-v1": (500, 475.0), "CartPole-v0": (200, 195.0)}
    KERNELS = ("torch", "cpp")

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        env_id: str = "CartPole-v1",
        kernel: str = "torch",
    ):
        super().__init__(num_envs, device, dtype, env_id)
        self.set_kernel(kernel)
        self.info = self._make_info(4, num_actions=2)
        self._reward = torch.ones(num_envs, dtype=dtype, device=self.device)
        self._force = torch.tensor([-self.force_mag, self.force_mag], dtype=dtype, device=self.device)
        c = self._const
        self._c_polemass_length, self._c_total_mass = c(self.polemass_length), c(self.total_mass)
        self._c_gravity, self._c_masspole, self._c_length = c(self.gravity), c(self.masspole), c(self.length)
        self._c_4_3, self._c_tau = c(4.0 / 3.0), c(self.tau)
        # Per state row; the velocities never terminate.
        thresholds = [[self.x_threshold], [math.inf], [self.theta_threshold_radians], [math.inf]]
        self._c_thresholds = torch.tensor(thresholds, dtype=dtype, device=self.device)

    def _use_kernel(self, kernel: str) -> None:
        if kernel == "cpp":
            self._cpp = kernels()
            self._no_tensor = torch.empty(0, dtype=self.dtype)

    def _sample_reset(self, n: int) -> Tensor:
        u = torch.empty(4, n, dtype=self.dtype, device=self.device)
        return u.uniform_(-0.05, 0.05, generator=self.generator)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Gymnasium's operations in gymnasium's order (in place on fresh temporaries only): the
        # balanced trajectories of the exactness tests amplify any reassociation, e.g. a fused
        # multiply-add, past 1e-10 within a few hundred steps.
        _, x_dot, theta, theta_dot = state.unbind(0)
        force = self._force.index_select(0, action)  # 0 -> -10, 1 -> +10
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        # temp = (force + polemass_length * theta_dot^2 * sin) / total_mass
        temp = self._c_polemass_length * (theta_dot * theta_dot)  # x * x: one op cheaper than square
        temp = temp.mul_(sintheta).add_(force).div_(self._c_total_mass)
        # thetaacc = (g * sin - cos * temp) / (length * (4/3 - masspole * cos^2 / total_mass))
        denom = self._c_masspole * (costheta * costheta)
        denom = torch.sub(self._c_4_3, denom.div_(self._c_total_mass)).mul_(self._c_length)
        thetaacc = (self._c_gravity * sintheta).sub_(costheta * temp).div_(denom)
        # xacc = temp - polemass_length * thetaacc * cos / total_mass
        xacc = torch.sub(temp, (self._c_polemass_length * thetaacc).mul_(costheta).div_(self._c_total_mass))
        # Euler: [x, x_dot, theta, theta_dot] + tau * [x_dot, xacc, theta_dot, thetaacc]
        new = torch.stack((x_dot, xacc, theta_dot, thetaacc)).mul_(self._c_tau).add_(state)
        terminated = (new.abs() > self._c_thresholds).any(0)  # |x| > 2.4 or |theta| > 12 deg
        return new, self._reward, terminated

    def step(self, action: Tensor) -> Step:
        if self.kernel != "cpp":
            return super().step(action)
        # The fused kernel: dynamics, termination, time limit and (where resets select) the reset
        # selection in one loop; same generator draws as the torch path.
        n, state = self.num_envs, self._state
        select = self.selects_resets
        fresh = self._states_to_select() if select else self._no_tensor
        if n != self.total_envs:
            fresh = fresh.contiguous()  # a shard's columns of the whole draw
        final, after = torch.empty_like(state), torch.empty_like(state) if select else self._no_tensor
        done, terminated = torch.empty(n, dtype=torch.bool), torch.empty(n, dtype=torch.bool)
        action = action.to(torch.int64).contiguous()
        self._cpp.cartpole_step(
            state, final, after, fresh, action, self.elapsed, done, terminated, self.max_episode_steps
        )
        self._final = final
        self._state = after if select else self._reset_done(final, done)
        return Step(self._observe(self._state), self._reward, done, self._valid, terminated)
