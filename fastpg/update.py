"""One REINFORCE update: returns -> entries in the loss -> loss -> backward -> guard -> Adam step.

    entries = loss_entries(buf, policy, last_obs, s)     # reward-to-go, mask, compaction
    adv = advantage(entries.ret, entries.count, ...)     # baseline, normalization
    loss = accumulate_gradients(policy, entries, adv, s) # reinforce_loss slice by slice, backward
    grad_norm = clip, first_nonfinite(...) -> optimizer.step() or skip

Representation: the entries in the loss are picked out of the ``[T, N]`` storage once per update
(valid steps; with ``unfinished="mask"`` only those of episodes that end inside the epoch) and the
loss is dense over them. Entries left out add exactly zero to the loss and its gradient, so skipping
them changes nothing but the work (late in CartPole-v1 training a third or more of an epoch's
steps belong to unfinished episodes). The price is one host sync for their count, and the update
syncs once anyway for the non-finite guard.

The loss is a sum over entries divided by their count, so it runs ``rows`` entries at a time and
accumulates gradients: one batched pass over T x N entries allocates activations of hundreds of MB,
and fresh memory that size costs more in page faults than the arithmetic (benchmarks/NOTES.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from fastpg._lazy_compiler import TensorDict
from fastpg.config import Config
from fastpg.loss import SumAcross, advantage, batch_sum, reinforce_loss
from fastpg.returns import episode_complete_mask, reward_to_go

__all__ = [
    "UpdateSettings",
    "Entries",
    "reinforce_update",
    "loss_entries",
    "accumulate_gradients",
    "first_nonfinite",
    "slice_rows",
]

# Entries per slice of the update: about this many bytes per float32 activation tensor (see
# benchmarks/NOTES.md, "Sliced update", for the measurements behind it).
UPDATE_SLICE_BYTES = 8 * 2**20


def slice_rows(hidden_sizes: tuple[int, ...]) -> int:
    """Entries per update slice for an MLP with these hidden widths (at least 1024)."""
    widest = max(hidden_sizes, default=1) or 1  # (0,): a linear policy
    return max(1024, UPDATE_SLICE_BYTES // (4 * widest))


@dataclass(frozen=True)
class UpdateSettings:
    """What the update needs from the config (see ``Config`` for each field's meaning)."""

    gamma: float
    baseline: str
    normalize: bool
    unfinished: str
    entropy_coef: float
    value_coef: float
    max_grad_norm: float
    rows: int  # entries per slice of the loss

    @classmethod
    def from_config(cls, cfg: Config) -> UpdateSettings:
        return cls(
            cfg.gamma,
            cfg.baseline,
            cfg.normalize_returns,
            cfg.unfinished,
            cfg.entropy_coef,
            cfg.value_coef,
            cfg.max_grad_norm,
            slice_rows(cfg.hidden_sizes),
        )


class Entries(NamedTuple):
    """The K entries of an epoch that take part in the loss, as dense tensors."""

    obs: Tensor  # [K, *obs_shape]
    action: Tensor  # [K] or [K, *action_shape]
    ret: Tensor  # [K] reward-to-go
    count: Tensor  # 0-dim, max(K, 1): the divisor of every mean in the loss
    mask_frac: Tensor  # 0-dim: K / (T * N)


def reinforce_update(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    buf: TensorDict,
    last_obs: Tensor,
    s: UpdateSettings,
    *,
    apply: bool = True,
    sum_across: SumAcross | None = None,
) -> tuple[dict[str, Tensor], str | None]:
    """One update from the epoch stored in ``buf``; the optimizer steps unless a value is non-finite.

    Args:
        buf: the ``[T, N]`` storage (``ret`` is written with the reward-to-go).
        last_obs: [N, *obs_shape] observation after the last step (bootstrap of unfinished episodes).
        apply: False computes and reports everything but leaves the parameters as they are.
        sum_across: ``buf`` is one process's share of a batch split over processes
            (``fastpg.distributed``): the count, the statistics, the loss and the gradients are
            summed over them (``fastpg.loss.SumAcross``), so every process steps with the whole
            batch's gradient.

    Returns:
        (stats, nonfinite): detached 0-dim tensors ``loss, policy_loss, value_loss, entropy,
        grad_norm, mask_frac, skipped``; and None, or the first non-finite quantity (``"loss"``,
        ``"gradient (of net.0.weight)"``, ...) when the step was skipped.
    """
    entries = loss_entries(buf, policy, last_obs, s, sum_across)
    baseline = _baseline(policy, entries, s, sum_across)
    adv = advantage(entries.ret, entries.count, baseline=baseline, normalize=s.normalize, sum_across=sum_across)
    optimizer.zero_grad(set_to_none=True)
    loss, stats = accumulate_gradients(policy, entries, adv, s)
    if sum_across is not None:
        loss = _sum_loss_and_gradients(policy, loss, stats, sum_across)
    device = entries.ret.device
    max_norm = s.max_grad_norm if s.max_grad_norm > 0 else math.inf
    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), max_norm).to(device)  # CPU 0 without gradients
    bad = first_nonfinite(policy, loss, grad_norm)  # one host sync per update
    if bad is not None:  # never let a NaN / inf reach the optimizer's state or the parameters
        optimizer.zero_grad(set_to_none=True)
    elif apply:
        optimizer.step()
    stats.update(
        loss=loss,
        grad_norm=grad_norm.detach(),
        mask_frac=entries.mask_frac,
        skipped=torch.tensor(float(bad is not None), device=device),
    )
    return stats, bad


