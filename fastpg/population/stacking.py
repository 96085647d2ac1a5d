"""Many members' envs and policies as one env and one policy (the generic batch's building blocks).

Members are laid out member-major: K members of N env copies are one batch of K x N copies,
member k the copies ``[k N, (k + 1) N)``; a member's policy parameters are slice k of stacked
tensors ``[K, ...]``.

- ``StackedEnvs``: one ``BatchedEnv`` of K x N copies over the members' own envs. Native envs
  of one class are gathered into one env of that class (one step of the dynamics for all copies;
  each member's resets drawn from its own env's generator, ``NativeEnv.set_members``) and handed
  back at the end (``scatter``); gymnasium's envs are stepped member by member, every member's
  step started (``step_async``: the pool's and the async backend's workers start) before any is
  waited for.
- ``stacked_parameters`` / ``stacked_forward``: the members' ``MLPPolicy`` networks as batched
  matrix products over ``[K, B, in]``.
- ``StackedSampler``: ``act(obs)`` for all members at once, each member's draws from its own
  generator as ``MLPPolicy.act`` draws them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from fastpg.envs import BatchedEnv, NativeEnv, make_env
from fastpg.envs.base import Step
from fastpg.normalization import normalized
from fastpg.policy import MLPPolicy, gumbel_choice, gumbel_shape, mode_action

__all__ = [
    "StackedEnvs",
    "stacked_parameters",
    "stacked_forward",
    "StackedSampler",
    "stacked_distribution",
    "member_inputs",
]


class StackedEnvs:
    """The members' envs (``envs``, N copies each) as one env of K x N copies (see the module)."""

    def __init__(self, envs: Sequence[BatchedEnv]):
        self.envs = list(envs)
        first = self.envs[0]
        self.per_member = first.num_envs
        self.num_envs = self.per_member * len(self.envs)
        self.info, self.device, self.same_step_reset = first.info, first.device, first.same_step_reset
        self.native: NativeEnv | None = None
        if all(type(e) is type(first) for e in self.envs) and isinstance(first, NativeEnv):
            # One env of the members' class over all their copies; its state is gathered below.
            native = make_env(first.env_id, self.num_envs, backend="torch", device=first.device, dtype=first.dtype,
                              kernel=first.kernel)  # fmt: skip
            native.set_members([e.generator for e in self.envs])
            self.native = native
        self.gather()

    def gather(self) -> None:
        """Take the members' env state (native envs: state, final state, step counters)."""
        if self.native is None:
            return
        n = self.native
        n.install_kernel_state(
            torch.cat([e.raw_state for e in self.envs], dim=1), torch.cat([e.raw_final for e in self.envs], dim=1)
        )
        n.elapsed = torch.cat([e.elapsed for e in self.envs])

    def scatter(self) -> None:
        """Hand the state back to the members' envs (each its own copies, contiguous)."""
        if self.native is None:
            return
        n, N = self.native, self.per_member
        state, final = n.raw_state, n.raw_final
        for k, e in enumerate(self.envs):
            cols = slice(k * N, (k + 1) * N)
            e.install_kernel_state(state[:, cols].clone(), final[:, cols].clone())
            e.elapsed.copy_(n.elapsed[cols])

    @property
    def worker_processes(self) -> int:
        """Processes stepping the members' copies beside this one (their pools' workers)."""
        return sum(getattr(e, "worker_processes", 0) for e in self.envs)

    def reset(self, seed: int | None = None) -> Tensor:
        raise RuntimeError("the members' envs are reset one by one, each with its own seed")

    def step(self, action: Tensor) -> Step:
        if self.native is not None:
            return self.native.step(action)
        actions = action.split(self.per_member)
        if all(hasattr(e, "step_async") for e in self.envs):
            # Every member's step started before any is waited for: the pools' (and async
            # backends') workers of all members step together, while this process steps each
            # pool's own share in turn.
            for e, a in zip(self.envs, actions):
                e.step_async(a)
            parts = [e.step_wait() for e in self.envs]
        else:
            parts = [e.step(a) for e, a in zip(self.envs, actions)]
        return Step(*(torch.cat(field) for field in zip(*parts)))

    def close(self) -> None:
        """Nothing to close: the members' envs are the members'."""


