"""Running observation normalization: the statistics, their once-per-epoch update, and
``running_moments_reference`` (the specification the tests hold the update to).

``ObsNormalizer`` is an ``nn.Module`` with buffers only, the first layer of ``MLPPolicy`` when
``Config.obs_norm`` is on: its statistics travel with the policy's ``state_dict`` (checkpoints,
``load_policy``, ``fastpg eval``, video) and every forward applies them, so acting, the update,
evaluation and a loaded policy normalize alike.

Update rule: once per epoch, after the optimizer step, the valid steps of the epoch are merged into
the running count, mean and variance (Chan, Golub and LeVeque's parallel formulas, in float64);
the epoch's collection and update both used the statistics of the epochs before it, so the policy
that acted is the policy that is differentiated. In a data-parallel run the epoch's sums are summed
over the processes first, so every process merges the whole batch and the statistics stay
identical.

Examples:
    >>> import torch
    >>> norm = ObsNormalizer(2)
    >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    >>> norm.update(x, torch.ones(2, dtype=torch.bool))
    >>> norm(x)
    tensor([[-1.0000, -1.0000],
            [ 1.0000,  1.0000]])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastpg.loss import SumAcross

__all__ = ["ObsNormalizer", "normalized", "running_moments_reference", "OBS_CLIP"]

OBS_CLIP = 10.0  # normalized observations are clipped to [-10, 10] (Tianshou, SB3's VecNormalize)
_EPS = 1e-8


class ObsNormalizer(nn.Module):
    """``(x - mean) / sqrt(var + 1e-8)``, clipped to ``[-OBS_CLIP, OBS_CLIP]``, over the last dim.

    Before the first update the statistics are mean 0, variance 1 (the identity, clipped).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        # float32 copies the forward applies (computed once per update, not per forward)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return normalized(x, self.shift, self.scale)

    @torch.no_grad()
    def update(self, x: Tensor, mask: Tensor, sum_across: SumAcross | None = None) -> None:
        """Merge the rows of ``x`` [..., dim] where ``mask`` [...] is True into the statistics
        (no host sync; every process's rows with ``sum_across``)."""
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        m = mask.reshape(-1, 1).to(torch.float64)
        n = m.sum().reshape(1)
        total = (x * m).sum(0)
        if sum_across is not None:
            sum_across([n, total])
        batch_mean = total / n.clamp_min(1)
        m2 = (((x - batch_mean) * m) ** 2).sum(0)
        if sum_across is not None:
            sum_across([m2])
        count = self.count + n[0]
        delta = batch_mean - self.mean
        weight = n[0] / count.clamp_min(1)
        mean = self.mean + delta * weight
        merged_m2 = self.var * self.count + m2 + delta**2 * self.count * weight
        var = merged_m2 / count.clamp_min(1)
        keep = n[0] == 0  # an epoch with no valid step leaves the statistics as they are
        self.mean.copy_(torch.where(keep, self.mean, mean))
        self.var.copy_(torch.where(keep, self.var, var))
        self.count.copy_(count)
        self.shift.copy_(self.mean)
        self.scale.copy_((self.var + _EPS).rsqrt())


def normalized(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``(x - shift) * scale``, clipped to ``[-OBS_CLIP, OBS_CLIP]`` (``shift`` and ``scale``
    broadcast against ``x``: one normalizer's, or K members' stacked)."""
    return ((x - shift) * scale).clamp_(-OBS_CLIP, OBS_CLIP)


def running_moments_reference(batches: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The specification: mean and (population) variance of every row of every batch, at once."""
    rows = torch.cat([b.reshape(-1, b.shape[-1]).to(torch.float64) for b in batches])
    return rows.mean(0), rows.var(0, unbiased=False)
