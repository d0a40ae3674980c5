"""The comparison design (issue 20): the negative-control sampler, the LiT learner, the pool gate,
controls in the report, resumption, and a user's pool without ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.evaluate.design import DesignConfig, Recipe, cluster_pool, gate_grid, plan_tail_lift, run_design
from dynamics_assets.core.sample.base import ClusterPool
from dynamics_assets.core.sample.registry import make_sampler

SIZES = [100, 50, 30, 20, 10, 5, 5, 3, 2, 1]


def _pool():
    return ClusterPool.from_array(np.repeat(np.arange(len(SIZES)), SIZES).astype(np.int32), len(SIZES))


def test_drop_smallest_removes_the_smallest_clusters_and_keeps_the_budget_exact():
    pool = _pool()
    sampler = make_sampler("drop_smallest", budget=0.5, drop=0.3)
    plans = [sampler.draw(pool, epoch=e, seed=4) for e in range(3)]
    ids = np.repeat(np.arange(len(SIZES)), SIZES)
    for plan in plans:
        assert plan.size == round(0.5 * sum(SIZES))
        assert set(ids[plan.indices]) <= set(range(7))  # the 3 smallest (sizes 3, 2, 1) never drawn
        assert (plan.multiplicity == 1).all()
    assert not np.array_equal(plans[0].indices, plans[1].indices)  # redrawn every epoch
    again = make_sampler("drop_smallest", budget=0.5, drop=0.3).draw(pool, epoch=0, seed=4)
    assert np.array_equal(again.indices, plans[0].indices)
    with pytest.raises(ValueError, match="drop"):
        make_sampler("drop_smallest", drop=1.0)
    with pytest.raises(ValueError, match="exceeds"):
        make_sampler("drop_smallest", budget=0.99, drop=0.5).draw(pool, epoch=0, seed=0)


def test_plan_tail_lift_is_one_for_uniform_and_above_one_when_small_clusters_are_upweighted():
    pool = _pool()
    ids = np.repeat(np.arange(len(SIZES)), SIZES)
    is_tail = ids >= 7  # the three smallest clusters
    uniform = [(p.indices.astype(np.int64), p.multiplicity.astype(np.int64)) for p in
               (make_sampler("uniform", budget=1.0).draw(pool, epoch=e, seed=0) for e in range(2))]
    dyn = [(p.indices.astype(np.int64), p.multiplicity.astype(np.int64)) for p in
           (make_sampler("dynamics", budget=0.5, alpha=0.2, mode="exact").draw(pool, epoch=e, seed=0) for e in range(2))]
    drop = [(p.indices.astype(np.int64), p.multiplicity.astype(np.int64)) for p in
            (make_sampler("drop_smallest", budget=0.5, drop=0.3).draw(pool, epoch=e, seed=0) for e in range(2))]
    assert plan_tail_lift(uniform, None, is_tail) == pytest.approx(1.0)
    assert plan_tail_lift(dyn, None, is_tail) > 1.5
    assert plan_tail_lift(drop, None, is_tail) == 0.0


def test_recipes_are_checked_when_the_design_is_read(tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        Recipe.from_spec("bad", {"strategy": "dynamics", "budget": 0.5, "alpha": 1.5})
    with pytest.raises(ValueError, match="clusters"):
        Recipe.from_spec("bad", {"strategy": "uniform", "clusters": "labels"})
    with pytest.raises(ValueError, match="control"):
        Recipe.from_spec("bad", {"strategy": "uniform", "control": "maybe"})


def test_secondary_recipes_run_only_when_named(tmp_path):
    import yaml
    path = _design(tmp_path, RECIPES)
    spec = yaml.safe_load(path.read_text())
    spec["secondary"] = ["uniform-100"]
    path.write_text(yaml.safe_dump(spec))
    primary = [r.name for r in DesignConfig.from_yaml(path).recipes]
    assert "uniform-100" not in primary and set(primary) == set(RECIPES) - {"uniform-100"}
    assert [r.name for r in DesignConfig.from_yaml(path, recipes=["uniform-100"]).recipes] == ["uniform-100"]
    spec["secondary"] = ["nope"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="secondary"):
        DesignConfig.from_yaml(path)
    shipped = DesignConfig.from_yaml(Path(__file__).resolve().parents[3] / "data" / "design.yaml")
    assert len(shipped.seeds) >= 10 and {r.control for r in shipped.recipes} >= {"positive", "negative"}


def test_calibrated_merge_reports_its_threshold_and_never_grows_k():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    x = np.concatenate([c + 0.05 * rng.normal(size=(200, 16)) for c in centres]).astype(np.float16)
    plain = cluster_pool(x, k=12, merge=None)
    merged = cluster_pool(x, k=12, merge="calibrated")
    assert plain.n_clusters == 12 and plain.merge_threshold is None
    assert 0 < merged.merge_threshold < 1 and "calibrated" in merged.calibration
    assert merged.n_clusters < 12
    assert len(np.unique(merged.ids)) <= merged.n_clusters


def test_lit_learner_is_seeded_and_learns_a_separable_task():
    from dynamics_assets.core.train.lit import LitSettings, tokenize, train_lit
    rng = np.random.default_rng(1)
    names = ["red", "blue", "green", "black"]
    centres = rng.normal(size=(4, 32)) * 3
    labels = rng.integers(0, 4, 384)
    feats = (centres[labels] + rng.normal(size=(384, 32))).astype(np.float16)
    tokens = tokenize([f"a {names[c]} thing" for c in labels], 8)
    ev_labels = rng.integers(0, 4, 200)
    ev = (centres[ev_labels] + rng.normal(size=(200, 32))).astype(np.float16)
    ctok = np.stack([tokenize([f"a {n} thing"], 8) for n in names])
    s = LitSettings(embed_dim=16, text_width=32, text_heads=2, text_layers=1, context_length=8, batch_size=32,
                    warmup_steps=5, lr=5e-3)
    plans = [(np.arange(384), np.ones(384, np.int64))] * 3
    a = train_lit(feats, tokens, plans, ev, ev_labels, ctok, s, seed=3)
    b = train_lit(feats, tokens, plans, ev, ev_labels, ctok, s, seed=3)
    assert np.array_equal(a.correct, b.correct) and a.final_loss == b.final_loss
    assert a.steps == 3 * 12 and a.samples_seen == 3 * 12 * 32
    assert a.correct.mean() > 0.6  # chance is 0.25


def _design(tmp_path: Path, recipes: dict, seeds: int = 2, epochs: int = 2) -> Path:
    import yaml
    spec = {"pool": {"pairs": 1200, "seed": 5, "profile": "web", "eval_per_concept": 2, "samples_per_shard": 600},
            "clusters": {"k": 12, "merge": "calibrated"},
            "learner": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "warmup_steps": 5, "embed_dim": 32,
                        "text_width": 32, "text_heads": 2, "text_layers": 1, "context_length": 16},
            "seeds": seeds, "primary": "dynamics-exact-50", "recipes": recipes}
    path = tmp_path / "design.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


RECIPES = {
    "uniform-100": {"strategy": "uniform", "budget": 1.0},
    "uniform-50": {"strategy": "uniform", "budget": 0.5},
    "dynamics-exact-50": {"strategy": "dynamics", "budget": 0.5, "alpha": 0.2, "mode": "exact"},
    "oracle-exact-50": {"strategy": "dynamics", "budget": 0.5, "alpha": 0.2, "mode": "exact",
                        "clusters": "concepts", "control": "positive"},
    "drop-tail-50": {"strategy": "drop_smallest", "budget": 0.5, "drop": 0.2, "clusters": "concepts",
                     "control": "negative"},
}


def test_design_runs_resumes_and_reports_controls_and_gate_first(tmp_path, capsys):
    config = DesignConfig.from_yaml(_design(tmp_path, RECIPES))
    out = tmp_path / "out"
    assert run_design(out, config, progress=None, part=(1, 2)) is None  # one of two processes: no report
    assert len(list((out / "runs").glob("*.npz"))) == 5 and not (out / "report.md").exists()
    summary = run_design(out, config, progress=None)
    report = (out / "report.md").read_text()
    assert report.index("Pool gate") < report.index("## Controls") < report.index("## Recipes")
    assert summary["controls"]["positive_recipe"] == "oracle-exact-50"
    assert summary["controls"]["negative_recipe"] == "drop-tail-50"
    assert summary["controls"]["rule"].startswith("too few seeds")  # 2 seeds: no verdicts
    lifts = summary["gate"]["lifts"]
    assert lifts["uniform-100"] == pytest.approx(1.0, abs=0.02)
    assert lifts["oracle-exact-50"] > lifts["uniform-50"]
    assert lifts["drop-tail-50"] < min(0.7, lifts["uniform-50"])  # the smallest concepts removed
    assert summary["gate"]["flagged"] == (lifts["dynamics-exact-50"] < 1.5)
    assert summary["pool"]["input_pairs"] == 1200  # every input pair accounted for
    rows = {r["recipe"]: r for r in summary["table"]}
    assert rows["dynamics-exact-50"]["allin_x_full"] > rows["dynamics-exact-50"]["train_x_full"]  # curation counted
    assert rows["oracle-exact-50"]["allin_x_full"] == rows["oracle-exact-50"]["train_x_full"]
    assert rows["dynamics-exact-50"]["equal_training"]["reference"] == "uniform-50"
    runs = sorted((out / "runs").glob("*.npz"))
    assert len(runs) == 10
    mtimes = {p: p.stat().st_mtime_ns for p in runs}
    again = run_design(out, config, progress=None)  # resumes: no run is trained again
    assert {p: p.stat().st_mtime_ns for p in runs} == mtimes
    assert json.loads((out / "report.json").read_text())["seeds"] == 2
    assert again["table"][0]["metrics"] == summary["table"][0]["metrics"]
    # the gate over a grid of clusterings: no training, the design's own setting marked, the oracle once
    grid = gate_grid(out, config, progress=None, k_factors=(0.5, 1.0), merges=(None, "calibrated"))
    assert [(r["k"], r["merge"]) for r in grid] == [(6, "none"), (6, "calibrated"), (12, "none"), (12, "calibrated")]
    assert [r["design"] for r in grid] == [False, False, False, True]
    assert all(set(r["lift"]) == {"dynamics-exact-50"} for r in grid)
    design_row = grid[-1]
    assert design_row["lift"]["dynamics-exact-50"] == pytest.approx(lifts["dynamics-exact-50"])
    assert len(list((out / "runs").glob("*.npz"))) == 10
    text = (out / "gate_grid.md").read_text()
    assert "| 12 * | calibrated |" in text and "Oracle" in text
    saved = json.loads((out / "gate_grid.json").read_text())
    assert saved["oracle"]["oracle-exact-50"] == pytest.approx(lifts["oracle-exact-50"])


def test_design_on_a_users_pool_without_ground_truth_leaves_the_oracle_out(tmp_path):
    from dynamics_assets.core.evaluate.report import load_eval_set
    from dynamics_assets.core.ingest.synthetic import generate
    ds = generate(tmp_path / "gen", pairs=900, seed=2, samples_per_shard=450, eval_per_concept=2)
    source = tmp_path / "mine"
    source.mkdir()
    for shard in ds.shards:  # the user's shards only: no ground truth beside them
        (source / shard.name).write_bytes(shard.read_bytes())
    es = load_eval_set(ds.eval_dir)
    folder = tmp_path / "labelled"
    frequent = np.asarray(es.train_frequency) >= 20  # classes the pool's captions name often enough for a tail
    for i in range(len(es)):
        if not frequent[int(es.labels[i])]:
            continue
        name = es.prompt_names[int(es.labels[i])][0]
        (folder / name).mkdir(parents=True, exist_ok=True)
        es.image(i).save(folder / name / f"{i}.png")
    config = DesignConfig.from_yaml(_design(tmp_path, RECIPES), seeds=1)
    summary = run_design(tmp_path / "out", config, source=str(source), eval_dir=str(folder), progress=None)
    assert set(summary["skipped"]) == {"oracle-exact-50", "drop-tail-50"}
    assert "ground_truth" in summary["pool"]["notes"] and "caption_classes" in summary["pool"]["notes"]
    assert summary["gate"]["lifts"]["uniform-100"] == pytest.approx(1.0, abs=0.05)  # measured on the captions
    assert "purity" not in summary["structure"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Left out" in report and "oracle-exact-50" in report


def test_the_comparison_design_is_a_dagster_asset(tmp_path):
    import dagster as dg

    from dynamics_assets.defs.evaluate.design import comparison_design
    from dynamics_assets.defs.resources import StorageResource
    recipes = {k: RECIPES[k] for k in ("uniform-100", "uniform-50", "dynamics-exact-50")}
    design = _design(tmp_path, recipes, seeds=1, epochs=1)
    result = dg.materialize_to_memory(
        [comparison_design], resources={"storage": StorageResource(root=str(tmp_path / "data"))},
        run_config={"ops": {"comparison_design": {"config": {"design": str(design)}}}})
    assert result.success
    meta = result.asset_materializations_for_node("comparison_design")[0].metadata
    assert "Pool gate" in meta["report"].value and meta["seeds"].value == 1
    assert (tmp_path / "data" / "artifacts" / "comparison_design" / "report.json").exists()


def test_caption_classes_need_exactly_one_named_class():
    from dynamics_assets.core.evaluate.design import caption_classes
    names = [["cat", "kitty"], ["dog"], ["red fox"]]
    got = caption_classes(["two cats", "a Dog barking", "a cat and a dog", "the red foxes", "a fox", ""], names)
    assert got.tolist() == [0, 1, -1, 2, -1, -1]


def test_runs_are_keyed_by_the_evaluation_set(tmp_path):
    """A run evaluated on one set is not reused for another (same pool, same recipe and seed)."""
    from dynamics_assets.core.evaluate.design import Clustering, run_key
    c = Clustering(np.zeros(3, np.int32), 1, 1, None, "no merge", 0.0)
    r = Recipe.from_spec("u", {"strategy": "uniform", "budget": 1.0})
    assert run_key(r, 0, 1, {}, "pool", c, eval_identity="a") != run_key(r, 0, 1, {}, "pool", c, eval_identity="b")
