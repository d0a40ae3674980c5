"""Probes over a recipe's sampler settings in experiments.yaml: every value outside its range is
refused when the code location loads (``import dynamics_assets.definitions`` with
``DYNAMICS_EXPERIMENTS`` pointing at the file), naming the file, the recipe, the setting and its
range — not later, when a plan is drawn."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_code_location(experiments: Path) -> subprocess.CompletedProcess:
    """A fresh interpreter loading the code location as ``dagster dev`` / ``dg check defs`` do."""
    env = {**os.environ, "DYNAMICS_EXPERIMENTS": str(experiments)}
    return subprocess.run([sys.executable, "-c", "import dynamics_assets.definitions"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("sampler, message", [
    ("{strategy: dynamics, budget: 0.5, alpha: 1.5}",
     "recipe 'bad': sampler.alpha: 1.5 is outside its range: strategy 'dynamics': alpha must lie in [0, 1], got 1.5"),
    ("{strategy: learnability, budget: 0.5, kappa: -1}",
     "recipe 'bad': sampler.kappa: -1 is outside its range: strategy 'learnability': need beta ≥ 0, z_max > 0, "
     "kappa ≥ 0"),
    ("{strategy: dbp, budget: 0.5, tau: 0}",
     "recipe 'bad': sampler.tau: 0 is outside its range: strategy 'dbp': tau must be > 0, got 0"),
    ("{strategy: compose, steps: [{strategy: semdedup, epsilon: 1.0}, {strategy: uniform, budget: 0.5}]}",
     "recipe 'bad': sampler.steps[0].epsilon: 1.0 is outside its range: strategy 'semdedup': "
     "epsilon must lie in [0, 1), got 1.0"),
    ("{strategy: flatten, t: 0}",
     "recipe 'bad': sampler.t: 0 is outside its range: strategy 'flatten': the cap t must be an integer ≥ 1, got 0"),
], ids=["dynamics-alpha-1.5", "learnability-kappa--1", "dbp-tau-0", "compose-semdedup-epsilon-1", "flatten-t-0"])
def test_out_of_range_sampler_setting_is_refused_when_the_code_location_loads(tmp_path, sampler, message, record):
    """experiments.yaml with a sampler setting outside its range"""
    path = tmp_path / "experiments.yaml"
    path.write_text(f"default_recipe: ok\nrecipes:\n  ok: {{sampler: {{strategy: uniform, budget: 1.0}}}}\n"
                    f"  bad: {{sampler: {sampler}}}\n")
    out = load_code_location(path)
    assert out.returncode != 0, "the code location loaded with the bad setting"
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("dynamics_assets.core.sample.spec.SettingError: ") and f"{path}: {message}" in last, last
    record(f"refused at load: '{message.split(': ', 1)[1]}'")


def test_lineage_filled_settings_are_not_read_when_the_code_location_loads(tmp_path, record):
    """Filters whose lineage-filled file does not exist yet, beside an out-of-range filter value"""
    path = tmp_path / "experiments.yaml"
    recipes = ("recipes:\n"
               "  text: {sampler: {strategy: text_filter}}\n"
               "  image: {sampler: {strategy: image_filter, target_embeddings: not/made/yet.npy}}\n"
               "  dfn: {sampler: {strategy: compose, steps: [{strategy: dfn, fraction: 0.3}, "
               "{strategy: dynamics, budget: 0.5, alpha: 0.2}]}}\n")
    path.write_text(recipes)
    assert load_code_location(path).returncode == 0
    path.write_text(recipes + "  bad: {sampler: {strategy: compose, steps: [{strategy: dfn, fraction: 0.3}, "
                              "{strategy: dynamics, budget: 0.5, alpha: -0.1}]}}\n")
    out = load_code_location(path)
    message = ("recipe 'bad': sampler.steps[1].alpha: -0.1 is outside its range: strategy 'dynamics': "
               "alpha must lie in [0, 1], got -0.1")
    assert out.returncode != 0 and f"{path}: {message}" in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    record(f"loads (files left to the lineage, not read); the step beside it refused at load: '{message}'")
