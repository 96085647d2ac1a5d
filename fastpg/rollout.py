"""``collect``: run T lockstep steps of N envs, writing in place into the ``[T, N]`` storage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastpg._lazy_compiler import TensorDict
from fastpg.envs.base import BatchedEnv, action_clipper, check_reset, check_step
from fastpg.policy import MLPPolicy, Rows, SamplingPolicy, sample_action

__all__ = [
    "Carry",
    "init_carry",
    "collect",
    "finished_episodes",
    "nonfinite_envs",
    "episode_totals",
    "episode_totals_scan",
    "episode_totals_cumsum",
    "episode_totals_reference",
]


@dataclass
class Carry:
    """What one epoch hands to the next; tensors are updated in place.

    obs: [N, *obs_shape] observation the next action will be taken in.
    episode_return / episode_length: [N] running statistics of each env's current episode, so that
    episodes spanning epoch boundaries are reported whole.
    """

    obs: Tensor
    episode_return: Tensor
    episode_length: Tensor


def init_carry(env: BatchedEnv, seed: int | None) -> Carry:
    """Reset ``env`` with ``seed`` and return a fresh carry (copies the first observation)."""
    first = env.reset(seed=seed)
    check_reset(env, first)
    return Carry(
        obs=first.clone(),
        episode_return=torch.zeros(env.num_envs, dtype=torch.float32, device=first.device),
        episode_length=torch.zeros(env.num_envs, dtype=torch.int64, device=first.device),
    )


def collect(
    env: BatchedEnv,
    policy: nn.Module,
    buf: TensorDict,
    carry: Carry,
    generator: torch.Generator | None = None,
    *,
    rows: Rows | None = None,
) -> Carry:
    """Fill ``buf`` (batch ``[T, N]``) with T steps of ``env`` under ``policy``; return the carry.

    Runs under ``torch.inference_mode()`` (cheaper per op than ``no_grad`` for small batches;
    in-place writes into the ordinary storage tensors stay usable by autograd later). Every write
    goes into an existing storage tensor; the loop makes no host syncs of its own (only the env
    backend's hand-off of actions to a CPU env). Episode statistics are filled in after the loop,
    vectorized over the epoch (``episode_totals``). Uses ``policy.act(obs, generator)`` when the
    policy is a ``SamplingPolicy``, else samples ``policy(obs)``. ``rows = (lo, total)``: these N
    envs are rows ``[lo, lo + N)`` of ``total`` split over processes (``fastpg.distributed``), and
    the sampling noise is drawn for all of them (the built-in ``MLPPolicy``, or a policy whose
    distribution ``sample_action`` draws from the generator).
    """
    T = buf.batch_size[0]
    obs, action, reward = buf["obs"], buf["action"], buf["reward"]
    done, terminated, valid = buf["done"], buf["terminated"], buf["valid"]
    act = _sampler(policy, rows)
    to_env = action_clipper(env.info, obs.device, getattr(policy, "action_bound", "clip"))  # Box: clipped (or squashed)
    obs[0].copy_(carry.obs)
    with torch.inference_mode():
        for t in range(T):
            a = act(obs[t], generator)
            action[t].copy_(a)
            step = env.step(to_env(a))
            if t == 0:  # an env that breaks the contract is named here, not by a broadcasting error
                check_step(env, step)
            reward[t].copy_(step.reward)
            done[t].copy_(step.done)
            terminated[t].copy_(step.terminated)
            valid[t].copy_(step.valid)
            (obs[t + 1] if t + 1 < T else carry.obs).copy_(step.obs)
        ep_return, ep_length, last_return, last_length = episode_totals(
            reward, done, valid, carry.episode_return, carry.episode_length
        )
        buf["episode_return"].copy_(ep_return)
        buf["episode_length"].copy_(ep_length)
        carry.episode_return.copy_(last_return)
        carry.episode_length.copy_(last_length)
    return carry


def _sampler(policy: nn.Module, rows: Rows | None) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    """``(obs, generator) -> action`` for ``collect``."""
    if rows is None:
        return policy.act if isinstance(policy, SamplingPolicy) else (lambda o, g: sample_action(policy(o), g))
    if isinstance(policy, MLPPolicy):
        return lambda o, g: policy.act(o, g, rows=rows)
    return lambda o, g: sample_action(policy(o), g, rows=rows)


def finished_episodes(buf: TensorDict) -> tuple[list[float], list[int]]:
    """Return and length of every episode that ended in the epoch stored in ``buf``, in the order
    they ended (one host sync each)."""
    done = buf["done"]  # [T, N]: t-major boolean indexing is chronological
    return buf["episode_return"][done].tolist(), buf["episode_length"][done].tolist()


def nonfinite_envs(buf: TensorDict) -> list[int]:
    """Indices of the env copies with a non-finite reward or observation in the stored epoch (a
    check once per epoch, not per step).

    One sum screens the epoch (one host sync): a NaN or infinity anywhere makes any sum of the
    elements non-finite, so a finite sum clears them all. Only a non-finite sum (a non-finite
    element, or finite values whose sum overflows) pays for the per-copy check, ~40x the sum's
    time at N = 16384, T = 128."""
    if torch.isfinite(buf["reward"].sum() + buf["obs"].sum()):
        return []
    ok = torch.isfinite(buf["reward"]).all(0) & torch.isfinite(buf["obs"]).flatten(2).all(-1).all(0)
    return (~ok).nonzero().squeeze(1).tolist()


# On CPU from this many envs up, episode_totals runs the scan over T (2 ops per step) instead of
# the cumsum form (~15 whole-[T, N] passes). Measured on the 2-core CPU: [128, 512] 3.7 vs 5.5 ms,
# [128, 4096] 18 vs 45 ms, [128, 16384] 43 vs 195 ms; at [512, 16] the scan's 1,024 small ops cost
# 7.1 ms against 0.36 ms.
SCAN_MIN_ENVS = 512


def episode_totals(
    reward: Tensor, done: Tensor, valid: Tensor, start_return: Tensor, start_length: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Running return and length of each env's current episode at every step, vectorized.

    ``ep_return[t, n]`` is the undiscounted return of env n's episode up to and including step t
    (``start_return[n]`` included while the episode that was running at the start has not ended);
    ``ep_length`` counts its valid steps likewise. At a done step they are the finished episode's
    totals. Invalid (reset) steps add nothing.

    Two implementations, the same numbers: a scan over T (one fused multiply-add per step and
    statistic; bit-identical to ``episode_totals_reference``), used on CPU from ``SCAN_MIN_ENVS``
    envs up, and prefix sums over the whole ``[T, N]`` block (fewer, larger ops: better for few
    envs and on GPUs; returns summed in float64, so they match the reference to float32 rounding).

    Args:
        reward: [T, N] float; done, valid: [T, N] bool; start_return: [N] float;
        start_length: [N] int64 (running totals carried in from the previous epoch).

    Returns:
        (ep_return [T, N] reward dtype, ep_length [T, N] int64, end_return [N], end_length [N]):
        the last two are the totals to carry into the next epoch (0 where the last step is done).

    Examples:
        >>> reward, valid = torch.ones(4, 2), torch.ones(4, 2, dtype=torch.bool)
        >>> done = torch.tensor([[False, False], [True, False], [False, False], [False, True]])
        >>> ret, length, end_ret, end_len = episode_totals(reward, done, valid, torch.tensor([3.0, 0.0]),
        ...                                                torch.tensor([3, 0]))
        >>> ret  # env 0 carried 3 steps in, ended at step 1 (5 steps), then began again
        tensor([[4., 1.],
                [5., 2.],
                [1., 3.],
                [2., 4.]])
        >>> end_ret, end_len
        (tensor([2., 0.]), tensor([2, 0]))
    """
    if reward.device.type == "cpu" and reward.shape[1] >= SCAN_MIN_ENVS:
        return episode_totals_scan(reward, done, valid, start_return, start_length)
    return episode_totals_cumsum(reward, done, valid, start_return, start_length)


def episode_totals_scan(
    reward: Tensor, done: Tensor, valid: Tensor, start_return: Tensor, start_length: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``episode_totals`` as a forward scan: ``x[t] = r[t] + keep[t - 1] * x[t - 1]``."""
    T = reward.shape[0]
    r = torch.where(valid, reward, torch.zeros((), dtype=reward.dtype, device=reward.device))
    v = valid.long()
    if T == 0:
        return r, v, start_return.clone(), start_length.clone()
    keep = ~done
    keep_r, keep_l = keep.to(reward.dtype), keep.long()
    ep_return, ep_length = torch.empty_like(r), torch.empty_like(v)
    torch.add(r[0], start_return.to(reward.dtype), out=ep_return[0])
    torch.add(v[0], start_length, out=ep_length[0])
    for t in range(1, T):  # keep is exactly 0 or 1: r + 1 * x rounds as r + x does
        torch.addcmul(r[t], keep_r[t - 1], ep_return[t - 1], out=ep_return[t])
        torch.addcmul(v[t], keep_l[t - 1], ep_length[t - 1], out=ep_length[t])
    return ep_return, ep_length, ep_return[-1] * keep_r[-1], ep_length[-1] * keep_l[-1]


def episode_totals_cumsum(
    reward: Tensor, done: Tensor, valid: Tensor, start_return: Tensor, start_length: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``episode_totals`` from prefix sums over the whole block (float64 for the returns)."""
    T = reward.shape[0]
    if T == 0:
        return reward.clone(), valid.long(), start_return.clone(), start_length.clone()
    r = torch.where(valid, reward, torch.zeros((), dtype=reward.dtype, device=reward.device))
    # Exclusive prefix sums with a zero row on top: csum[t] = sum over steps < t.
    csum = torch.cat([torch.zeros_like(r[:1], dtype=torch.float64), r.double().cumsum(0)])
    lsum = torch.cat([torch.zeros_like(valid[:1], dtype=torch.int64), valid.long().cumsum(0)])
    t_idx = torch.arange(T, device=done.device).unsqueeze(1).expand_as(done)
    # start[t]: first step of the episode that step t belongs to (0 if it began before the epoch).
    last_done = torch.where(done, t_idx, torch.full_like(t_idx, -1)).cummax(0).values
    start = torch.cat([torch.zeros_like(last_done[:1]), last_done[:-1] + 1])
    carried = start == 0  # still the episode that was running when the epoch began
    ep_return = (csum[1:] - csum.gather(0, start)).to(reward.dtype)
    ep_return = ep_return + torch.where(carried, start_return.to(reward.dtype), 0.0)
    ep_length = lsum[1:] - lsum.gather(0, start) + torch.where(carried, start_length, 0)
    end_return = torch.where(done[-1], 0.0, ep_return[-1])
    end_length = torch.where(done[-1], 0, ep_length[-1])
    return ep_return, ep_length, end_return, end_length


def episode_totals_reference(
    reward: Tensor, done: Tensor, valid: Tensor, start_return: Tensor, start_length: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``episode_totals`` as the plain loop over time (the specification)."""
    ret, length = start_return.clone(), start_length.clone()
    ep_return, ep_length = torch.empty_like(reward), torch.empty_like(done, dtype=torch.int64)
    for t in range(reward.shape[0]):
        ret = ret + torch.where(valid[t], reward[t], 0.0)
        length = length + valid[t].long()
        ep_return[t], ep_length[t] = ret, length
        ret = torch.where(done[t], 0.0, ret)
        length = torch.where(done[t], 0, length)
    return ep_return, ep_length, ret, length
