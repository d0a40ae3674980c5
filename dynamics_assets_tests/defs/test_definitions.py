"""The code location loads, and its asset graph is the lineage the product promises."""
from __future__ import annotations

import dagster as dg

from dynamics_assets.definitions import defs
from dynamics_assets.defs.partitions import epoch_of, epoch_partitions_def


def test_definitions_load_and_jobs_resolve():
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("curate_pool") is not None
    assert defs.resolve_job_def("draw_epoch_plan") is not None


def test_the_asset_graph_has_no_cycle_but_self_dependencies():
    """The UI draws no lineage at all ("Cycle detected") when two asset keys depend on each other,
    whatever their partition mappings; an asset on its own earlier partitions is fine."""
    import graphlib

    graph = defs.resolve_asset_graph()
    edges = {key: {p for p in graph.get(key).parent_keys if p != key} for key in graph.get_all_asset_keys()}
    graphlib.TopologicalSorter(edges).prepare()  # raises CycleError naming the cycle


def test_lineage_and_groups():
    graph = defs.resolve_asset_graph()
    deps = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
            for key in graph.get_all_asset_keys()}
    assert deps["raw_shards"] == set()
    assert deps["raw_pairs"] == {"raw_shards"}
    assert deps["reference_model"] == {"raw_pairs"}
    assert deps["pair_embeddings"] == {"raw_pairs", "reference_model"}
    assert deps["shard_embeddings"] == {"raw_pairs", "pair_embeddings"}
    assert deps["clusters"] == {"raw_pairs", "pair_embeddings", "shard_embeddings"}
    assert deps["cluster_stats"] == {"clusters"}
    assert deps["sample_plan"] == {"clusters", "cluster_stats"}
    assert deps["checkpoint"] == {"sample_plan", "clusters", "reference_model", "curated_model", "checkpoint"}
    assert deps["feedback_plan"] == {"checkpoint", "clusters"}  # of the previous epoch (test_feedback_lineage)
    assert deps["eval_report"] == {"checkpoint", "raw_pairs", "clusters"}
    assert deps["comparison_report"] == {"eval_report", "raw_shards", "clusters"} and deps["learning_curve"] == {"eval_report"}
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw_pairs"] == "ingest" and groups["pair_embeddings"] == "embed"
    assert groups["shard_embeddings"] == "embed"
    assert groups["clusters"] == "cluster" and groups["sample_plan"] == "sample"
    assert groups["checkpoint"] == "train" and groups["eval_report"] == "evaluate"
    assert groups["webdataset_export"] == "export"


def test_every_asset_group_is_named_like_its_stage_folder():
    """An asset defined in ``defs/<stage>/`` sits in the asset group ``<stage>`` (one vocabulary for
    the folders and the lineage the UI draws)."""
    graph = defs.resolve_asset_graph()
    wrong = {}
    for key in graph.get_all_asset_keys():
        assets_def = defs.resolve_assets_def(key)
        module = getattr(assets_def.op.compute_fn, "decorated_fn", assets_def.op.compute_fn).__module__
        stage = module.split(".")[2]  # dynamics_assets.defs.<stage>.assets
        if graph.get(key).group_name != stage:
            wrong[key.to_user_string()] = (graph.get(key).group_name, module)
    assert wrong == {}


def test_plans_checkpoints_and_reports_are_partitioned_by_recipe_and_epoch():
    from dynamics_assets.defs.experiments import EXPERIMENTS

    for asset in ("sample_plan", "checkpoint", "eval_report"):
        pd = defs.resolve_asset_graph().get(dg.AssetKey(asset)).partitions_def
        assert {d.name for d in pd.partitions_defs} == {"recipe", "epoch"}
        epochs = pd.get_partitions_def_for_dimension("epoch").get_partition_keys()
        assert epochs[0] == "epoch-001" and all(k.startswith("epoch-") for k in epochs)
        assert set(pd.get_partitions_def_for_dimension("recipe").get_partition_keys()) == set(EXPERIMENTS.recipes)
    twelve = epoch_partitions_def(12)
    assert [epoch_of(k) for k in twelve.get_partition_keys()] == list(range(1, 13))
    assert all(twelve.has_partition_key(k) for k in twelve.get_partition_keys()), "keys parse back"


