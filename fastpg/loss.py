"""The REINFORCE loss over the entries of an epoch that take part in it.

Pure functions of tensors; this module imports only torch. The update hands them the entries in
the loss as dense 1-D tensors ``[K]`` (valid steps of complete, or bootstrapped, episodes, picked
out of the ``[T, N]`` storage once per update by ``fastpg.update``): no masks here, and the entries
left out cost no forward or backward pass. ``count`` is K as a tensor (at least 1), the divisor of
every mean, so that the loss of disjoint slices of the entries adds up to the loss of all of them
(the update accumulates gradients slice by slice).

``reinforce_loss_reference`` is the specification: the same loss over ``[T, N]`` tensors and a mask,
written with boolean indexing and library statistics; the tests hold the fast functions to it.

Examples:
    >>> import torch
    >>> ret = torch.tensor([3.0, 1.0]); count = torch.tensor(2.0)
    >>> adv = advantage(ret, count, normalize=True)
    >>> adv
    tensor([ 1., -1.])
    >>> log_prob = torch.log(torch.tensor([0.5, 0.25]))
    >>> loss, parts = reinforce_loss(log_prob, adv, count)
    >>> round(loss.item(), 4)  # -(1 * log 0.5 - 1 * log 0.25) / 2
    -0.3466
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "SumAcross",
    "batch_sum",
    "mean_std",
    "standardize",
    "advantage",
    "reinforce_loss",
    "reinforce_loss_reference",
]


def _check_same(name: str, x: Tensor, like_name: str, like: Tensor) -> None:
    if x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but {like_name} has {tuple(like.shape)}")


# Sums over a batch split over processes: ``sum_across([t, ...])`` replaces each tensor, in place,
# by its sum over the processes (``fastpg.distributed.Group.sum_``). None: one process.
SumAcross = Callable[[list[Tensor]], None]


def batch_sum(x: Tensor, sum_across: SumAcross | None = None) -> Tensor:
    """``x.sum()``, over every process's share of the batch when ``sum_across`` is given."""
    total = x.sum()
    if sum_across is not None:
        sum_across([total])
    return total


def mean_std(x: Tensor, count: Tensor, sum_across: SumAcross | None = None) -> tuple[Tensor, Tensor]:
    """Mean and (population) standard deviation of ``x``, in two passes for accuracy.

    Args:
        x: [K] float; count: 0-dim tensor, ``max(K, 1)`` (the whole batch's, with ``sum_across``).
        sum_across: the sums are over every process's ``x`` (see ``SumAcross``).

    Returns:
        (mean, std): 0-dim tensors, dtype of ``x`` (both 0 when K = 0).
    """
    mean = batch_sum(x, sum_across) / count
    var = batch_sum((x - mean) ** 2, sum_across) / count
    return mean, var.sqrt()


def standardize(x: Tensor, count: Tensor, eps: float = 1e-8, sum_across: SumAcross | None = None) -> Tensor:
    """``(x - mean) / (std + eps)`` over the K entries.

    Args:
        x: [K] float; count: 0-dim tensor, ``max(K, 1)``; eps: added to the std;
        sum_across: statistics over every process's entries (see ``SumAcross``).

    Returns:
        [K], dtype of ``x``.
    """
    mean, std = mean_std(x, count, sum_across)
    return (x - mean) / (std + eps)


def advantage(
    ret: Tensor,
    count: Tensor,
    *,
    baseline: Tensor | None = None,
    normalize: bool = True,
    sum_across: SumAcross | None = None,
) -> Tensor:
    """The advantage ``A`` of ``reinforce_loss`` (never differentiated).

    ``A = ret - baseline`` (``baseline`` a per-entry value prediction ``[K]``, or a 0-dim batch
    mean; none by default), then, with ``normalize``, scaled to zero mean and unit std over the K
    entries (for no baseline: the classic tutorials' normalized returns).

    Args:
        ret: [K] float, reward-to-go of the entries in the loss.
        count: 0-dim tensor, ``max(K, 1)``.
        baseline: optional [K] or 0-dim tensor subtracted from ``ret``.
        normalize: normalize the advantage.
        sum_across: the normalization's statistics over every process's entries (``SumAcross``).

    Returns:
        [K], dtype of ``ret``, detached.
    """
    adv = ret.detach()
    if baseline is not None:
        adv = adv - baseline.detach()
    return standardize(adv, count, sum_across=sum_across) if normalize else adv


