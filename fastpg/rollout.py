"""``collect``: run T lockstep steps of N envs, writing in place into the ``[T, N]`` storage."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from fastpg.envs.base import BatchedEnv
from fastpg.policy import sample_action

__all__ = ["Carry", "init_carry", "collect"]


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
) -> Carry:
    """Fill ``buf`` (batch ``[T, N]``) with T steps of ``env`` under ``policy``; return the carry.

    Runs under ``torch.no_grad()``. Every write goes into an existing storage tensor; the loop makes
    no host syncs of its own (only the env backend's hand-off of actions to a CPU env). Reset steps
    of NEXT_STEP envs carry reward 0 (gymnasium's contract), so they add nothing to the running
    episode return, and they are not counted in its length.
    """
    T = buf.batch_size[0]
    obs, action, reward = buf["obs"], buf["action"], buf["reward"]
    done, terminated, valid = buf["done"], buf["terminated"], buf["valid"]
    ep_return, ep_length = buf["episode_return"], buf["episode_length"]
    run_return, run_length = carry.episode_return, carry.episode_length
    obs[0].copy_(carry.obs)
    with torch.no_grad():
        for t in range(T):
            a = sample_action(policy(obs[t]), generator)
            action[t].copy_(a)
            step = env.step(a)
            reward[t].copy_(step.reward)
            done[t].copy_(step.done)
            terminated[t].copy_(step.terminated)
            valid[t].copy_(step.valid)
            run_return.add_(step.reward)
            run_length.add_(step.valid)
            ep_return[t].copy_(run_return)
            ep_length[t].copy_(run_length)
            run_return.masked_fill_(step.done, 0.0)
            run_length.masked_fill_(step.done, 0)
            (obs[t + 1] if t + 1 < T else carry.obs).copy_(step.obs)
    return carry
