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
    """Shared reset-on-done, seeding and bookkeeping for native envs; subclasses define physics.

    The state is stored feature-major, ``[D, N]``, so that each state variable is a contiguous row
    (elementwise ops on strided columns are several times slower at large N); observations are
    ``[N, D]`` views of it. Physical constants are 0-dim tensors of the env's dtype: a Python float
    operand costs a scalar conversion on every op, which at small N doubles the step time.
    """

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
        self._state = torch.zeros(self.obs_dim, num_envs, dtype=dtype, device=self.device)
        self._final = self._state
        self.elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._valid = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _const(self, value: float) -> Tensor:
        return torch.tensor(value, dtype=self.dtype, device=self.device)

    @property
    def state(self) -> Tensor:
        """[N, D] view of the current state (the next action is taken in it)."""
        return self._state.t()

    @property
    def final_obs(self) -> Tensor:
        """[N, D] state reached by the last step, before done envs were reset."""
        return self._final.t()

    # -- subclass hooks -------------------------------------------------------------------------
    def _sample_reset(self, n: int) -> Tensor:
        """[D, n] initial states drawn from self.generator."""
        raise NotImplementedError

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From ``state`` [D, N] (not modified): (next state [D, N], reward [N], terminated [N])."""
        raise NotImplementedError

    # -- BatchedEnv --------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Tensor:
        if seed is not None:
            self.generator.manual_seed(seed)
        self._state = self._sample_reset(self.num_envs)
        self._final = self._state
        self.elapsed.zero_()
        return self.state

    def step(self, action: Tensor) -> Step:
        new, reward, terminated = self._dynamics(self._state, action)
        self._final = new
        self.elapsed += 1
        if self.max_episode_steps is not None:
            done = terminated | (self.elapsed >= self.max_episode_steps)
        else:
            done = terminated.clone()
        self._state = self._reset_done(new, done)
        return Step(self.state, reward, done, self._valid, terminated)

    def _reset_done(self, new: Tensor, done: Tensor) -> Tensor:
        if self.device.type == "cpu":
            idx = done.nonzero().squeeze(1)  # no device sync on CPU; draws only what is needed
            if not idx.numel():
                return new
            state = new.clone()  # keep `new` intact as the final observation
            state[:, idx] = self._sample_reset(idx.numel())
            self.elapsed[idx] = 0
            return state
        fresh = self._sample_reset(self.num_envs)
        self.elapsed.masked_fill_(done, 0)
        return torch.where(done, fresh, new)

    def set_state(self, state: Tensor, elapsed: Tensor | None = None) -> None:
        """Overwrite the state of every copy from ``state`` [N, D] (tests, checkpoints)."""
        self._state = state.to(self.dtype).t().contiguous().to(self.device)
        if elapsed is not None:
            self.elapsed.copy_(elapsed)

    def close(self) -> None:
        pass


class TorchCartPole(_NativeEnv):
    """CartPole-v1 (500-step limit, threshold 475) or CartPole-v0 (200, 195), batched in torch.

    State and observation: ``[x, x_dot, theta, theta_dot]``; actions 0 (push left) / 1 (right);
    reward 1 for every step including the terminal one; terminated when ``|x| > 2.4`` or
    ``|theta| > 12 degrees``; reset uniform in ``[-0.05, 0.05]^4``. Euler integration, tau 0.02.
    The arithmetic is gymnasium's, operation for operation.
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
        self._force = torch.tensor([-self.force_mag, self.force_mag], dtype=dtype, device=self.device)
        c = self._const
        self._c_polemass_length, self._c_total_mass = c(self.polemass_length), c(self.total_mass)
        self._c_gravity, self._c_masspole, self._c_length = c(self.gravity), c(self.masspole), c(self.length)
        self._c_4_3, self._c_tau = c(4.0 / 3.0), c(self.tau)
        self._c_thresholds = torch.tensor([[self.x_threshold], [self.theta_threshold_radians]], dtype=dtype, device=self.device)

    def _sample_reset(self, n: int) -> Tensor:
        u = torch.rand(4, n, generator=self.generator, dtype=self.dtype, device=self.device)
        return u.mul_(0.1).sub_(0.05)  # uniform in [-0.05, 0.05)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Gymnasium's operations in gymnasium's order (in place on fresh temporaries only): the
        # balanced trajectories of the exactness tests amplify any reassociation, e.g. a fused
        # multiply-add, past 1e-10 within a few hundred steps.
        x_dot, theta, theta_dot = state[1], state[2], state[3]
        force = self._force[action]  # 0 -> -10, 1 -> +10
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        # temp = (force + polemass_length * theta_dot^2 * sin) / total_mass
        temp = self._c_polemass_length * theta_dot.square()
        temp = temp.mul_(sintheta).add_(force).div_(self._c_total_mass)
        # thetaacc = (g * sin - cos * temp) / (length * (4/3 - masspole * cos^2 / total_mass))
        denom = self._c_masspole * costheta.square()
        denom = torch.sub(self._c_4_3, denom.div_(self._c_total_mass)).mul_(self._c_length)
        thetaacc = (self._c_gravity * sintheta).sub_(costheta * temp).div_(denom)
        # xacc = temp - polemass_length * thetaacc * cos / total_mass
        xacc = torch.sub(temp, (self._c_polemass_length * thetaacc).mul_(costheta).div_(self._c_total_mass))
        # Euler: [x, x_dot, theta, theta_dot] + tau * [x_dot, xacc, theta_dot, thetaacc]
        new = torch.stack((x_dot, xacc, theta_dot, thetaacc)).mul_(self._c_tau).add_(state)
        terminated = (new[0::2].abs() > self._c_thresholds).any(0)  # |x| > 2.4 or |theta| > 12 deg
        return new, self._reward, terminated
