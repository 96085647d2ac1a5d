"""The generic batch: every member's epoch as one torch program, for any env and device.

Where the fused epoch does not apply (gymnasium backends, other policies or activations, CUDA), the
members still run as one program over K x N env copies (``fastpg.population.stacking``):

- **collect**: ``fastpg.rollout.collect`` over one env of all members' copies, with one batched
  forward of all members' policies per step and each member's draws from its own generator;
- **update**: reward-to-go of all copies at once (a discount per copy), each member's masked
  statistics (count, baseline, normalization) over its own columns, one forward and one backward of
  the sum of the members' losses over their stacked parameters (member k's loss reaches member k's
  parameters alone), then per member the gradient norm, clipping, the non-finite guard and its own
  Adam step;
- **evaluate**: the members' fresh evaluation envs as one env, one batched forward per step.

Each member computes what its single run computes, to float rounding: the batched matrix products
and the masked sums over a member's dense columns round differently from the single run's
products over its compacted entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fastpg._lazy_compiler import TensorDict
from fastpg.evaluation import episode_summary, play_first_episodes
from fastpg.placement import collect_threads, threads
from fastpg.policy import MLPPolicy
from fastpg.population.engines import EvalRequest, UpdateResult
from fastpg.population.stacking import (
    StackedEnvs,
    StackedSampler,
    member_inputs,
    stacked_distribution,
    stacked_forward,
    stacked_parameters,
)
from fastpg.returns import episode_complete_mask, reward_to_go
from fastpg.rollout import Carry, collect
from fastpg.storage import allocate_storage
from fastpg.trainer import EpochData, Trainer

__all__ = ["GenericBatch"]


class GenericBatch:
    """The members' epochs as one torch program (see the module)."""

    kind = "generic"

    def __init__(self, members: Sequence[Trainer]):
        for m in members:
            if type(m.policy) is not MLPPolicy:
                raise TypeError("a population's members use fastpg's MLPPolicy")
        self._layout_of: tuple[int, ...] | None = None
        self.envs: StackedEnvs | None = None
        self.buf: TensorDict | None = None

    def _layout(self, members: Sequence[Trainer]) -> tuple[StackedEnvs, TensorDict]:
        """One env and one storage over these members' copies (rebuilt when the members change);
        each member's ``buf`` becomes its columns of the storage."""
        key = tuple(id(m) for m in members)
        if key != self._layout_of:
            first = members[0]
            self.envs = StackedEnvs([m.env for m in members])
            N = first.env.num_envs
            self.buf = allocate_storage(first.env.info, first.cfg.num_steps, N * len(members), first.device)
            for k, m in enumerate(members):
                m.buf = self.buf[:, k * N : (k + 1) * N]
            self._layout_of = key
        else:
            self.envs.gather()
        return self.envs, self.buf

    # -- collect -------------------------------------------------------------------------------------
    def collect(self, members: Sequence[Trainer]) -> None:
        envs, buf = self._layout(members)
        params = stacked_parameters([m.policy for m in members])
        sampler = StackedSampler([m.policy for m in members], params, [m.generator for m in members])
        carry = Carry(*(torch.cat([getattr(m.carry, f) for m in members]) for f in Carry.__dataclass_fields__))
        with threads(collect_threads(torch.get_num_threads(), envs)):  # one beside the pools' workers
            collect(envs, sampler, buf, carry)
        envs.scatter()
        N = envs.per_member
        for k, m in enumerate(members):
            for f in Carry.__dataclass_fields__:
                getattr(m.carry, f).copy_(getattr(carry, f)[k * N : (k + 1) * N])

    def collected(self, members: Sequence[Trainer]) -> list[EpochData]:
        return [m.collected() for m in members]

    # -- update ----------------------------------------------------------------------------------------
    def update(self, members: Sequence[Trainer], applies: Sequence[bool]) -> list[UpdateResult]:
        buf, K = self.buf, len(members)
        first, s = members[0], members[0].settings
        policy: MLPPolicy = first.policy
        T, N = buf.batch_size[0], buf.batch_size[1] // K
        params = stacked_parameters([m.policy for m in members], requires_grad=True)
        obs = policy.flatten(buf["obs"]).reshape(T, K, N, -1).transpose(0, 1).reshape(K, T * N, -1)  # member-major
        obs = member_inputs([m.policy for m in members], obs)
        per = _MemberColumns(T, K, N)
        device, dtype = buf["reward"].device, buf["reward"].dtype
        gamma = torch.tensor([m.settings.gamma for m in members], dtype=dtype, device=device).repeat_interleave(N)
        bootstrap = None
        if s.unfinished == "bootstrap":
            last = policy.flatten(torch.cat([m.carry.obs for m in members]).float()).reshape(K, N, -1)
            last = member_inputs([m.policy for m in members], last)
            with torch.no_grad():
                bootstrap = stacked_forward(policy.value_net, params, "value_net", last).reshape(K * N)
        ret = reward_to_go(buf["reward"], buf["done"], gamma, bootstrap=bootstrap, out=buf["ret"])
        mask = buf["valid"] & episode_complete_mask(buf["done"]) if s.unfinished == "mask" else buf["valid"]
        mask, ret, action = per(mask), per(ret), per(buf["action"])
        entries = mask.sum(1)  # [K]
        count = entries.clamp_min(1).to(dtype)
        adv = self._advantage(policy, params, obs, ret, mask, count, s)
        coef = {k: torch.tensor([getattr(m.settings, k) for m in members], dtype=dtype, device=device)
                for k in ("entropy_coef", "value_coef")}  # fmt: skip
        parts = _losses_and_gradients(policy, params, obs, action, ret, adv, mask, count, coef, s)
        grads = _member_gradients(params)
        norm = torch.stack([g.flatten(1).square().sum(1) for g in grads.values()]).sum(0).sqrt()  # [K]
        max_norm = torch.tensor([m.settings.max_grad_norm for m in members], dtype=norm.dtype, device=device)
        clip = torch.where(max_norm > 0, (max_norm / (norm + 1e-6)).clamp(max=1.0), torch.ones_like(norm))
        for g in grads.values():
            g.mul_(clip.view(-1, *[1] * (g.dim() - 1)))
        bad = _first_nonfinite(params, grads, parts["loss"], norm)
        results = []
        for k, (m, apply) in enumerate(zip(members, applies)):
            some = bool(entries[k] > 0)  # no entries: no gradient at all, as in the single run
            for name, p in m.policy.named_parameters():
                p.grad = grads[name][k] if some and bad[k] is None else None
            if bad[k] is None and apply:
                m.optimizer.step()
                m.merge_observations()
            stats = {key: parts[key][k] for key in ("loss", "policy_loss", "value_loss", "entropy")}
            stats.update(
                grad_norm=norm[k].detach(),
                mask_frac=(entries[k] / (T * N)).float(),
                skipped=torch.tensor(float(bad[k] is not None), device=device),
            )
            results.append((stats, bad[k]))
        return results

    @staticmethod
    def _advantage(policy, params, obs, ret, mask, count, s) -> Tensor:
        """Each member's advantage over its columns [K, T N] (0 outside its entries): its return,
        minus its baseline, normalized with its own masked statistics."""
        adv = ret
        if s.baseline == "value":
            with torch.no_grad():
                value = torch.cat(
                    [stacked_forward(policy.value_net, params, "value_net", obs[:, i : i + s.rows]).squeeze(-1)
                     for i in range(0, obs.shape[1], s.rows)], dim=1,
                )  # fmt: skip
            adv = adv - value
        elif s.baseline == "mean":
            adv = adv - (torch.where(mask, ret, 0.0).sum(1) / count).unsqueeze(1)
        if s.normalize:
            mean = (torch.where(mask, adv, 0.0).sum(1) / count).unsqueeze(1)
            std = (torch.where(mask, (adv - mean) ** 2, 0.0).sum(1) / count).sqrt().unsqueeze(1)
            adv = (adv - mean) / (std + 1e-8)
        return torch.where(mask, adv, 0.0).detach()

    # -- evaluate -----------------------------------------------------------------------------------------
    def evaluate(self, requests: Sequence[EvalRequest]) -> list[dict[str, Any]]:
        if not requests:
            return []
        if len({(r.num_episodes, r.deterministic) for r in requests}) > 1:  # not one batch: one by one
            return [r.member.evaluate(r.num_episodes, deterministic=r.deterministic, seed=r.seed) for r in requests]
        evaluations = []
        try:
            for r in requests:
                evaluations.append(r.member.evaluation(r.num_episodes, deterministic=r.deterministic, seed=r.seed))
            first = [e.env.reset(seed=e.seed).to(torch.float32) for e in evaluations]
            envs = StackedEnvs([e.env for e in evaluations])
            params = stacked_parameters([r.member.policy for r in requests])
            sampler = StackedSampler([r.member.policy for r in requests], params, [e.generator for e in evaluations],
                                     deterministic=requests[0].deterministic)  # fmt: skip
            limit = envs.info.max_episode_steps or 100_000
            with torch.inference_mode():
                ret, length, running = play_first_episodes(
                    envs, torch.cat(first), sampler.act, limit, sampler.action_bound
                )
            n = envs.per_member
            cols = [slice(k * n, (k + 1) * n) for k in range(len(requests))]
            return [episode_summary(ret[c], length[c], running[c]) for c in cols]
        finally:
            for e in evaluations:
                e.close()


