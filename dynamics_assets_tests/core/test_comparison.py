"""The comparison report: interpolation at equal samples / compute, seeds aggregated, incomplete runs left out."""
from __future__ import annotations

import json

import pytest

from dynamics_assets.core.evaluate.comparison import collect_reports, compare, write_comparison


def write(root, recipe, epoch, samples, flops, top1, tail):
    d = root / recipe / f"epoch-{epoch:03d}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "zero_shot/top1": top1, "zero_shot/tail": tail, "zero_shot/head": top1, "zero_shot/middle": top1,
        "zero_shot/mean_per_class": top1, "retrieval/i2t_r1": 0.1, "compute/samples_seen": samples,
        "compute/total_flops": flops, "compute/device_seconds": 1.0}))


def test_equal_samples_and_compute_interpolate_and_average_seeds(tmp_path):
    # "full" sees 200 samples per epoch, "half" 100; two seeds of half, one of full.
    for e in (1, 2):
        write(tmp_path, "full.s0", e, 200 * e, 2000 * e, 0.2 * e, 0.1 * e)
        write(tmp_path, "half.s0", e, 100 * e, 1000 * e, 0.3 * e, 0.2 * e)
        write(tmp_path, "half.s1", e, 100 * e, 1000 * e, 0.1 * e, 0.2 * e)
    write(tmp_path, "half.s2", 1, 100, 1000, 0.9, 0.9)  # incomplete: left out
    c = compare(collect_reports(tmp_path), recipe_order=["full", "half"])
    assert c.s_star == 200 and c.f_star == 2000
    full, half = c.rows
    assert full["seeds"] == 1 and half["seeds"] == 2
    assert full["samples/top1"][0] == pytest.approx(0.2)  # full's epoch 1
    assert half["samples/top1"][0] == pytest.approx(0.4)  # mean of 0.6 and 0.2 at epoch 2
    assert half["samples/top1"][1] == pytest.approx(0.2828, abs=1e-3)  # sample sd of (0.6, 0.2)
    assert half["final/tail"][0] == pytest.approx(0.4)
    assert "half.s2" in c.markdown
    paths = write_comparison(c, tmp_path / "out")
    assert paths["png"].stat().st_size > 0 and "equal compute" in paths["md"].read_text()
