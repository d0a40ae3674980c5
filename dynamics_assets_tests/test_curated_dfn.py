"""Issue 21 items 2–4: a curated set (the synthetic pool's clean set), the curated model trained on
it, the data filtering network's scores of the pool, and dfn / DataComp-baseline plans drawn through
the lineage with what the recipe leaves out filled in."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.experiments import EXPERIMENTS, Recipe
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.sample.assets import sample_plan
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

ASSETS = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
          clustering.clusters, embeddings.curated_model, embeddings.dfn_scores, embeddings.curation_targets]


def _config(**raw) -> dict:
    ops = {k: {"config": dict(v["config"])} for k, v in TINY_RUN_CONFIG["ops"].items() if k != "cluster_stats"}
    ops["raw_shards"]["config"].update(raw)
    ops["curated_model"] = {"config": {"epochs": 2, "batch_size": 32}}
    return {"ops": ops}


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    from dynamics_assets.defs.resources import GpuResource, StorageResource

    root = tmp_path_factory.mktemp("dfn") / "data"
    resources = {"storage": StorageResource(root=str(root)), "gpu": GpuResource(device="cpu")}
    result = dg.materialize_to_memory(ASSETS, resources=resources,
                                      run_config=_config(curated="synthetic", curated_per_concept=2))
    assert result.success
    return result, root, resources


def _plan(lineage, monkeypatch, name: str, sampler: dict):
    result, _, resources = lineage
    recipe = Recipe(name, 0, sampler)
    monkeypatch.setitem(EXPERIMENTS.recipes, recipe.key, recipe)
    key = dg.MultiPartitionKey({"recipe": recipe.key, "epoch": "epoch-001"})
    ctx = dg.build_asset_context(partition_key=key, resources={"storage": resources["storage"]})
    return sample_plan(ctx, clusters=result.output_for_node("clusters"))


def test_curated_model_trains_on_the_curated_set_and_counts_its_compute(lineage):
    result, root, _ = lineage
    model = result.output_for_node("curated_model")
    assert model.checkpoint and Path(model.checkpoint).is_file()
    assert model.pairs == 240  # 120 concepts × 2, clean: nothing quarantined
    assert model.steps > 0 and model.samples_seen == model.steps * 32 and model.flops > 0
    version = json.loads((Path(model.checkpoint).parent / "_version.json").read_text())
    assert "curated_manifest" in json.dumps(version), "the lineage records which curated set trained it"
    md = result.asset_materializations_for_node("curated_model")[0].metadata
    assert md["flops"].value == model.flops and md["samples_seen"].value == model.samples_seen


def test_dfn_scores_every_pool_pair_and_reports_filter_quality_apart_from_zero_shot(lineage):
    result, _, _ = lineage
    record = result.output_for_node("dfn_scores")
    n_ok = result.output_for_node("raw_pairs").n_ok
    scores = np.load(Path(record.scores_dir) / "scores.npy")
    assert record.n == n_ok == len(scores) and scores.dtype == np.float32
    assert np.all((scores >= -1.0001) & (scores <= 1.0001) | (scores == -2.0))
    md = result.asset_materializations_for_node("dfn_scores")[0].metadata
    auc = md["filter/auc_clean_vs_misaligned"].value
    assert 0.0 <= auc <= 1.0 and md["filter/misaligned_pairs"].value > 0
    assert 0.0 <= md["model/zero_shot_top1"].value <= 1.0 and md["model/zero_shot_classes"].value == 120
    quality = json.loads((Path(record.scores_dir) / "filter_quality.json").read_text())
    assert quality["clean_pairs"] + quality["misaligned_pairs"] <= n_ok


def test_a_dfn_recipe_keeps_the_top_fraction_of_the_lineage_scores(lineage, monkeypatch):
    result, _, _ = lineage
    plan = _plan(lineage, monkeypatch, "dfn-test", {"strategy": "dfn", "fraction": 0.3})
    n_ok = result.output_for_node("raw_pairs").n_ok
    scores = np.load(Path(result.output_for_node("dfn_scores").scores_dir) / "scores.npy")
    indices = np.load(Path(plan.plan_dir) / "indices.npy")
    cluster_id = np.load(Path(result.output_for_node("clusters").clusters_dir) / "cluster_id.npy")
    valid = np.flatnonzero(cluster_id >= 0)
    expected = valid[np.argsort(-scores[valid], kind="stable")[:round(0.3 * len(valid))]]
    assert plan.realised == round(0.3 * len(valid)) <= n_ok
    assert set(indices.tolist()) == set(expected.tolist())


def test_baselines_get_the_pool_concepts_and_the_curated_targets_filled_in(lineage, monkeypatch):
    result, _, _ = lineage
    targets = result.output_for_node("curation_targets")
    assert targets.classnames and "red triangle" in Path(targets.classnames).read_text().splitlines()
    emb = np.load(targets.target_embeddings)
    assert emb.shape == (240, result.output_for_node("pair_embeddings").dim)  # the curated images, pool encoder
    text = _plan(lineage, monkeypatch, "text-test", {"strategy": "text_filter", "language": None})
    meta = json.loads((Path(text.plan_dir) / "plan.json").read_text())
    assert meta["params"]["classnames"] == targets.classnames
    assert 0 < text.realised < result.output_for_node("raw_pairs").n_ok  # mismatched / empty captions fail
    image = _plan(lineage, monkeypatch, "image-test", {"strategy": "image_filter", "language": None,
                                                       "min_words": 0, "min_chars": 0})
    assert json.loads((Path(image.plan_dir) / "plan.json").read_text())["params"]["target_embeddings"] \
        == targets.target_embeddings


def test_without_a_curated_set_the_dfn_recipe_is_refused_naming_what_provides_it(tmp_path, monkeypatch):
    from dynamics_assets.defs.resources import StorageResource
    from dynamics_assets.defs.sample.assets import lineage_filled

    with pytest.raises(dg.Failure, match=r"recipe r: dfn.scores is not set .* --curated"):
        lineage_filled({"strategy": "compose", "steps": [{"strategy": "dfn"}, {"strategy": "uniform", "budget": 1.0}]},
                       StorageResource(root=str(tmp_path)), "r")
