"""Rollout storage: one TensorDict of batch size ``[T, N]``, allocated once on the training device.

Index semantics (time-major; ``t`` in ``[0, T)`` is the step within the epoch, ``n`` the env):

- ``obs[t]``      [T, N, *obs_shape] float32: observation the action at step t was taken in.
- ``action[t]``   [T, N] int64 (Discrete) or [T, N, *action_shape] float32 (Box): the action
  sampled at step t (Box: the raw sample, before the environment clips it).
- ``reward[t]``   [T, N] float32: reward for ``action[t]``.
- ``done[t]``     [T, N] bool: the episode ended because of ``action[t]`` (terminated or truncated).
- ``terminated[t]`` [T, N] bool: the part of ``done`` that reached a terminal state.
- ``valid[t]``    [T, N] bool: ``action[t]`` took effect. False for the reset step that gymnasium's
  NEXT_STEP autoreset inserts after a done (its action is ignored and its reward is 0). Invalid
  entries never enter the loss, the normalization statistics or the reported env steps.
- ``episode_return[t]`` / ``episode_length[t]`` [T, N]: return and length of the episode of env n
  so far, including step t; at a done step they are the finished episode's return and length.
- ``ret[t]``      [T, N] float32: reward-to-go, written by the update.

The carry between epochs (the observation after the last step, running episode statistics) lives
in ``fastpg.rollout.Carry``, not here. Storage is locked: no keys can be added, and every epoch writes into the
same tensors (``data_ptr()`` never changes).
"""

from __future__ import annotations

import torch

from fastpg._lazy_compiler import TensorDict
from fastpg.envs.base import EnvInfo

__all__ = ["allocate_storage"]


def allocate_storage(info: EnvInfo, T: int, N: int, device: torch.device | str) -> TensorDict:
    """Allocate the locked ``[T, N]`` rollout TensorDict for an env described by ``info``."""

    def z(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(T, N, *shape, dtype=dtype, device=device)

    buf = TensorDict(
        {
            "obs": z(*info.obs_shape),
            "action": z(*info.action_shape, dtype=info.action_dtype),
            "reward": z(),
            "done": z(dtype=torch.bool),
            "terminated": z(dtype=torch.bool),
            "valid": z(dtype=torch.bool),
            "episode_return": z(),
            "episode_length": z(dtype=torch.int64),
            "ret": z(),
        },
        batch_size=[T, N],
        device=device,
    )
    return buf.lock_()
