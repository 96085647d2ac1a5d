"""Statistics across runs: the interquartile mean and stratified-bootstrap confidence intervals.

The aggregates that "Deep RL at the Edge of the Statistical Precipice" (Agarwal et al., 2021;
the ``rliable`` library) recommends for a handful of seeds: the median, the interquartile mean
(IQM: the mean of the middle half of the runs, robust to outliers yet using half of them) and a
percentile bootstrap confidence interval whose resamples draw runs *within* each stratum (each
task, or each hyperparameter setting), so that every resample keeps the strata's sizes.

Pure functions of numbers (numpy); seeded, so an interval is reproducible. Scores may be
``inf`` (a run that never solved has an infinite time to solve): the statistics then say so
(an infinite median), and interval ends are order statistics, never interpolated across ``inf``.

Examples:
    >>> iqm([1, 2, 3, 4, 5, 6, 7, 8])  # the mean of 3, 4, 5, 6
    4.5
    >>> bootstrap_ci([[0.0], [1.0]], "mean")  # one run per stratum: every resample is (0 + 1) / 2
    (0.5, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["iqm", "median", "STATISTICS", "bootstrap_ci", "aggregate"]


def iqm(scores: Sequence[float] | np.ndarray, axis: int = -1) -> float | np.ndarray:
    """Interquartile mean: sort, drop ``floor(n / 4)`` scores from each end, average the rest
    (``scipy.stats.trim_mean(scores, 0.25)``, rliable's definition). With fewer than 4 scores
    nothing is dropped."""
    x = np.sort(np.asarray(scores, dtype=float), axis=axis)
    n = x.shape[axis]
    cut = n // 4
    kept = np.take(x, range(cut, n - cut), axis=axis)
    with np.errstate(invalid="ignore"):  # inf - inf inside a mean of infinities
        out = kept.mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def median(scores: Sequence[float] | np.ndarray, axis: int = -1) -> float | np.ndarray:
    """The median, ``inf`` when more than half the scores are infinite: the mean of the two middle
    order statistics for an even count (``numpy.median``), but ``inf`` when the upper one is."""
    x = np.sort(np.asarray(scores, dtype=float), axis=axis)
    n = x.shape[axis]
    lo, hi = np.take(x, (n - 1) // 2, axis=axis), np.take(x, n // 2, axis=axis)
    with np.errstate(invalid="ignore"):
        out = np.where(np.isinf(hi), hi, (lo + hi) / 2)
    return float(out) if np.ndim(out) == 0 else out


def _mean(scores: Sequence[float] | np.ndarray, axis: int = -1) -> float | np.ndarray:
    out = np.asarray(scores, dtype=float).mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


STATISTICS: dict[str, Callable[..., float | np.ndarray]] = {"iqm": iqm, "median": median, "mean": _mean}


def bootstrap_ci(
    strata: Sequence[Sequence[float]],
    statistic: str = "iqm",
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic`` over the runs of all ``strata`` together,
    from ``resamples`` stratified bootstrap resamples: each stratum's runs are drawn with
    replacement from that stratum alone (as many as it has), then the statistic is taken over the
    pooled draw. The ends are order statistics of the resampled statistics (no interpolation), at
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    groups = [np.asarray(s, dtype=float) for s in strata if len(s)]
    if not groups:
        raise ValueError("bootstrap_ci needs at least one score")
    rng = np.random.default_rng(seed)
    draws = np.concatenate([g[rng.integers(0, len(g), size=(resamples, len(g)))] for g in groups], axis=1)
    values = np.asarray(STATISTICS[statistic](draws, axis=1))
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def aggregate(
    strata: Sequence[Sequence[float]], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> dict[str, float | None]:
    """Median and IQM of the pooled runs of ``strata``, each with its stratified-bootstrap
    interval: ``{"median", "median_ci_low", "median_ci_high", "iqm", "iqm_ci_low", "iqm_ci_high"}``;
    infinite values become None (JSON has no infinity)."""
    pooled = [x for s in strata for x in s]
    out: dict[str, float | None] = {}
    for name in ("median", "iqm"):
        lo, hi = bootstrap_ci(strata, name, confidence=confidence, resamples=resamples, seed=seed)
        out[name] = float(STATISTICS[name](pooled))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
    return {k: (v if v is not None and math.isfinite(v) else None) for k, v in out.items()}
