"""What the re-curation automations read from the Dagster instance: where the pool lives, how it
was curated last, which shards are in flight, which epochs are still to come."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from dynamics_assets.defs.experiments import recipe_epoch_partitions
from dynamics_assets.defs.partitions import epoch_partitions

# The assets a re-curation materialises again, with the configuration of their last materialisation.
RECURATED_ASSETS = ("raw_shards", "raw_pairs", "pair_embeddings", "clusters", "cluster_stats")
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


def _latest_path_metadata(instance: dg.DagsterInstance, asset: str, key: str) -> Path | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(key)
    return Path(value.value) if value is not None else None


def pool_shards_dir(instance: dg.DagsterInstance) -> Path | None:
    """The folder of the pool's raw shards, as its last ``raw_shards`` materialisation recorded."""
    return _latest_path_metadata(instance, "raw_shards", "shards_dir")


def pool_embeddings_dir(instance: dg.DagsterInstance) -> Path | None:
    """The pool's current embeddings version (a landed shard's ingestion commits newer versions
    than the one the last ``pair_embeddings`` materialisation recorded)."""
    from dynamics_assets.core.io import versions

    recorded = _latest_path_metadata(instance, "pair_embeddings", "embeddings_dir")
    if recorded is None:
        return None
    root = recorded.parents[1] if versions.is_version_dir(recorded) else recorded
    return versions.Artefact(root).current() or recorded


def last_curation_config(instance: dg.DagsterInstance) -> dict[str, Any]:
    """Run config repeating each re-curated asset's configuration at its last materialisation (so a
    pool curated from a folder, with another k or encoder, is re-curated the same way). The
    clusters' ``refresh`` mode is not repeated: a re-curation decides it from the drift."""
    ops: dict[str, Any] = {}
    for name in RECURATED_ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        run = instance.get_run_by_id(event.run_id) if event is not None else None
        config = ((run.run_config or {}).get("ops") or {}).get(name) if run is not None else None
        if config and config.get("config"):
            ops[name] = {"config": dict(config["config"])}
    if "clusters" in ops:
        ops["clusters"]["config"].pop("refresh", None)
    return {"ops": ops} if ops else {}


def runs_in_flight(instance: dg.DagsterInstance, job_name: str) -> int:
    return instance.get_runs_count(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT))


def coming_plan_keys(instance: dg.DagsterInstance, recipe_keys: list[str]) -> list[dg.MultiPartitionKey]:
    """Plans to redraw after a re-curation: for each recipe that has started (a plan or a checkpoint
    exists), every epoch without a checkpoint yet. Recipes not started draw their plans when they
    train (the train_epoch job includes sample_plan)."""
    def by_recipe(asset: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for key in instance.get_materialized_partitions(dg.AssetKey(asset)):
            dims = recipe_epoch_partitions.get_partition_key_from_str(key).keys_by_dimension
            out.setdefault(dims["recipe"], set()).add(dims["epoch"])
        return out

    trained, planned = by_recipe("checkpoint"), by_recipe("sample_plan")
    keys = []
    for recipe in recipe_keys:
        if recipe not in trained and recipe not in planned:
            continue
        for epoch in epoch_partitions.get_partition_keys():
            if epoch not in trained.get(recipe, set()):
                keys.append(dg.MultiPartitionKey({"recipe": recipe, "epoch": epoch}))
    return keys