def reinforce_loss(
    log_prob: Tensor,
    adv: Tensor,
    count: Tensor,
    *,
    ret: Tensor | None = None,
    value: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    value_coef: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The REINFORCE surrogate ``-sum(A * log_prob) / count``, plus the optional terms.

    With ``value`` (and ``ret``) the value loss ``value_coef * 0.5 * sum((value - ret)**2) / count``
    is added (``value`` predicts raw, unnormalized returns); with ``entropy`` and a non-zero
    ``entropy_coef`` the bonus ``-entropy_coef * sum(entropy) / count`` (with ``entropy_coef`` 0 the
    entropy is reported but kept out of the graph). Every sum is divided by ``count``, the number of
    entries of the whole batch, so slices of the batch give losses that add up to the batch's.

    Args:
        log_prob: [K] float, log-probability of the stored actions (carries the gradient).
        adv: [K] float, the advantage (``advantage``).
        count: 0-dim tensor, the batch's number of entries in the loss (at least 1).
        ret: [K] float, reward-to-go (needed with ``value``).
        value: [K] float, value predictions (carries the value network's gradient).
        entropy: [K] float, policy entropy per entry.
        entropy_coef: weight of the entropy bonus.
        value_coef: weight of the value loss.

    Returns:
        (loss, parts): a 0-dim loss; parts are detached 0-dim ``policy_loss, value_loss, entropy``.
    """
    _check_same("adv", adv, "log_prob", log_prob)
    if not isinstance(count, Tensor) or count.numel() != 1:
        got = f"shape {tuple(count.shape)}" if isinstance(count, Tensor) else type(count).__name__
        raise ValueError(f"count must be a 0-dim tensor (the entries in the loss), got {got}")
    count = count.reshape(())
    policy_loss = -(adv * log_prob).sum() / count
    loss = policy_loss
    zero = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    value_loss = ent = zero
    if value is not None:
        if ret is None:
            raise ValueError("reinforce_loss: value needs ret (the value loss compares them)")
        _check_same("value", value, "log_prob", log_prob)
        _check_same("ret", ret, "log_prob", log_prob)
        value_loss = 0.5 * ((value - ret.detach()) ** 2).sum() / count
        loss = loss + value_coef * value_loss
    if entropy is not None:
        _check_same("entropy", entropy, "log_prob", log_prob)
        if entropy_coef:
            ent = entropy.sum() / count
            loss = loss - entropy_coef * ent
        else:  # reported only: keep it out of the graph
            ent = entropy.detach().sum() / count
    return loss, {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(), "entropy": ent.detach()}


def reinforce_loss_reference(
    log_prob: Tensor,
    ret: Tensor,
    mask: Tensor,
    *,
    baseline: str = "none",
    normalize: bool = True,
    value: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    value_coef: float = 0.5,
    eps: float = 1e-8,
) -> Tensor:
    """The whole loss over ``[T, N]`` tensors and a mask, with boolean indexing and library
    statistics (the specification).

    ``baseline`` is ``"none"``, ``"mean"`` (the masked mean return) or ``"value"`` (``value``).
    """
    if mask.dtype != torch.bool or mask.shape != log_prob.shape or ret.shape != log_prob.shape:
        raise ValueError(
            f"log_prob, ret and a bool mask of one shape are needed, got {tuple(log_prob.shape)}, "
            f"{tuple(ret.shape)}, {tuple(mask.shape)} {mask.dtype}"
        )
    if baseline not in ("none", "mean", "value"):
        raise ValueError(f"baseline must be none, mean or value, got {baseline!r}")
    lp, r = log_prob[mask], ret[mask].detach()
    if r.numel() == 0:
        return log_prob.sum() * 0.0
    if baseline == "value":
        adv = r - value[mask].detach()
    elif baseline == "mean":
        adv = r - r.mean()
    else:
        adv = r
    if normalize:
        adv = (adv - adv.mean()) / (adv.std(unbiased=False) + eps)
    loss = -(adv * lp).mean()
    if baseline == "value":
        loss = loss + value_coef * 0.5 * ((value[mask] - r) ** 2).mean()
    if entropy is not None:
        loss = loss - entropy_coef * entropy[mask].mean()
    return loss
