"""MountainCar-v0 and MountainCarContinuous-v0, batched in torch (gymnasium's ``mountain_car.py``
and ``continuous_mountain_car.py``)."""

from __future__ import annotations

import torch
from torch import Tensor

from fastpg.envs.classic_control._base import NativeEnv
from fastpg.envs.env_kernel import EnvKernel

__all__ = ["TorchMountainCar", "TorchMountainCarContinuous"]

MIN_POSITION, MAX_POSITION, MAX_SPEED = -1.2, 0.6, 0.07
OBSERVATION_HIGH = (MAX_POSITION, MAX_SPEED)
OBSERVATION_LOW = (MIN_POSITION, -MAX_SPEED)


def _sample_position(env: NativeEnv, n: int) -> Tensor:
    """[2, n] reset states: position uniform in [-0.6, -0.4), velocity 0 (float64 draw, as numpy)."""
    u = torch.rand(n, generator=env.generator, dtype=torch.float64, device=env.device)
    state = torch.zeros(2, n, dtype=env.state_dtype, device=env.device)
    state[0] = u.mul_(0.2).add_(-0.6)  # numpy's uniform: low + (high - low) * u
    return state


class TorchMountainCar(NativeEnv):
    """MountainCar-v0: push left (0), no push (1) or push right (2); reach position 0.5.

    State and observation ``[position, velocity]``. Reward -1 per step; terminated when
    ``position >= 0.5`` (velocity >= 0); truncated at 200 steps. Velocity is clipped to
    ``[-0.07, 0.07]``, position to ``[-1.2, 0.6]``, and hitting the left wall stops the car.
    """

    env_kernel = EnvKernel("mountain_car")  # fastpg/csrc/mountain_car.h
    KERNELS = ("torch", "cpp")
    state_dim = 2
    VERSIONS = {"MountainCar-v0": (200, -110.0)}
    force, gravity, goal_position, goal_velocity = 0.001, 0.0025, 0.5, 0.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        env_id: str = "MountainCar-v0",
    ):
        super().__init__(num_envs, device, dtype, env_id)
        self.info = self._make_info(2, num_actions=3)
        c = self._const
        # gymnasium: velocity += (action - 1) * force + cos(3 * position) * (-gravity)
        self._push = torch.tensor([(a - 1) * self.force for a in range(3)], dtype=self.state_dtype, device=self.device)
        self._three, self._neg_gravity = c(3.0), c(-self.gravity)
        self._min_pos, self._max_pos, self._max_speed = c(MIN_POSITION), c(MAX_POSITION), c(MAX_SPEED)
        self._goal_pos, self._goal_vel, self._zero = c(self.goal_position), c(self.goal_velocity), c(0.0)
        self._reward = torch.full((num_envs,), -1.0, dtype=dtype, device=self.device)

    def _sample_reset(self, n: int) -> Tensor:
        return _sample_position(self, n)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        position, velocity = state[0], state[1]
        velocity = velocity + (self._push[action] + torch.cos(self._three * position) * self._neg_gravity)
        velocity = velocity.clamp(-self._max_speed, self._max_speed)
        position = (position + velocity).clamp(self._min_pos, self._max_pos)
        velocity = torch.where((position == self._min_pos) & (velocity < 0), self._zero, velocity)
        terminated = (position >= self._goal_pos) & (velocity >= self._goal_vel)
        return torch.stack((position, velocity)), self._reward, terminated


