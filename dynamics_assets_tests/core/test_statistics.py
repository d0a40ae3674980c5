"""The comparison's paired statistics: known answers on synthetic per-image outcomes."""
import numpy as np
import pytest

from dynamics_assets.core.evaluate import statistics as st


def _outcomes(rng, p_images, seed_sd, n_seeds, shift=0.0):
    """(seeds, images) 0/1 correctness: image difficulty p_images, a per-seed offset, plus shift."""
    offs = rng.normal(0, seed_sd, size=(n_seeds, 1))
    p = np.clip(p_images[None, :] + offs + shift, 0, 1)
    return (rng.random(p.shape) < p).astype(np.float64)


def _masks(n):
    labels = np.arange(n) % 100
    return st.bucket_masks(labels, {"head": range(0, 20), "tail": range(80, 100)})


def test_large_effect_is_detected_and_zero_effect_is_not():
    rng = np.random.default_rng(1)
    n = 1000
    p = rng.uniform(0.1, 0.6, n)
    masks = _masks(n)
    ref = _outcomes(rng, p, 0.01, 5)
    better = _outcomes(rng, p, 0.01, 5, shift=0.15)
    res = st.paired_bootstrap(better, ref, masks, n_boot=500)
    assert res["top1"].verdict == st.BETTER
    assert res["top1"].ci_low > 0.05 and abs(res["top1"].diff - 0.15) < 0.04
    worse = st.paired_bootstrap(ref, better, masks, n_boot=500)
    assert worse["top1"].verdict == st.WORSE
    same = st.paired_bootstrap(ref, ref, masks, n_boot=200)
    assert same["top1"].diff == 0 and same["top1"].verdict == st.NO_DIFFERENCE
    # the MDE is (z.975 + z.8)·√2 × the reference arm's bootstrap SE, the same for any recipe
    r = res["tail"]
    assert r.mde == pytest.approx(st.MDE_FACTOR * np.sqrt(2) * r.reference_se) and r.images == 200
    assert same["top1"].mde > 0 and same["top1"].mde == pytest.approx(res["top1"].mde, rel=0.3)


def test_seed_noise_widens_the_interval():
    rng = np.random.default_rng(2)
    n = 600
    p = rng.uniform(0.2, 0.5, n)
    masks = _masks(n)
    quiet = st.paired_bootstrap(_outcomes(rng, p, 0.0, 5), _outcomes(rng, p, 0.0, 5), masks, n_boot=400)
    noisy = st.paired_bootstrap(_outcomes(rng, p, 0.08, 5), _outcomes(rng, p, 0.08, 5), masks, n_boot=400)
    assert noisy["top1"].se > 1.5 * quiet["top1"].se


def test_interval_coverage_on_synthetic_designs():
    """The 95% interval covers the true difference in roughly 95% of simulated designs."""
    rng = np.random.default_rng(3)
    n, true = 300, 0.05
    masks = {"top1": np.ones(n, dtype=bool)}
    covered = 0
    trials = 60
    for t in range(trials):
        p = rng.uniform(0.2, 0.6, n)  # a fresh eval set each time: image sampling is part of the truth
        a = _outcomes(rng, p, 0.03, 5, shift=true)
        b = _outcomes(rng, p, 0.03, 5)
        r = st.paired_bootstrap(a, b, masks, n_boot=300, seed=t)["top1"]
        covered += r.ci_low <= true <= r.ci_high
    assert 0.8 <= covered / trials <= 1.0  # percentile bootstrap with 5 seeds runs a little narrow


def test_same_seed_same_interval_and_shape_errors():
    rng = np.random.default_rng(4)
    a = (rng.random((3, 50)) < 0.4).astype(float)
    b = (rng.random((3, 50)) < 0.3).astype(float)
    m = {"top1": np.ones(50, bool)}
    assert st.paired_bootstrap(a, b, m, n_boot=100, seed=7) == st.paired_bootstrap(a, b, m, n_boot=100, seed=7)
    with pytest.raises(ValueError, match="one shape"):
        st.paired_bootstrap(a, b[:2], m)
    with pytest.raises(ValueError, match="mask"):
        st.paired_bootstrap(a, b, {"top1": np.ones(49, bool)})


def test_reference_at_interpolates_exactly_and_clamps():
    lo = st.ReferencePoint(1.0, np.array([0.0, 0.0, 1.0]), "uniform-50")
    hi = st.ReferencePoint(3.0, np.array([1.0, 0.0, 1.0]), "uniform-100")
    c, note = st.reference_at([hi, lo], 1.0)
    assert note == "uniform-50" and c.tolist() == [0, 0, 1]
    c, note = st.reference_at([lo, hi], 2.5)
    assert c.tolist() == [0.75, 0, 1] and "t=0.75" in note
    c, note = st.reference_at([lo, hi], 5.0)
    assert c.tolist() == [1, 0, 1] and "clamped" in note
    with pytest.raises(ValueError):
        st.reference_at([], 1.0)


def test_verdict_rule():
    assert st.verdict(0.01, 0.2) == st.BETTER
    assert st.verdict(-0.2, -0.01) == st.WORSE
    assert st.verdict(-0.01, 0.2) == st.NO_DIFFERENCE
