"""Paired statistics for the comparison: a recipe against uniform at equal compute, per metric,
with a two-stage bootstrap over seeds and evaluation images (numpy only).

Inputs are per-image outcomes: for every (recipe, seed) a vector ``correct`` over the *same*
evaluation images (1.0 / 0.0 zero-shot top-1 correctness, or a fraction when interpolated between
two checkpoints), plus the image ``labels`` and the concept buckets (head / tail) they fall in.

Metrics (``METRICS``): ``top1`` = mean over images; ``head`` / ``tail`` = mean over the images of the
head / tail concepts (the eval set is balanced per concept, so this equals the mean per-class
accuracy of the bucket at the point estimate).

Paired difference: ``d = metric(recipe) − metric(reference)``, the reference being uniform at the
recipe's compute (``reference_at``), both read on the same seed and the same images.

Two-stage bootstrap (``paired_bootstrap``): each replicate draws S seeds with replacement out of the
S common seeds, and for every drawn seed draws the N images with replacement (one multinomial
draw, shared by recipe and reference: paired); the replicate's difference is the mean over the
drawn seeds of the bucket means of the per-image differences. The 95% interval is the 2.5 / 97.5
percentiles of the replicates. It captures both sources of noise a reviewer asks about: training
seed (between-seed variance) and the finite evaluation set (image sampling).

Minimum detectable effect of the design: ``(z_0.975 + z_0.8) · √2 · SE_ref`` with SE_ref the
two-stage bootstrap standard error of the reference (uniform) arm's metric — its between-seed plus
eval-image variance at S seeds and N images — and √2 for the difference of two such arms: the true
difference this design detects with 80% power at two-sided α = 0.05. It is a property of the design
and of uniform's noise, not of the observed difference (so a recipe identical to uniform does not
get an MDE of 0), and conservative: it ignores the variance the image pairing removes (the paired
bootstrap SE of each recipe's difference is kept as ``se``).

Verdict: "better" when the whole interval lies above 0, "worse" when below, else
"no detectable difference".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

METRICS = ("top1", "head", "tail")
Z_975 = 1.959963984540054
Z_80 = 0.8416212335729143
MDE_FACTOR = Z_975 + Z_80  # ≈ 2.80
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"


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
    se: float  # bootstrap SD of the paired difference
    reference_se: float  # bootstrap SD of the reference arm's metric
    mde: float  # (z_.975 + z_.8) · √2 · reference_se
    verdict: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def verdict(ci_low: float, ci_high: float) -> str:
    if ci_low > 0:
        return BETTER
    if ci_high < 0:
        return WORSE
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


def paired_bootstrap(recipe: np.ndarray, reference: np.ndarray, masks: Mapping[str, np.ndarray], *,
                     n_boot: int = 2000, seed: int = 0, chunk: int = 250) -> dict[str, PairedResult]:
    """``recipe``, ``reference``: (seeds, images) per-image correctness, row s of both from seed s
    (paired), the same image order. Returns one ``PairedResult`` per mask (metric)."""
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
    d = a - b
    rng = np.random.default_rng(seed)
    names = list(masks)
    M = np.stack([np.asarray(masks[m], dtype=np.float64) for m in names])  # (metrics, images)
    reps = np.empty((len(names), n_boot))
    ref_reps = np.empty((len(names), n_boot))
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        seed_draw = rng.integers(0, n_seeds, size=(k, n_seeds))  # (k, S) stage 1: seeds
        # stage 2: images, a fresh multinomial draw for every drawn seed (shared by both arms)
        w = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=(k, n_seeds)).astype(np.float64)
        dd = d[seed_draw]  # (k, S, N)
        num = np.einsum("ksn,mn->mks", w * dd, M)  # (metrics, k, S)
        ref_num = np.einsum("ksn,mn->mks", w * b[seed_draw], M)
        den = np.einsum("ksn,mn->mks", w, M)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps[:, done:done + k] = np.nanmean(num / den, axis=2)
            ref_reps[:, done:done + k] = np.nanmean(ref_num / den, axis=2)
        done += k
    out = {}
    for i, m in enumerate(names):
        mask = np.asarray(masks[m], dtype=bool)
        r = reps[i][~np.isnan(reps[i])]
        if not mask.any() or r.size == 0:
            nan = float("nan")
            out[m] = PairedResult(m, n_seeds, n_images, nan, nan, nan, nan, nan, nan, nan, nan, NO_DIFFERENCE)
            continue
        lo, hi = (float(x) for x in np.percentile(r, [2.5, 97.5]))
        se = float(r.std(ddof=1)) if r.size > 1 else 0.0
        rr = ref_reps[i][~np.isnan(ref_reps[i])]
        ref_se = float(rr.std(ddof=1)) if rr.size > 1 else 0.0
        out[m] = PairedResult(
            metric=m, seeds=n_seeds, images=int(mask.sum()),
            recipe_mean=float(a[:, mask].mean()), reference_mean=float(b[:, mask].mean()),
            diff=float(d[:, mask].mean(axis=1).mean()), ci_low=lo, ci_high=hi, se=se,
            reference_se=ref_se, mde=float(MDE_FACTOR * np.sqrt(2.0) * ref_se),
            verdict=verdict(lo, hi))
    return out


def mean_ci(values: np.ndarray, masks: Mapping[str, np.ndarray], *, n_boot: int = 2000,
            seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """One recipe's own metrics (mean, 2.5%, 97.5%) by the same two-stage bootstrap; ``values``
    (seeds, images)."""
    v = np.asarray(values, dtype=np.float64)
    res = paired_bootstrap(v, np.zeros_like(v), masks, n_boot=n_boot, seed=seed)  # d = v
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
