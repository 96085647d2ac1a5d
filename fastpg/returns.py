"""Discounted reward-to-go over time-major rollouts, and masks for incomplete episodes.

All functions are pure: they take ``[T, N]`` tensors (T steps, N environments), never write into
their inputs, and return tensors of the input's dtype on the input's device. This module imports
only torch.

``reward_to_go_reference`` is the specification (the obvious loop); ``reward_to_go`` is the fast
path and is tested against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reward_to_go", "reward_to_go_reference", "episode_complete_mask"]


def _check(reward: Tensor, done: Tensor, gamma: float | Tensor, bootstrap: Tensor | None) -> None:
    if reward.dim() != 2:
        raise ValueError(f"reward must be [T, N], got shape {tuple(reward.shape)}")
    if done.shape != reward.shape:
        raise ValueError(f"done must have the shape of reward {tuple(reward.shape)}, got {tuple(done.shape)}")
    if done.dtype != torch.bool:
        raise ValueError(f"done must be torch.bool, got {done.dtype}")
    if not reward.is_floating_point():
        raise ValueError(f"reward must be a floating dtype, got {reward.dtype}")
    if isinstance(gamma, Tensor):
        if gamma.shape != reward.shape[1:]:
            raise ValueError(f"a gamma tensor must be [N] = {tuple(reward.shape[1:])}, got {tuple(gamma.shape)}")
        if not bool(((gamma >= 0) & (gamma <= 1)).all()):
            raise ValueError("gamma must be in [0, 1] in every column")
    elif not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if bootstrap is not None and bootstrap.shape != reward.shape[1:]:
        raise ValueError(f"bootstrap must be [N] = {tuple(reward.shape[1:])}, got {tuple(bootstrap.shape)}")


def reward_to_go_reference(
    reward: Tensor, done: Tensor, gamma: float | Tensor, *, bootstrap: Tensor | None = None
) -> Tensor:
    """Discounted reward-to-go, written as the plain loop over time (the specification).

    ``G[t] = reward[t] + gamma * G[t + 1] * (1 - done[t])`` with ``G[T] = bootstrap`` (0 if None).

    Args:
        reward: [T, N] float, reward for the action taken at step t.
        done: [T, N] bool, True where the episode ended because of the action at step t.
        gamma: discount in [0, 1], or one per column, [N] (the members of a population).
        bootstrap: optional [N], value of the state after the last step; it only enters where
            ``done[T - 1]`` is False.

    Returns:
        [T, N], dtype and device of ``reward``.
    """
    _check(reward, done, gamma, bootstrap)
    ret = torch.empty_like(reward)
    running = torch.zeros_like(reward[0]) if bootstrap is None else bootstrap.to(reward.dtype)
    for t in reversed(range(reward.shape[0])):
        running = reward[t] + gamma * running * ~done[t]
        ret[t] = running
    return ret


_CHUNK = 16  # rows of discount formed at a time (see reward_to_go)


def reward_to_go(
    reward: Tensor,
    done: Tensor,
    gamma: float | Tensor,
    *,
    bootstrap: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Discounted reward-to-go that resets at episode ends; same contract as the reference.

    ``G[t] = reward[t] + gamma * G[t + 1] * (1 - done[t])`` with ``G[T] = bootstrap`` (0 if None).

    Vectorized over N; a reverse scan over T does one fused multiply-add per step. The per-step
    discount ``gamma * ~done`` is written ``_CHUNK`` rows at a time into the output rows themselves,
    and each row is then overwritten in place by ``reward[t] + discount[t] * G[t + 1]``: no
    temporary at all (on CPU a fresh ``[T, N]`` or even a chunk-sized scratch buffer costs
    first-touch page faults comparable to the scan). The discount is exactly ``gamma`` or 0, so the
    result equals the reference up to the rounding of a fused multiply-add. Stable for every gamma
    in [0, 1] and any T; runs on any device. Not differentiable: it writes with ``out=`` into
    its own rows, which autograd does not allow (returns are data in REINFORCE; use
    ``reward_to_go_reference`` for gradients through rewards).

    Args:
        reward: [T, N] float32 or float64.
        done: [T, N] bool.
        gamma: discount in [0, 1], or one per column, [N] (the members of a population).
        bootstrap: optional [N] value of the state after the last step (used where the last step
            is not done).
        out: optional preallocated [T, N] tensor of reward's dtype and device to write into (lets
            a trainer reuse one buffer every epoch); must not alias ``reward``.

    Returns:
        [T, N], dtype and device of ``reward`` (``out`` when given).

    Examples:
        >>> reward = torch.ones(4, 2)
        >>> done = torch.tensor([[False, False], [True, False], [False, False], [False, True]])
        >>> reward_to_go(reward, done, 0.5)  # env 0: an episode of 2 steps, then one still running
        tensor([[1.5000, 1.8750],
                [1.0000, 1.7500],
                [1.5000, 1.5000],
                [1.0000, 1.0000]])
        >>> reward_to_go(reward, done, 0.5, bootstrap=torch.tensor([10.0, 10.0]))[2:, 0]
        tensor([4., 6.])
    """
    _check(reward, done, gamma, bootstrap)
    if out is None:
        out = torch.empty_like(reward)
    elif out.shape != reward.shape or out.dtype != reward.dtype or out.device != reward.device:
        raise ValueError(
            f"out must be {tuple(reward.shape)} {reward.dtype} on {reward.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    elif out.untyped_storage().data_ptr() == reward.untyped_storage().data_ptr():
        raise ValueError("out must not share memory with reward (the discounts are written into out first)")
    T = reward.shape[0]
    if T == 0:
        return out
    zero = torch.zeros((), dtype=reward.dtype, device=reward.device)
    if isinstance(gamma, Tensor):
        g = gamma.to(dtype=reward.dtype, device=reward.device)
    else:
        g = torch.full((), float(gamma), dtype=reward.dtype, device=reward.device)
    nxt = None if bootstrap is None else bootstrap.to(reward.dtype)
    for c1 in range(T, 0, -_CHUNK):
        c0 = max(0, c1 - _CHUNK)
        torch.where(done[c0:c1], zero, g, out=out[c0:c1])  # the discounts, in the rows they become
        for t in range(c1 - 1, c0 - 1, -1):
            if nxt is None:
                out[t].copy_(reward[t])
            else:  # elementwise, the output may be an input
                torch.addcmul(reward[t], out[t], nxt, out=out[t])
            nxt = out[t]
    return out


def episode_complete_mask(done: Tensor) -> Tensor:
    """Mark steps whose episode ends inside the rollout.

    ``complete[t, n]`` is True iff ``done[t', n]`` for some ``t' >= t``: the return from step t is
    a full Monte-Carlo return. Steps of episodes still running at the end of the rollout are False.

    Args:
        done: [T, N] bool.

    Returns:
        [T, N] bool.

    Examples:
        >>> done = torch.tensor([[False, False], [True, False], [False, False], [False, True]])
        >>> episode_complete_mask(done)
        tensor([[ True,  True],
                [ True,  True],
                [False,  True],
                [False,  True]])
    """
    if done.dim() != 2 or done.dtype != torch.bool:
        raise ValueError(f"done must be a [T, N] bool tensor, got {tuple(done.shape)} {done.dtype}")
    # Reverse cumulative OR along time, as a reverse cumulative max over {0, 1}.
    return done.flip(0).to(torch.uint8).cummax(0).values.flip(0).bool()