def loss_entries(
    buf: TensorDict, policy: nn.Module, last_obs: Tensor, s: UpdateSettings, sum_across: SumAcross | None = None
) -> Entries:
    """Reward-to-go into ``buf["ret"]``, then the entries that take part in the loss (``count``
    and ``mask_frac`` over every process's share of the batch with ``sum_across``)."""
    bootstrap = None
    if s.unfinished == "bootstrap":
        with torch.no_grad():
            bootstrap = policy.value(last_obs)  # [N]: V(s_T) completes the unfinished episodes
    ret = reward_to_go(buf["reward"], buf["done"], s.gamma, bootstrap=bootstrap, out=buf["ret"])
    mask = buf["valid"]  # [T, N]: reset steps never enter the loss
    if s.unfinished == "mask":
        mask = mask & episode_complete_mask(buf["done"])
    obs, action, ret = buf["obs"].flatten(0, 1), buf["action"].flatten(0, 1), ret.flatten()
    mask = mask.flatten()
    keep = mask.nonzero().squeeze(1)
    if keep.numel() < mask.numel():
        obs, action, ret = obs[keep], action[keep], ret[keep]
    if sum_across is None:
        count = torch.tensor(float(max(keep.numel(), 1)), dtype=ret.dtype, device=ret.device)
        return Entries(obs, action, ret, count, mask.float().mean())
    kept_total = torch.tensor([keep.numel(), mask.numel()], dtype=torch.float64, device=ret.device)
    sum_across([kept_total])
    count = kept_total[0].clamp_min(1).to(ret.dtype)
    return Entries(obs, action, ret, count, (kept_total[0] / kept_total[1]).float())


def _baseline(policy: nn.Module, e: Entries, s: UpdateSettings, sum_across: SumAcross | None) -> Tensor | None:
    """What the advantage subtracts from the return: the value predictions, the mean, or nothing."""
    if s.baseline == "value":  # enters the advantage of every slice: one no-grad pass first
        with torch.no_grad():
            starts = range(0, e.obs.shape[0], s.rows) or range(1)  # no entries: one empty slice
            return torch.cat([policy.value(e.obs[i : i + s.rows]) for i in starts])
    if s.baseline == "mean":
        return batch_sum(e.ret, sum_across) / e.count
    return None


def _sum_loss_and_gradients(policy: nn.Module, loss: Tensor, parts: dict[str, Tensor], sum_across: SumAcross) -> Tensor:
    """Sum the loss, its parts (in place) and the gradients over the processes, in one
    collective; returns the summed loss. A parameter without a gradient here gets the sum of the
    others' (zeros where this process had no entries); one without a gradient anywhere keeps
    none, as in one process (Adam leaves it alone)."""
    params = list(policy.parameters())
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=loss.device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    loss = loss.clone()
    parts.update({k: v.clone() for k, v in parts.items()})  # with no entries here they share one zero
    sum_across([loss, *parts.values(), has_grad, *grads])
    for p, g, some in zip(params, grads, has_grad.tolist()):
        p.grad = g if some else None
    return loss


def accumulate_gradients(
    policy: nn.Module, e: Entries, adv: Tensor, s: UpdateSettings
) -> tuple[Tensor, dict[str, Tensor]]:
    """``reinforce_loss`` over the entries, ``s.rows`` at a time, each slice's backward accumulated
    into the parameters' gradients; returns the detached total loss and its parts."""
    zero = torch.zeros((), device=e.ret.device)
    loss, parts = zero, {"policy_loss": zero, "value_loss": zero, "entropy": zero}  # 0 if K = 0
    for i in range(0, e.obs.shape[0], s.rows):
        sl = slice(i, i + s.rows)
        dist = policy(e.obs[sl])
        part, part_stats = reinforce_loss(
            dist.log_prob(e.action[sl]),
            adv[sl],
            e.count,
            ret=e.ret[sl],
            value=policy.value(e.obs[sl]) if s.baseline == "value" else None,
            entropy=dist.entropy(),
            entropy_coef=s.entropy_coef,
            value_coef=s.value_coef,
        )
        part.backward()
        loss = loss + part.detach()
        parts = {k: parts[k] + v for k, v in part_stats.items()}
    return loss, parts


def first_nonfinite(policy: nn.Module, loss: Tensor, grad_norm: Tensor) -> str | None:
    """None if loss, gradients and parameters are all finite, else the first that is not (one sync)."""
    named = list(policy.named_parameters())
    checks = [torch.isfinite(loss), torch.isfinite(grad_norm)] + [torch.isfinite(p).all() for _, p in named]
    ok = torch.stack(checks).tolist()
    if all(ok):
        return None
    if not ok[0]:
        return "loss"
    if not ok[1]:
        for name, p in named:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return f"gradient (of {name})"
        return "gradient norm"
    return f"parameter ({named[ok.index(False, 2) - 2][0]})"