class _MemberColumns:
    """[T, K N] (member-major columns) -> [K, T N] (each member's entries in its single run's order:
    time-major, then copy)."""

    def __init__(self, T: int, K: int, N: int):
        self.T, self.K, self.N = T, K, N

    def __call__(self, x: Tensor) -> Tensor:
        T, K, N = self.T, self.K, self.N
        return x.reshape(T, K, N, *x.shape[2:]).transpose(0, 1).reshape(K, T * N, *x.shape[2:])


def _losses_and_gradients(policy, params, obs, action, ret, adv, mask, count, coef, s) -> dict[str, Tensor]:
    """Every member's loss (``fastpg.loss.reinforce_loss`` over its entries: the sums of masked
    columns, divided by its count), slice by slice of the entries, each slice's backward accumulated
    into the stacked parameters; returns the detached parts per member [K]."""
    K = obs.shape[0]
    zero = torch.zeros(K, dtype=ret.dtype, device=ret.device)
    parts = {"loss": zero, "policy_loss": zero, "value_loss": zero, "entropy": zero}
    rows = max(1, s.rows // K)
    for i in range(0, obs.shape[1], rows):
        sl = slice(i, i + rows)
        m = mask[:, sl]
        dist, _ = stacked_distribution(policy, params, obs[:, sl])
        policy_loss = -torch.where(m, adv[:, sl] * dist.log_prob(action[:, sl]), 0.0).sum(1) / count
        entropy = torch.where(m, dist.entropy(), 0.0).sum(1) / count
        loss = policy_loss - coef["entropy_coef"] * entropy
        value_loss = zero
        if s.baseline == "value":
            value = stacked_forward(policy.value_net, params, "value_net", obs[:, sl]).squeeze(-1)
            value_loss = 0.5 * torch.where(m, (value - ret[:, sl]) ** 2, 0.0).sum(1) / count
            loss = loss + coef["value_coef"] * value_loss
        loss.sum().backward()
        step = {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}
        parts = {k: parts[k] + v.detach() for k, v in step.items()}
    return parts


def _member_gradients(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The stacked parameters' gradients (zeros where a parameter had none)."""
    return {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}


def _first_nonfinite(
    params: dict[str, Tensor], grads: dict[str, Tensor], loss: Tensor, norm: Tensor
) -> list[str | None]:
    """Per member, ``fastpg.update.first_nonfinite``'s verdict: None, or the first non-finite
    quantity (the loss, a gradient, the gradient norm, a parameter); one host sync."""
    checks = [torch.isfinite(loss), torch.isfinite(norm)]
    checks += [torch.isfinite(p).flatten(1).all(1) for p in params.values()]
    ok = torch.stack(checks, dim=1).tolist()  # [K, 2 + P]
    names = list(params)
    out: list[str | None] = []
    for k, row in enumerate(ok):
        if all(row):
            out.append(None)
        elif not row[0]:
            out.append("loss")
        elif not row[1]:
            bad = next((n for n in names if not bool(torch.isfinite(grads[n][k]).all())), None)
            out.append(f"gradient (of {bad})" if bad else "gradient norm")
        else:
            out.append(f"parameter ({names[row.index(False, 2) - 2]})")
    return out