def test_experiments_file_expands_recipes_by_seed(tmp_path):
    import pytest

    from dynamics_assets.defs.experiments import load_experiments

    (tmp_path / "e.yaml").write_text(
        "default_recipe: a\nseeds: [0, 4]\nrecipes:\n  a: {sampler: {strategy: uniform, budget: 0.5}}\n"
        "  b: {sampler: {strategy: dynamics, budget: 0.5}, training: {selection: jest}}\n")
    exp = load_experiments(tmp_path / "e.yaml")
    assert list(exp.recipes) == ["a.s0", "a.s4", "b.s0", "b.s4"]
    assert exp.default_keys == ["a.s0"] and exp.recipes["b.s4"].training == {"selection": "jest"}
    (tmp_path / "bad.yaml").write_text("recipes:\n  x.y: {sampler: {strategy: uniform}}\n")
    with pytest.raises(ValueError, match="may not contain"):
        load_experiments(tmp_path / "bad.yaml")


def test_recuration_settings_and_jobs(tmp_path):
    import pytest

    from dynamics_assets.defs.experiments import EXPERIMENTS, load_experiments

    assert EXPERIMENTS.recuration.cron == "0 2 * * *" and EXPERIMENTS.recuration_keys
    (tmp_path / "e.yaml").write_text(
        "seeds: [0, 1]\nrecipes:\n  a: {sampler: {strategy: uniform}}\n  b: {sampler: {strategy: uniform}}\n")
    exp = load_experiments(tmp_path / "e.yaml")
    assert exp.recuration.cron == "0 2 * * *" and exp.recuration_keys == ["a.s0", "a.s1"], "default recipe"
    (tmp_path / "bad.yaml").write_text("recipes:\n  a: {sampler: {strategy: uniform}}\nrecuration: {recipes: [zz]}\n")
    with pytest.raises(ValueError, match="unknown recipes"):
        load_experiments(tmp_path / "bad.yaml")
    (tmp_path / "cron.yaml").write_text("recipes:\n  a: {sampler: {strategy: uniform}}\nrecuration: {cron: nightly}\n")
    with pytest.raises(ValueError, match="cron"):
        load_experiments(tmp_path / "cron.yaml")

    def selected(job):
        return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}

    assert selected("recurate_pool") == {"raw_shards", "raw_pairs", "pair_embeddings", "clusters", "cluster_stats",
                                         "dfn_scores", "curation_targets"}  # encoders (reference, curated) kept
    assert selected("ingest_shard") == {"shard_embeddings"}
    assert "shard_embeddings" not in selected("curate_pool") and "reference_model" in selected("curate_pool")
    schedule = defs.resolve_schedule_def("nightly_recuration")
    assert schedule.cron_schedule == EXPERIMENTS.recuration.cron and schedule.job_name == "recurate_pool"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_the_defs_docstring_names_only_what_exists():
    """``defs/__init__``'s map of the layer: every file and folder it names exists, and every asset it
    lists under a stage folder sits in that stage's group."""
    import re
    from pathlib import Path

    import dynamics_assets.defs as layer

    root, doc = Path(layer.__file__).parent, layer.__doc__
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    stage, missing = None, []
    for line in doc.splitlines():
        if m := re.match(r"\s+(\w+)/\s", line):
            stage = m.group(1)
            missing += [f"{stage}/"] * (not (root / stage).is_dir())
        elif not line.startswith("   "):
            stage = None
        files = re.findall(r"\b(\w+\.py)\b", line)
        folder = root / (stage or "")
        missing += [f"{stage or ''}/{f}" for f in files if f != "definitions.py" and not (folder / f).is_file()]
        if stage:
            missing += [f"{stage}: {w} (group {groups[w]})" for w in re.findall(r"\b\w+\b", line)
                        if w in groups and groups[w] != stage]
    assert missing == []
    assert set(groups.values()) <= {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")}
