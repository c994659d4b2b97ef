"""Confidence intervals for the report's claims, over whole-chain seeds and test-set sampling.

The interval of a mean accuracy is a two-level bootstrap: each draw resamples the group's values with
replacement (one per model: the retraining seeds of every chain, ``chains:``, pooled; chains are not resampled
as units), then redraws their mean on a test set of the same size, ``Binomial(n, mean) / n`` (a parametric
bootstrap of the test sample). One test-sample draw for the whole group, not one per model: every model of a
group is scored on the same test images, whose errors are strongly correlated, and independent draws would
shrink the test-sample spread of the mean by up to sqrt(k); one shared draw treats them as fully correlated,
which errs wide. The 2.5th and 97.5th percentiles of the draws are the 95% interval. A difference (D_R
against its baseline) bootstraps both sides independently; since both are scored on the same test images,
this too overstates the spread of the difference: conservative. With two or three seeds the seed level rests
on very few values, so the interval understates the spread between seeds; read it with the seed counts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

DRAWS = 4000
LEVEL = 0.95


def bootstrap_means(values: Sequence[float], n: int, *, draws: int = DRAWS,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """``draws`` bootstrap replicates of the mean of ``values`` (accuracies in [0, 1], one per model, all
    measured on the same ``n`` test images): the values resampled with replacement, then their mean redrawn as
    Binomial(n, mean) / n. Raises ValueError without values or with n < 1."""
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0 or int(n) < 1:
        raise ValueError(f"bootstrap_means needs at least one value and n >= 1 (got {v.size} values, n={n})")
    rng = rng if rng is not None else np.random.default_rng(0)
    picked = v[rng.integers(0, v.size, size=(draws, v.size))]
    return rng.binomial(int(n), np.clip(picked.mean(axis=1), 0.0, 1.0)) / int(n)


def interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws."""
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], n: int, level: float = LEVEL) -> tuple[float, float]:
    """The bootstrap ``level`` interval of the mean accuracy (see the module's docstring)."""
    return interval(bootstrap_means(values, n), level)


def group_n(rec: dict) -> int:
    """The number of test images a summary group was scored on (every evaluation of a group has the same):
    the ``n`` of its intervals."""
    return int(max(rec["eval_n_values"]))


def diff_ci(a: Sequence[float], n_a: int, b: Sequence[float], n_b: int, level: float = LEVEL) -> tuple[float, float]:
    """The bootstrap ``level`` interval of mean(a) - mean(b), both sides resampled independently."""
    rng = np.random.default_rng(0)
    return interval(bootstrap_means(a, n_a, rng=rng) - bootstrap_means(b, n_b, rng=rng), level)
