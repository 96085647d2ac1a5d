"""Masked statistics and the REINFORCE loss over time-major ``[T, N]`` rollouts.

Pure functions of tensors; this module imports only torch. Masks select the entries that take part
(valid steps of complete, or bootstrapped, episodes). Shapes never depend on the mask: no boolean
indexing, so nothing here synchronizes with the device or changes shape from epoch to epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "masked_mean",
    "masked_mean_std",
    "masked_normalize",
    "reinforce_loss",
    "reinforce_loss_reference",
    "advantage",
    "surrogate",
    "BASELINES",
]

BASELINES = ("none", "mean", "value")


def _check_same(name: str, x: Tensor, mask: Tensor) -> None:
    if x.shape != mask.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but mask has {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be torch.bool, got {mask.dtype}")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is True; 0 when the mask is empty.

    Args:
        x: [*S] float; mask: [*S] bool.

    Returns:
        scalar tensor, dtype of ``x``.
    """
    _check_same("x", x, mask)
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def masked_mean_std(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (population) standard deviation of ``x`` over the masked entries.

    Both are 0 when the mask is empty. Computed in two passes for accuracy.

    Args:
        x: [*S] float; mask: [*S] bool.

    Returns:
        (mean, std): scalar tensors, dtype of ``x``.
    """
    _check_same("x", x, mask)
    m = mask.to(x.dtype)
    count = m.sum().clamp_min(1.0)
    mean = (x * m).sum() / count
    var = (((x - mean) * m) ** 2).sum() / count
    return mean, var.sqrt()


def masked_normalize(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / (std + eps)`` with masked statistics; masked-out entries become 0.

    Args:
        x: [*S] float; mask: [*S] bool; eps: added to the std.

    Returns:
        [*S], dtype of ``x``.
    """
    mean, std = masked_mean_std(x, mask)
    return torch.where(mask, (x - mean) / (std + eps), torch.zeros_like(x))


def reinforce_loss(
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
) -> tuple[Tensor, dict[str, Tensor]]:
    """The masked REINFORCE surrogate, ``-sum(mask * A * log_prob) / sum(mask)``.

    The advantage ``A`` is built from the returns, never differentiated:
      - ``baseline="none"``: ``A = ret``;
      - ``baseline="mean"``: ``A = ret - masked_mean(ret)``;
      - ``baseline="value"``: ``A = ret - value`` and a value loss
        ``value_coef * 0.5 * masked_mean((value - ret) ** 2)`` is added (``value`` predicts raw,
        unnormalized returns).
    With ``normalize``, ``A`` is then scaled to zero mean and unit std over the masked entries
    (for ``baseline="none"`` this is the classic tutorials' normalized returns). An entropy bonus
    ``-entropy_coef * masked_mean(entropy)`` is added when ``entropy`` is given.

    Args:
        log_prob: [T, N] float, log-probability of the stored actions (carries the gradient).
        ret: [T, N] float, reward-to-go.
        mask: [T, N] bool, entries that take part.
        baseline: one of ``BASELINES``.
        normalize: normalize the advantage with masked statistics.
        value: [T, N] float, value predictions (required for ``baseline="value"``).
        entropy: [T, N] float, policy entropy per entry (optional).
        entropy_coef: weight of the entropy bonus.
        value_coef: weight of the value loss.

    Returns:
        (loss, stats): a scalar loss; stats are detached scalar tensors
        ``policy_loss, value_loss, entropy, adv_mean, adv_std, ret_mean, mask_frac``.
    """
    _check_same("log_prob", log_prob, mask)
    _check_same("ret", ret, mask)
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline == "value":
        if value is None:
            raise ValueError("baseline='value' needs the value predictions")
        _check_same("value", value, mask)

    adv, stats = advantage(ret, mask, baseline=baseline, normalize=normalize, value=value)
    if entropy is not None:
        _check_same("entropy", entropy, mask)
    count = mask.to(log_prob.dtype).sum().clamp_min(1.0)
    loss, parts = surrogate(
        log_prob, adv, mask, count, ret=ret, value=value if baseline == "value" else None,
        entropy=entropy, entropy_coef=entropy_coef, value_coef=value_coef,
    )
    return loss, {**parts, **stats}


def advantage(
    ret: Tensor, mask: Tensor, *, baseline: str = "none", normalize: bool = True, value: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The advantage ``A`` of ``reinforce_loss`` (detached) and its statistics.

    Args and the baselines as in ``reinforce_loss``; ``value`` may be detached predictions.

    Returns:
        (adv [T, N], stats): detached scalars ``adv_mean, adv_std, ret_mean, mask_frac``.
    """
    ret = ret.detach()
    ret_mean, _ = masked_mean_std(ret, mask)
    if baseline == "value":
        adv = ret - value.detach()
    elif baseline == "mean":
        adv = ret - ret_mean
    else:
        adv = ret
    if normalize:
        adv = masked_normalize(adv, mask)
    adv_mean, adv_std = masked_mean_std(adv, mask)
    return adv, {"adv_mean": adv_mean, "adv_std": adv_std, "ret_mean": ret_mean, "mask_frac": mask.float().mean()}


def surrogate(
    log_prob: Tensor,
    adv: Tensor,
    mask: Tensor,
    count: Tensor,
    *,
    ret: Tensor | None = None,
    value: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    value_coef: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The terms of ``reinforce_loss`` for a slice of the entries, each sum divided by ``count``.

    With ``count`` the number of masked entries of the whole batch, the losses of disjoint slices
    add up to ``reinforce_loss`` of the batch (so the update can run slice by slice, accumulating
    gradients). ``value`` (with ``ret``) adds the value loss; ``entropy`` the entropy term, kept out
    of the graph when ``entropy_coef`` is 0.

    Returns:
        (loss, parts): parts are detached ``policy_loss, value_loss, entropy`` (their slice's share).
    """
    m = mask.to(log_prob.dtype)
    policy_loss = -(adv * log_prob * m).sum() / count
    loss = policy_loss
    zero = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    value_loss = zero
    if value is not None:
        value_loss = 0.5 * (((value - ret.detach()) ** 2) * m).sum() / count
        loss = loss + value_coef * value_loss
    ent = zero
    if entropy is not None:
        if entropy_coef:
            ent = (entropy * m).sum() / count
            loss = loss - entropy_coef * ent
        else:  # reported only: keep it out of the graph
            ent = (entropy.detach() * m).sum() / count
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
    """The same loss written with boolean indexing and library statistics (the specification)."""
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