class TorchMountainCarContinuous(NativeEnv):
    """MountainCarContinuous-v0: force in ``[-1, 1]`` (clipped); reach position 0.45.

    State and observation ``[position, velocity]``. Reward ``100`` on reaching the goal, minus
    ``0.1 * action^2`` every step (the unclipped action, as in gymnasium); truncated at 999 steps.

    Precision: gymnasium keeps this env's state in float32 and computes most of a step in float32
    (NumPy 2 promotion: ``float32 op python float`` is float32), except the first step after a
    reset, whose state is still gymnasium's float64 reset array. This class reproduces both
    exactly, whatever ``dtype`` the observations use: the state is held in float64 holding the
    float32 values, and every rounding of gymnasium's step is performed where gymnasium performs it.
    """

    env_kernel = EnvKernel("mountain_car_continuous")  # fastpg/csrc/mountain_car.h
    KERNELS = ("torch", "cpp")
    state_dim = 2
    VERSIONS = {"MountainCarContinuous-v0": (999, 90.0)}
    min_action, max_action, power, goal_position, goal_velocity = -1.0, 1.0, 0.0015, 0.45, 0.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        env_id: str = "MountainCarContinuous-v0",
    ):
        super().__init__(num_envs, device, dtype, env_id, state_dtype=torch.float64)
        self.info = self._make_info(2, action_bound=self.max_action)
        f32 = torch.float32
        c = self._const
        self._power32, self._power64 = c(self.power, f32), c(self.power)
        self._three32, self._three64, self._gravity = c(3.0, f32), c(3.0), c(0.0025)
        self._speed32, self._speed64 = c(MAX_SPEED, f32), c(MAX_SPEED)
        self._min32, self._max32 = c(MIN_POSITION, f32), c(MAX_POSITION, f32)
        self._min64, self._max64 = c(MIN_POSITION), c(MAX_POSITION)
        self._goal32, self._goal64 = c(self.goal_position, f32), c(self.goal_position)
        self._lo32, self._hi32 = c(self.min_action, f32), c(self.max_action, f32)
        self._zero, self._goal_reward, self._tenth = c(0.0), c(100.0), c(0.1)

    def _sample_reset(self, n: int) -> Tensor:
        return _sample_position(self, n)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f32, f64 = torch.float32, torch.float64
        a = action.reshape(self.num_envs).to(f32)  # gymnasium's action space is float32
        # Steady state: position and velocity are float32 (gymnasium stores them so after a step);
        # on the first step after a reset they are float64. `fresh` selects gymnasium's float64 path.
        fresh = self.elapsed == 0
        position, velocity = state[0], state[1]
        p32, v32 = position.to(f32), velocity.to(f32)
        # force = min(max(action, -1.0), 1.0): the float32 action itself when in bounds, else the
        # Python float bound, which makes force * power a float64 product.
        inside = ~(a < self._lo32) & ~(a > self._hi32)
        # 3 * position: float32 product in the steady state, float64 on the first step.
        cos_term = self._gravity * torch.cos(
            torch.where(fresh, self._three64 * position, (self._three32 * p32).to(f64))
        )
        dv_in = (a * self._power32 - cos_term.to(f32)).to(f64)  # float32 - python float: float32
        dv_out = torch.where(a > 0, self._power64, -self._power64) - cos_term  # all float64
        dv = torch.where(inside, dv_in, dv_out)
        # velocity += dv: float32 (dv rounded to float32 first) unless velocity is float64 (first step).
        v_steady = (v32 + dv.to(f32)).clamp(-self._speed32, self._speed32)
        p_steady = (p32 + v_steady).clamp(self._min32, self._max32)
        v_first = (velocity + dv).clamp(-self._speed64, self._speed64)
        p_first = (position + v_first).clamp(self._min64, self._max64)
        velocity = torch.where(fresh, v_first, v_steady.to(f64))
        position = torch.where(fresh, p_first, p_steady.to(f64))
        at_wall = torch.where(fresh, p_first == self._min64, p_steady == self._min32)
        velocity = torch.where(at_wall & (velocity < 0), self._zero, velocity)
        reached = torch.where(fresh, p_first >= self._goal64, p_steady >= self._goal32)
        terminated = reached & (velocity >= self.goal_velocity)
        # reward = (100 if terminated else 0) - 0.1 * action^2, in float64, unclipped action.
        a64 = a.to(f64)
        reward = torch.where(terminated, self._goal_reward, self._zero) - (a64 * a64) * self._tenth
        # gymnasium stores the new state as float32.
        new = torch.stack((position, velocity)).to(f32).to(f64)
        return new, reward.to(self.dtype), terminated
