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
    from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource

    root = tmp_path_factory.mktemp("dfn") / "data"
    resources = {"storage": StorageResource(root=str(root)), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(root.parent / "io"))}  # later runs load from it
    result = dg.materialize(ASSETS, resources=resources,
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


# ------------------------------------------------------------------------ trained on the curated set


def _reference(lineage, raw_pairs=None, **config):
    from dynamics_assets.defs.embed.assets import ReferenceModelConfig, reference_model

    result, _, resources = lineage
    ctx = dg.build_asset_context(resources={"storage": resources["storage"], "gpu": resources["gpu"],
                                                  "compute": resources["compute"]})
    return reference_model(ctx, config=ReferenceModelConfig(**config),
                           raw_pairs=raw_pairs or result.output_for_node("raw_pairs")), ctx


def test_reference_model_trained_on_the_curated_set_pins_its_manifest_and_counts_its_compute(lineage):
    """reference_model.train_on: curated — the curated_model's trainer and curated manifest (one
    path), the pool's manifest no longer its input; FLOPs / samples / seconds in the record."""
    result, _, _ = lineage
    pooled = result.output_for_node("reference_model")
    curated = result.output_for_node("curated_model")
    model, ctx = _reference(lineage, epochs=2, batch_size=32, train_on="curated")
    assert model.trained_on == "curated" and model.manifest_dir == curated.manifest_dir
    refs = json.loads((Path(model.checkpoint).parent / "_version.json").read_text())["refs"]
    assert set(refs) == {"curated_manifest"} and refs["curated_manifest"]["id"] == Path(curated.manifest_dir).name
    # the same settings as curated_model on the same set: the same weights, another artefact
    assert Path(model.checkpoint).read_bytes() == Path(curated.checkpoint).read_bytes()
    assert model.checkpoint != curated.checkpoint and Path(model.checkpoint).read_bytes() != Path(pooled.checkpoint).read_bytes()
    assert model.samples_seen == model.steps * 32 == curated.samples_seen and model.flops == curated.flops > 0
    md = ctx.get_output_metadata("result")
    assert md["trained_on"] == "curated" and md["flops"] == model.flops and md["samples_seen"] == model.samples_seen
    # the pool-trained one records its compute too
    assert pooled.trained_on == "pool" and pooled.manifest_dir == result.output_for_node("raw_pairs").manifest_dir
    assert pooled.flops > 0 and pooled.samples_seen > 0


def test_reference_model_on_the_curated_set_without_one_is_refused(lineage):
    import dataclasses

    result, _, _ = lineage
    bare = dataclasses.replace(result.output_for_node("raw_pairs"), curated_dir=None)
    with pytest.raises(dg.Failure, match=r"reference_model: train_on is 'curated' but no curated set .*--curated"):
        _reference(lineage, raw_pairs=bare, train_on="curated")
    with pytest.raises(Exception, match="train_on"):  # neither pool nor curated: refused by the config
        _reference(lineage, train_on="raw")


def test_a_jest_recipe_with_the_curated_reference_scores_with_the_curated_model_and_counts_it_once(
        lineage, monkeypatch, tmp_path):
    """training.reference: curated — the checkpoint's online selection loads curated_model's
    checkpoint (its hash in the epoch's selection identity), and its training FLOPs are the
    eval report's compute/curation_flops, inside compute/total_flops."""
    from dynamics_assets.core.io.hashing import file_sha256
    from dynamics_assets.defs.evaluate import assets as evaluation
    from dynamics_assets.defs.sample import assets as sampling
    from dynamics_assets.defs.tracking import MlflowResource
    from dynamics_assets.defs.train import assets as training

    result, root, resources = lineage
    curated = result.output_for_node("curated_model")
    key = "jest-50.s0"
    monkeypatch.setitem(EXPERIMENTS.recipes, key, Recipe("jest-50", 0, {"strategy": "uniform", "budget": 0.5},
                                                         {"selection": "jest", "filter_ratio": 0.5, "reference": "curated"}))
    epoch = [sampling.sample_plan, training.checkpoint, evaluation.eval_report]
    res = {**resources, "mlflow": MlflowResource(data_root=str(root), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")}
    run = dg.materialize([*ASSETS, *epoch], selection=epoch, resources=res,
                         partition_key=dg.MultiPartitionKey({"recipe": key, "epoch": "epoch-001"}),
                         run_config={"ops": {"checkpoint": {"config": {"batch_size": 16, "checkpoint_every_steps": 0}}}})
    assert run.success
    ck = run.output_for_node("checkpoint", "checkpoint")
    inputs = json.loads((Path(ck.checkpoint).parent / "_version.json").read_text())["meta"]["inputs"]
    assert inputs["selection"]["reference"] == file_sha256(curated.checkpoint) \
        != file_sha256(result.output_for_node("reference_model").checkpoint)
    assert inputs["settings"]["reference"] == "curated"
    md = next(m for m in run.get_asset_materialization_events()
              if m.asset_key == dg.AssetKey("checkpoint")).materialization.metadata
    assert md["reference_checkpoint"].value == curated.checkpoint and md["reference"].value == "curated"
    assert ck.curation_flops == curated.flops > 0 and ck.scoring_flops > 0
    metrics = run.output_for_node("eval_report").metrics
    assert metrics["compute/curation_flops"] == curated.flops
    assert metrics["compute/total_flops"] == pytest.approx(
        metrics["compute/train_flops"] + metrics["compute/scoring_flops"] + curated.flops)


def test_a_curated_reference_without_a_curated_model_is_refused(tmp_path):
    from dynamics_assets.defs.resources import StorageResource
    from dynamics_assets.defs.train.assets import _curated_reference

    with pytest.raises(dg.Failure, match=r"recipe r\.s0: training.reference is 'curated' but there is no curated "
                                         r"model: materialise curated_model .*--curated"):
        _curated_reference(StorageResource(root=str(tmp_path)), "r.s0")


def test_main_command_reference_on_curated_sets_train_on_and_needs_a_curated_set():
    from dynamics_assets.pipeline import InputError, build_parser, check_pool_inputs

    args = build_parser().parse_args(["--reference-on", "curated", "--curated", "synthetic"])
    ops, _ = check_pool_inputs(args)
    assert ops["reference_model"] == {"train_on": "curated"} and ops["raw_shards"]["curated"] == "synthetic"
    assert "reference_model" not in check_pool_inputs(build_parser().parse_args(["--curated", "synthetic"]))[0]
    with pytest.raises(InputError, match="--reference-on curated: no curated set .*--curated DIR"):
        check_pool_inputs(build_parser().parse_args(["--reference-on", "curated"]))