def stacked_parameters(policies: Sequence[MLPPolicy], *, requires_grad: bool = False) -> dict[str, Tensor]:
    """Each parameter of the members' policies stacked into ``[K, ...]`` (a copy; leaves that
    require grad with ``requires_grad``)."""
    per_member = [dict(p.named_parameters()) for p in policies]
    return {
        name: torch.stack([params[name].detach() for params in per_member]).requires_grad_(requires_grad)
        for name in per_member[0]
    }


def stacked_forward(net: nn.Sequential, params: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    """``net`` (an ``MLPPolicy`` network, named ``prefix`` in it) over ``x`` [K, B, in] with the
    stacked ``params``: member k's rows through member k's weights; [K, B, out]."""
    for i, layer in enumerate(net):
        if isinstance(layer, nn.Linear):
            weight, bias = params[f"{prefix}.{i}.weight"], params[f"{prefix}.{i}.bias"]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        else:
            x = layer(x)
    return x


def stacked_distribution(policy: MLPPolicy, params: dict[str, Tensor], x: Tensor) -> tuple[Distribution, Tensor]:
    """The members' action distributions over flat observations ``x`` [K, B, D] (batch shape
    [K, B]), and the network's output."""
    out = stacked_forward(policy.net, params, "net", x)
    log_std = None if policy.discrete else params["log_std"].unsqueeze(1)
    return policy.distribution(out, log_std), out


def member_inputs(policies: Sequence[MLPPolicy], x: Tensor) -> Tensor:
    """Flattened observations ``x`` [K, B, D] of K members as their networks take them: member k's
    rows normalized with member k's statistics where ``obs_norm`` (``MLPPolicy._flat``, batched)."""
    if policies[0].obs_normalizer is None:
        return x
    shift = torch.stack([p.obs_normalizer.shift for p in policies]).unsqueeze(1)
    scale = torch.stack([p.obs_normalizer.scale for p in policies]).unsqueeze(1)
    return normalized(x, shift, scale)


class StackedSampler:
    """``act(obs)`` over K members' copies (obs ``[K N, *obs_shape]``): one batched forward of the
    members' policies (``params``, stacked), each member's draws from ``generators[k]``, as many
    and in the order its ``MLPPolicy.act`` draws them (so a member's actions are those of its
    single run up to the rounding of the batched matrix products)."""

    def __init__(self, policies: Sequence[MLPPolicy], params: dict[str, Tensor], generators: Sequence[torch.Generator],
                 *, deterministic: bool = False):  # fmt: skip
        self.policies, self.params, self.generators = list(policies), params, list(generators)
        self.policy = self.policies[0]  # the members' shared structure (sizes, activation, action space)
        self.deterministic = deterministic
        self.action_bound = self.policy.action_bound  # how the collector hands Box actions to the env

    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        K = len(self.generators)
        x = member_inputs(self.policies, self.policy.flatten(obs).reshape(K, obs.shape[0] // K, -1))
        if self.deterministic:
            return mode_action(stacked_distribution(self.policy, self.params, x)[0]).flatten(0, 1)
        out = stacked_forward(self.policy.net, self.params, "net", x)
        if self.policy.discrete:
            u = self._draws(gumbel_shape(out), out, "uniform")
            return gumbel_choice(out, u).flatten(0, 1)
        eps = self._draws(out.shape, out, "normal")
        return self.policy.gaussian_action(out, self.params["log_std"].unsqueeze(1), eps).flatten(0, 1)

    def _draws(self, shape: torch.Size, like: Tensor, kind: str) -> Tensor:
        """[K, ...] draws, row k from member k's generator (what ``fastpg.policy.noise`` draws)."""
        u = torch.empty(shape, dtype=like.dtype, device=like.device)
        for row, g in zip(u, self.generators):
            row.normal_(generator=g) if kind == "normal" else row.uniform_(generator=g)
        return u
