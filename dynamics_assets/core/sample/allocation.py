"""Budget allocation: split an integer budget T over clusters, proportional to weights, within bounds.

Continuous problem (water-filling): find λ with Σ_c clip(λ·w_c, lo_c, hi_c) = T, then
x_c = clip(λ·w_c, lo_c, hi_c). What a capped cluster cannot take is thereby redistributed to the
others, so the realised total is T — unlike the DynamiCS reference code, whose capped clusters
simply lose their surplus.

Integer problem: R_c = floor(x_c) plus one for the (T − Σ floor) clusters with the largest
fractional parts (Hamilton's largest-remainder method), ties broken by larger weight, then by
lower cluster id. With weights and bounds monotone in cluster size, R is monotone too: the order
of the clusters is kept.
"""
from __future__ import annotations

import numpy as np


def water_fill(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: float) -> np.ndarray:
    """x with Σx = total and x_c = clip(λ·w_c, lower_c, upper_c) for one λ ≥ 0."""
    w = np.asarray(weights, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    if np.any(w < 0) or np.any(lo > hi):
        raise ValueError("weights must be ≥ 0 and lower ≤ upper")
    if not lo.sum() <= total <= hi.sum():
        raise ValueError(f"budget {total} outside the feasible range [{lo.sum():.0f}, {hi.sum():.0f}]")

    def filled(lam: float) -> float:
        return float(np.clip(lam * w, lo, hi).sum())

    # Bracket λ, then bisect: filled() is monotone non-decreasing in λ.
    lam_lo, lam_hi = 0.0, 1.0
    while filled(lam_hi) < total:
        lam_hi *= 2.0
        if lam_hi > 1e300:  # every weighted cluster is at its upper bound
            break
    for _ in range(200):
        mid = 0.5 * (lam_lo + lam_hi)
        if mid in (lam_lo, lam_hi):
            break
        if filled(mid) < total:
            lam_lo = mid
        else:
            lam_hi = mid
    x = np.clip(lam_hi * w, lo, hi)
    # Clusters with zero weight sit at their lower bound; the remaining rounding error (1e-9 of T)
    # is absorbed by integerisation.
    return x


def integerize(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: int,
               weights: np.ndarray) -> np.ndarray:
    """Round x to integers within [lower, upper] summing exactly to total (largest remainder)."""
    lower = np.asarray(lower, dtype=np.int64)
    upper = np.asarray(upper, dtype=np.int64)
    r = np.clip(np.floor(x + 1e-9).astype(np.int64), lower, upper)
    deficit = int(total - r.sum())
    if deficit > 0:
        frac = x - r
        eligible = np.flatnonzero(r < upper)
        # Sort by largest fractional part, then larger weight, then lower id.
        order = np.lexsort((eligible, -weights[eligible], -frac[eligible]))
        if deficit > len(order):
            raise AssertionError("allocation cannot reach the budget within the upper bounds")
        r[eligible[order[:deficit]]] += 1
    elif deficit < 0:
        frac = x - r
        eligible = np.flatnonzero(r > lower)
        order = np.lexsort((-eligible, weights[eligible], frac[eligible]))
        if -deficit > len(order):
            raise AssertionError("allocation cannot go down to the budget within the lower bounds")
        r[eligible[order[:-deficit]]] -= 1
    assert int(r.sum()) == total
    return r


def allocate(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer allocation R (sum exactly ``total``) and its continuous counterpart x."""
    weights = np.asarray(weights, dtype=np.float64)
    x = water_fill(weights, lower, upper, total)
    return integerize(x, lower, upper, int(total), weights), x
