"""The torch-facing batched-environment interface every backend implements.

A batched env steps N copies of one environment in lockstep and speaks tensors on the training
device:

- ``reset(seed) -> obs``: ``obs`` is ``[N, *obs_shape]`` float (float32 from gymnasium backends;
  native envs use their own dtype, float32 by default; storage keeps float32).
- ``step(action) -> Step``: ``action`` is ``[N]`` int64 (Discrete) or ``[N, *action_shape]`` float
  (Box; the env clips it to the action bounds). ``Step`` holds ``[N]`` tensors (see ``Step``).

Semantics (see ``fastpg.storage`` for how they are stored):

- ``done[n]`` is True when the episode of env n ended because of this action (terminated or
  truncated), and ``reward[n]`` is the reward for this action.
- ``valid[n]`` is False when this step's action was ignored: gymnasium's NEXT_STEP autoreset spends
  the step after a done on the reset (reward 0, not done). Backends that reset within the done step
  (native torch envs, gymnasium SAME_STEP) mark every step valid.
- ``obs`` is the observation the *next* action is taken in. After a done step this is the final
  observation under NEXT_STEP autoreset and the first observation of the next episode under
  same-step reset.

The tensors a backend returns may be reused buffers that the next ``step`` overwrites: copy what
you keep (the collector writes them straight into storage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from fastpg.errors import UnsupportedEnvError

__all__ = ["EnvInfo", "Step", "BatchedEnv", "Checkpointable", "check_reset", "check_step"]


@dataclass(frozen=True)
class EnvInfo:
    """What a policy and the storage need to know about an environment.

    ``action_low`` / ``action_high`` are float tensors of ``action_shape`` on CPU (Box actions) or
    None (Discrete). ``obs_encoding`` says how the env's observations became a float vector.
    """

    env_id: str
    obs_shape: tuple[int, ...]
    discrete: bool
    num_actions: int | None  # Discrete: number of actions
    action_shape: tuple[int, ...]  # () for Discrete
    action_low: Tensor | None = None
    action_high: Tensor | None = None
    reward_threshold: float | None = None
    max_episode_steps: int | None = None
    obs_encoding: str = "box"  # "box" (as is, cast to float32) or "one_hot" (Discrete obs)

    @property
    def action_dtype(self) -> torch.dtype:
        return torch.int64 if self.discrete else torch.float32

    def describe_actions(self) -> str:
        if self.discrete:
            return f"Discrete({self.num_actions})"
        return f"Box(shape={self.action_shape})"


def action_clipper(info: EnvInfo, device: torch.device | str, bound: str = "clip") -> Callable[[Tensor], Tensor]:
    """The one rule for every backend: a Box action reaches the env clipped to the action space's
    bounds (the policy's sample itself, stored for the loss, is not clipped: its log-probability is
    the policy's); Discrete actions pass as they are. Without it a native env would score the
    unclipped sample (MountainCarContinuous's ``-0.1 a^2``) where gymnasium's backends score the
    clipped one, and ``auto`` would optimize another objective than ``sync``.

    ``bound="tanh"`` (``Config.action_bound``) squashes instead: ``low + (tanh(a) + 1) (high - low) / 2``
    (Tianshou's MuJoCo setting); the stored sample and its log-probability are still the raw ones."""
    if info.discrete or info.action_low is None or info.action_high is None:
        return lambda action: action
    low, high = info.action_low.flatten(), info.action_high.flatten()  # CPU tensors: no device sync
    if bound == "tanh":
        low, high = info.action_low.to(device), info.action_high.to(device)
        half = (high - low) / 2
        return lambda action: torch.addcmul(low + half, torch.tanh(action), half)
    if bool((low == low[0]).all()) and bool((high == high[0]).all()):
        # The same bounds for every dimension (every native env): Python floats, so the clip needs
        # no tensor on the device (nothing to copy, which on CUDA would synchronize).
        lo, hi = float(low[0]), float(high[0])
        return lambda action: torch.clamp(action, lo, hi)
    low, high = info.action_low.to(device), info.action_high.to(device)
    return lambda action: torch.clamp(action, low, high)


class Step(NamedTuple):
    """One lockstep transition of N envs; every field is an ``[N]`` tensor on the env's device
    except ``obs``, which is ``[N, *obs_shape]`` float."""

    obs: Tensor
    reward: Tensor  # float32
    done: Tensor  # bool: terminated | truncated, caused by this action
    valid: Tensor  # bool: this action took effect (False on NEXT_STEP reset steps)
    terminated: Tensor  # bool: the part of `done` that is a true terminal state


@runtime_checkable
class BatchedEnv(Protocol):
    """N environment copies stepped in lockstep, tensors in and out (see module docstring)."""

    num_envs: int
    info: EnvInfo
    device: torch.device
    same_step_reset: bool  # True: every step is valid; False: NEXT_STEP reset steps are invalid

    def reset(self, seed: int | None = None) -> Tensor: ...

    def step(self, action: Tensor) -> Step: ...

    def close(self) -> None: ...


@runtime_checkable
class Checkpointable(Protocol):
    """An env whose exact state can be saved and restored (native envs): a checkpoint then
    continues the run bit for bit. Envs without it are re-seeded on resume."""

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


def check_reset(env: BatchedEnv, obs: Tensor) -> None:
    """Raise ``UnsupportedEnvError`` naming the env, ``obs`` and both shapes if what ``reset``
    returned is not ``[N, *obs_shape]`` floats on the env's device (its ``EnvInfo``): said here,
    at the first reset, instead of as a broadcasting error deep inside ``collect``."""
    _check_field(env, "reset", "obs", obs, (env.num_envs, *env.info.obs_shape), floating=True)


def check_step(env: BatchedEnv, step: Step) -> None:
    """As ``check_reset``, for what ``step`` returned: a ``Step`` of ``[N, *obs_shape]`` floats and
    ``[N]`` rewards and flags (the flags bool)."""
    if not isinstance(step, tuple) or len(step) != len(Step._fields):
        raise UnsupportedEnvError(
            f"env {env.info.env_id}: step returned {type(step).__name__}, not a fastpg.envs.Step "
            f"({', '.join(Step._fields)})"
        )
    n = env.num_envs
    _check_field(env, "step", "obs", step[0], (n, *env.info.obs_shape), floating=True)
    _check_field(env, "step", "reward", step[1], (n,), floating=True)
    for name, value in zip(Step._fields[2:], step[2:]):
        _check_field(env, "step", name, value, (n,), boolean=True)


def _check_field(
    env: BatchedEnv, call: str, name: str, value: Any, shape: tuple[int, ...], *, floating=False, boolean=False
) -> None:
    where = f"env {env.info.env_id}: {call} returned {name}"
    if not isinstance(value, Tensor):
        raise UnsupportedEnvError(f"{where} as {type(value).__name__}, not a torch tensor of shape {list(shape)}")
    if tuple(value.shape) != shape:
        raise UnsupportedEnvError(
            f"{where} of shape {list(value.shape)}, but its EnvInfo and num_envs say {list(shape)} "
            f"(N = {env.num_envs} copies of obs_shape {list(env.info.obs_shape)})"
        )
    if floating and not value.is_floating_point():
        raise UnsupportedEnvError(f"{where} of dtype {value.dtype}, expected a floating-point tensor")
    if boolean and value.dtype != torch.bool:
        raise UnsupportedEnvError(f"{where} of dtype {value.dtype}, expected torch.bool")
    device = torch.device(env.device)
    if value.device.type != device.type or (device.index is not None and value.device.index != device.index):
        raise UnsupportedEnvError(f"{where} on {value.device}, but the env says its device is {env.device}")
