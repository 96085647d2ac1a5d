"""Native batched torch implementations of gymnasium's classic-control environments.

Each env holds the state of N copies as one tensor on any device, in float32 (default) or float64,
and reproduces gymnasium's implementation of the same id and version: spaces, dynamics (same
formulas in the same order), reward, termination, truncation at the id's time limit and the reset
distribution. Differences, by design:

- Autoreset happens within the done step (no wasted reset steps): ``step`` returns, for a done
  env, the first observation of its next episode, and every step is ``valid``. The final
  observation of the finished episode is kept in ``final_obs`` until the next step.
- Randomness comes from a ``torch.Generator`` owned by the env (``reset(seed)`` seeds it), never
  from the global RNG; the same seed on the same device gives the same trajectories. On CPU only
  the done rows draw new reset states; on CUDA all rows draw and ``torch.where`` picks, which keeps
  shapes fixed and avoids a host sync, so the two devices consume the stream differently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastpg.envs.base import EnvInfo, Step

__all__ = ["TorchCartPole"]


class _NativeEnv:
    """Shared reset-on-done, seeding and bookkeeping for native envs; subclasses define physics."""

    same_step_reset = True
    obs_dim: int

    def __init__(self, num_envs: int, device: torch.device | str, dtype: torch.dtype, max_episode_steps: int | None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_episode_steps = max_episode_steps
        self.generator = torch.Generator(device=self.device)
        self.state = torch.zeros(num_envs, self.obs_dim, dtype=dtype, device=self.device)
        self.final_obs = torch.zeros_like(self.state)
        self.elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._valid = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    # -- subclass hooks -------------------------------------------------------------------------
    def _sample_reset(self, n: int) -> Tensor:
        """[n, obs_dim] initial states drawn from self.generator."""
        raise NotImplementedError

    def _dynamics(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Advance self.state in place; return (obs [N, D], reward [N], terminated [N] bool)."""
        raise NotImplementedError

    def _obs(self) -> Tensor:
        return self.state

    # -- BatchedEnv --------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Tensor:
        if seed is not None:
            self.generator.manual_seed(seed)
        self.state.copy_(self._sample_reset(self.num_envs))
        self.elapsed.zero_()
        return self._obs()

    def step(self, action: Tensor) -> Step:
        obs, reward, terminated = self._dynamics(action)
        self.final_obs.copy_(obs)
        self.elapsed += 1
        if self.max_episode_steps is not None:
            done = terminated | (self.elapsed >= self.max_episode_steps)
        else:
            done = terminated.clone()
        self._reset_done(done)
        return Step(self._obs(), reward, done, self._valid, terminated)

    def _reset_done(self, done: Tensor) -> None:
        if self.device.type == "cpu":
            idx = done.nonzero().squeeze(1)  # no device sync on CPU; draws only what is needed
            if idx.numel():
                self.state[idx] = self._sample_reset(idx.numel())
                self.elapsed[idx] = 0
        else:
            fresh = self._sample_reset(self.num_envs)
            self.state.copy_(torch.where(done.unsqueeze(1), fresh, self.state))
            self.elapsed.masked_fill_(done, 0)

    def set_state(self, state: Tensor, elapsed: Tensor | None = None) -> None:
        """Overwrite the state of every copy (tests, and restoring checkpoints)."""
        self.state.copy_(state)
        if elapsed is not None:
            self.elapsed.copy_(elapsed)

    def close(self) -> None:
        pass


class TorchCartPole(_NativeEnv):
    """CartPole-v1 (500-step limit, threshold 475) or CartPole-v0 (200, 195), batched in torch.

    State and observation: ``[x, x_dot, theta, theta_dot]``; actions 0 (push left) / 1 (right);
    reward 1 for every step including the terminal one; terminated when ``|x| > 2.4`` or
    ``|theta| > 12 degrees``; reset uniform in ``[-0.05, 0.05]^4``. Euler integration, tau 0.02.
    """

    obs_dim = 4
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    VERSIONS = {"CartPole-v1": (500, 475.0), "CartPole-v0": (200, 195.0)}

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, env_id: str = "CartPole-v1"):
        if env_id not in self.VERSIONS:
            raise ValueError(f"env_id must be one of {', '.join(self.VERSIONS)}, got {env_id!r}")
        max_steps, threshold = self.VERSIONS[env_id]
        super().__init__(num_envs, device, dtype, max_steps)
        self.info = EnvInfo(
            env_id=env_id,
            obs_shape=(4,),
            discrete=True,
            num_actions=2,
            action_shape=(),
            reward_threshold=threshold,
            max_episode_steps=max_steps,
        )
        self._reward = torch.ones(num_envs, dtype=torch.float32, device=self.device)

    def _sample_reset(self, n: int) -> Tensor:
        u = torch.rand(n, 4, generator=self.generator, dtype=self.dtype, device=self.device)
        return u.mul_(0.1).sub_(0.05)  # uniform in [-0.05, 0.05)

    def _dynamics(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = (action.to(self.dtype) * 2.0 - 1.0) * self.force_mag  # 0 -> -10, 1 -> +10
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        new = torch.stack(
            (
                x + self.tau * x_dot,
                x_dot + self.tau * xacc,
                theta + self.tau * theta_dot,
                theta_dot + self.tau * thetaacc,
            ),
            dim=1,
        )
        self.state.copy_(new)
        nx, ntheta = new[:, 0], new[:, 2]
        terminated = (nx.abs() > self.x_threshold) | (ntheta.abs() > self.theta_threshold_radians)
        return new, self._reward, terminated
