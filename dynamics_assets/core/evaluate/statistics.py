"""Paired statistics for the comparison: a recipe against uniform at equal compute, per metric,
with t-based intervals over seeds that carry the evaluation images' sampling noise, and Holm's
correction over the family of comparisons (numpy + scipy's t distribution).

Inputs are per-image outcomes: for every (recipe, seed) a vector ``correct`` over the *same*
evaluation images (1.0 / 0.0 zero-shot top-1 correctness, or a fraction when interpolated between
two checkpoints), plus the image ``labels`` and the concept buckets (head / tail) they fall in.

Metrics (``METRICS``): ``top1`` = mean over images; ``head`` / ``tail`` = mean over the images of the
head / tail concepts (the eval set is balanced per concept, so this equals the mean per-class
accuracy of the bucket at the point estimate).

Paired difference (``paired_t``): per seed s, ``d_s`` = the bucket mean of the per-image
differences recipe − reference (the reference is uniform at the recipe's compute, ``reference_at``,
read on the same seed and images). The estimate is ``d̄ = mean_s d_s`` and its variance has two
parts that a reviewer asks about:

    SE² = s²(d_s) / S                  training seeds (between-seed variance)
        + s²(d̄_i) / N                  the finite evaluation set: the variance of the seed-averaged
                                       per-image difference d̄_i over the N images, i.e. what
                                       resampling the images inside every seed adds (it is shared by
                                       all seeds, so the seed term cannot see it)

with Welch–Satterthwaite degrees of freedom ``ν = SE⁴ / ((s²_seed/S)²/(S−1) + (s²_img/N)²/(N−1))``
(≈ S − 1 when the seeds dominate). The 95% interval is ``d̄ ± t_{0.975,ν} · SE``; the two-sided
p-value is ``2·(1 − T_ν(|d̄| / SE))``. The percentile bootstrap this replaces covered 0.88–0.90 at 5
seeds (its SE is ≈ 0.87× the true SD and z replaces t₄); a simulation test
(``test_statistics.py``) shows this interval's coverage ≥ 0.93 at the design's seed count.

Minimum detectable effect of the design: ``(t_{0.975,ν} + t_{0.80,ν}) · √2 · SE_ref`` with SE_ref the
same two-part standard error of the reference (uniform) arm's own metric and ν its degrees of
freedom: the true difference this design detects with 80% power at two-sided α = 0.05, from the
same quantiles as the interval. It is a property of the design and of uniform's noise, not of the
observed difference (a recipe identical to uniform does not get an MDE of 0).

The paired design's MDE (``mde_paired``): ``(t_{0.975,ν} + t_{0.80,ν}) · SE`` with SE and ν those of
the paired difference itself. Pairing by seed and image removes the noise the two arms share, so
it is smaller than the unpaired figure above (which treats the arms as independent); the
comparison design (``evaluate.design_report``) reports both and judges its power by the paired one.

Multiplicity (``holm``): every comparison of one report (recipe × eval set × metric) is one family;
Holm's step-down adjustment of the p-values controls the family-wise error rate at 0.05, and the
verdict reads the adjusted p-value: "better" / "worse" when it is below 0.05 (the sign of d̄ says
which), else "no detectable difference". With fewer than ``MIN_SEEDS`` (5) seeds no verdict is
given at all ("too few seeds").
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

METRICS = ("top1", "head", "tail")
ALPHA = 0.05
MIN_SEEDS = 5
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
TOO_FEW_SEEDS = f"too few seeds (< {MIN_SEEDS}): no verdict"


def t_quantile(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df)) if np.isfinite(df) else float(t.ppf(q, 1e9))


def mde_factor(df: float) -> float:
    """(t_0.975 + t_0.80) at ``df`` degrees of freedom: 2.80 for z, 3.72 at 4, 3.09 at 9."""
    return t_quantile(0.975, df) + t_quantile(0.80, df)


@dataclass(frozen=True)
class PairedResult:
    """One recipe × metric against the reference."""

    metric: str
    seeds: int
    images: int
    recipe_mean: float  # the recipe's metric, mean over seeds
    reference_mean: float
    diff: float  # point estimate: mean over seeds of (recipe − reference)
    ci_low: float
    ci_high: float
    se: float  # two-part SE of the paired difference (seeds + images)
    df: float  # its Welch–Satterthwaite degrees of freedom
    p_value: float  # two-sided, unadjusted
    reference_se: float  # two-part SE of the reference arm's metric
    mde: float  # (t_.975 + t_.8)(ν_ref) · √2 · reference_se
    verdict: str  # from the unadjusted p until ``holm`` adjusts the family
    p_holm: float = float("nan")
    mde_paired: float = float("nan")  # (t_.975 + t_.8)(ν) · se: the paired design's MDE at this recipe's noise

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def verdict(p: float, diff: float, seeds: int) -> str:
    if seeds < MIN_SEEDS:
        return TOO_FEW_SEEDS
    if p == p and p < ALPHA:
        return BETTER if diff > 0 else WORSE
    return NO_DIFFERENCE


def bucket_masks(labels: np.ndarray, buckets: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """``{"top1": all images, name: images whose label is in the bucket's concepts}``."""
    labels = np.asarray(labels)
    masks = {"top1": np.ones(len(labels), dtype=bool)}
    for name, concepts in buckets.items():
        masks[name] = np.isin(labels, np.asarray(list(concepts)))
    return masks


def point_metrics(correct: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each metric of one correctness vector (images,)."""
    c = np.asarray(correct, dtype=np.float64)
    return {m: float(c[mask].mean()) if mask.any() else float("nan") for m, mask in masks.items()}


def two_part_se(x: np.ndarray) -> tuple[float, float, float]:
    """(mean, SE, ν) of the metric of a (seeds, images) array of per-image values: seed term
    s²(row means)/S plus image term s²(column means)/N, Welch–Satterthwaite ν (module doc)."""
    S, N = x.shape
    per_seed = x.mean(axis=1)
    per_image = x.mean(axis=0)
    v_seed = float(per_seed.var(ddof=1)) / S if S > 1 else float("nan")
    v_img = float(per_image.var(ddof=1)) / N if N > 1 else 0.0
    if S < 2:
        return float(per_seed.mean()), float("nan"), float("nan")
    var = v_seed + v_img
    denom = (v_seed ** 2) / (S - 1) + ((v_img ** 2) / (N - 1) if N > 1 else 0.0)
    df = var ** 2 / denom if denom > 0 else float("inf")
    return float(per_seed.mean()), float(np.sqrt(var)), float(df)


def paired_t(recipe: np.ndarray, reference: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, PairedResult]:
    """``recipe``, ``reference``: (seeds, images) per-image correctness, row s of both from seed s
    (paired), the same image order. Returns one ``PairedResult`` per mask (metric)."""
    from scipy.stats import t as t_dist

    a = np.asarray(recipe, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"recipe and reference must be (seeds, images) arrays of one shape; got {a.shape}, {b.shape}")
    n_seeds, n_images = a.shape
    if n_seeds < 1 or n_images < 1:
        raise ValueError("no seeds or no images to compare")
    for name, mask in masks.items():
        if len(mask) != n_images:
            raise ValueError(f"mask {name!r} has {len(mask)} entries for {n_images} images")
    out = {}
    nan = float("nan")
    for m, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            out[m] = PairedResult(m, n_seeds, 0, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, NO_DIFFERENCE)
            continue
        d = a[:, mask] - b[:, mask]
        diff, se, df = two_part_se(d)
        _, ref_se, ref_df = two_part_se(b[:, mask])
        if se == se and se > 0:
            half = t_quantile(0.975, df) * se
            p = float(2 * t_dist.sf(abs(diff) / se, df if np.isfinite(df) else 1e9))
        elif se == 0:
            half, p = 0.0, (1.0 if diff == 0 else 0.0)
        else:
            half, p = nan, nan
        mde = mde_factor(ref_df) * np.sqrt(2.0) * ref_se if ref_se == ref_se else nan
        out[m] = PairedResult(
            metric=m, seeds=n_seeds, images=int(mask.sum()),
            recipe_mean=float(a[:, mask].mean()), reference_mean=float(b[:, mask].mean()),
            diff=diff, ci_low=diff - half, ci_high=diff + half, se=se, df=df, p_value=p,
            reference_se=ref_se, mde=float(mde), verdict=verdict(p, diff, n_seeds),
            mde_paired=float(mde_factor(df) * se) if se == se else nan)
    return out


def holm(results: Sequence[PairedResult]) -> list[PairedResult]:
    """Holm's step-down adjustment over one family; each result gets ``p_holm`` and the verdict
    read from it (results without a p-value are left out of the family)."""
    idx = [i for i, r in enumerate(results) if r.p_value == r.p_value]
    order = sorted(idx, key=lambda i: results[i].p_value)
    m = len(order)
    adjusted: dict[int, float] = {}
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * results[i].p_value))
        adjusted[i] = running
    out = []
    for i, r in enumerate(results):
        p = adjusted.get(i, float("nan"))
        out.append(replace(r, p_holm=p, verdict=verdict(p, r.diff, r.seeds)))
    return out


def mean_ci(values: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float, float]]:
    """One recipe's own metrics (mean, 2.5%, 97.5%) by the same two-part t interval; ``values``
    (seeds, images)."""
    v = np.asarray(values, dtype=np.float64)
    res = paired_t(v, np.zeros_like(v), masks)  # d = v
    return {m: (r.recipe_mean, r.ci_low, r.ci_high) for m, r in res.items()}


# ---------------------------------------------------------------------------------------------
# Uniform at equal compute
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReferencePoint:
    """One point of uniform's accuracy-vs-compute frontier for one seed."""

    compute: float
    correct: np.ndarray  # (images,)
    label: str  # e.g. "uniform-50"


def reference_at(points: Sequence[ReferencePoint], compute: float) -> tuple[np.ndarray, str]:
    """Uniform's per-image correctness at ``compute`` (one seed): linear interpolation in compute
    between the two frontier points that bracket it (exact at a point; clamped to the nearest end
    outside the frontier, which the returned note says). Returns (correctness, note)."""
    if not points:
        raise ValueError("no uniform reference point")
    pts = sorted(points, key=lambda p: p.compute)
    xs = np.array([p.compute for p in pts], dtype=np.float64)
    rel = 1e-6 * max(abs(compute), 1.0)
    for p in pts:
        if abs(p.compute - compute) <= rel:
            return np.asarray(p.correct, dtype=np.float64), p.label
    if compute < xs[0]:
        return np.asarray(pts[0].correct, dtype=np.float64), f"{pts[0].label} (clamped: below the frontier)"
    if compute > xs[-1]:
        return np.asarray(pts[-1].correct, dtype=np.float64), f"{pts[-1].label} (clamped: above the frontier)"
    j = int(np.searchsorted(xs, compute))
    lo, hi = pts[j - 1], pts[j]
    t = (compute - lo.compute) / (hi.compute - lo.compute)
    corr = (1 - t) * np.asarray(lo.correct, dtype=np.float64) + t * np.asarray(hi.correct, dtype=np.float64)
    return corr, f"{lo.label}↔{hi.label} (t={t:.2f})"
