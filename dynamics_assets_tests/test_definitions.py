"""The code location loads, and its asset graph is the lineage the product promises."""
from __future__ import annotations

import dagster as dg

from dynamics_assets.definitions import defs
from dynamics_assets.defs.partitions import epoch_of, epoch_partitions_def


def test_definitions_load_and_jobs_resolve():
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("curate_pool") is not None
    assert defs.resolve_job_def("draw_epoch_plan") is not None


def test_lineage_and_groups():
    graph = defs.resolve_asset_graph()
    deps = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
            for key in graph.get_all_asset_keys()}
    assert deps["raw_shards"] == set()
    assert deps["raw_pairs"] == {"raw_shards"}
    assert deps["reference_model"] == {"raw_pairs"}
    assert deps["pair_embeddings"] == {"raw_pairs", "reference_model"}
    assert deps["clusters"] == {"pair_embeddings"}
    assert deps["cluster_stats"] == {"clusters", "raw_pairs"}
    assert deps["sample_plan"] == {"clusters", "cluster_stats"}
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw_pairs"] == "raw_data" and groups["pair_embeddings"] == "embeddings"
    assert groups["clusters"] == "clustering" and groups["sample_plan"] == "sampling"


def test_sample_plan_is_partitioned_by_epoch():
    node = defs.resolve_asset_graph().get(dg.AssetKey("sample_plan"))
    keys = node.partitions_def.get_partition_keys()
    assert keys[0] == "epoch-001" and all(k.startswith("epoch-") for k in keys)
    twelve = epoch_partitions_def(12)
    assert [epoch_of(k) for k in twelve.get_partition_keys()] == list(range(1, 13))
    assert all(twelve.has_partition_key(k) for k in twelve.get_partition_keys()), "keys parse back"
