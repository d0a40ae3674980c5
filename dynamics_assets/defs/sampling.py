"""Stage 4 — sampling: one plan per epoch, drawn afresh from (seed, epoch)."""

from pathlib import Path

import dagster as dg
import numpy as np

from ..core.samplers import ClusterPool, make_sampler, write_plan
from .metadata import md_table
from .partitions import epoch_of, epoch_partitions
from .resources import StorageResource

GROUP = "sampling"


class PlanConfig(dg.Config):
    """strategy: "dynamics" or "uniform"; budget: a fraction of the valid pool (≤ 1.0) or a
    count; DynamiCS: alpha, mode ("exact" | "upsample" | "bernoulli" = the paper's), max_repeat."""

    strategy: str = "dynamics"
    budget: float = 0.5
    alpha: float = 0.2
    mode: str = "exact"
    max_repeat: int = 4
    seed: int = 0


def sampler_from(config: PlanConfig):
    budget = config.budget if config.budget <= 1.0 else int(config.budget)
    if config.strategy == "dynamics":
        return make_sampler("dynamics", budget=budget, alpha=config.alpha, mode=config.mode,
                            max_repeat=config.max_repeat)
    if config.strategy == "uniform":
        return make_sampler("uniform", budget=budget)
    return make_sampler(config.strategy, budget=budget)


@dg.asset(group_name=GROUP, partitions_def=epoch_partitions, kinds={"numpy"})
def sample_plan(context: dg.AssetExecutionContext, config: PlanConfig, clusters: dict,
                cluster_stats: dict, storage: StorageResource) -> dict:
    """The samples of one epoch: sorted indices with multiplicity, and the per-cluster summary
    (size, expected, realised)."""
    epoch = epoch_of(context.partition_key)
    cdir = Path(clusters["clusters_dir"])
    pool = ClusterPool.from_npy(cdir / "cluster_id.npy", clusters["k"])
    plan = sampler_from(config).draw(pool, epoch=epoch, seed=config.seed)
    plan.meta["pool_fingerprint"] = clusters["pool_fingerprint"]
    out = write_plan(storage.layout.artifact("sample_plan", context.partition_key), plan)
    order = np.argsort(-plan.cluster_size, kind="stable")
    nonempty = plan.cluster_size > 0
    context.add_output_metadata({
        "epoch": epoch, "strategy": config.strategy, "budget": int(plan.meta["budget"]),
        "realised": plan.size, "distinct": int(len(plan.indices)),
        "max_multiplicity": int(plan.multiplicity.max(initial=0)),
        "starved_clusters": int(((plan.cluster_realised == 0) & nonempty).sum()),
        "head_share_before": float(plan.cluster_size[order[:max(1, len(order) // 10)]].sum() / max(1, plan.cluster_size.sum())),
        "head_share_after": float(plan.cluster_realised[order[:max(1, len(order) // 10)]].sum() / max(1, plan.size)),
        "per_cluster": md_table(["cluster", "size", "expected", "realised"],
                                [(int(c), int(plan.cluster_size[c]), float(plan.cluster_expected[c]),
                                  int(plan.cluster_realised[c])) for c in order]),
        "plan_dir": dg.MetadataValue.path(str(out)),
        "dagster/row_count": int(len(plan.indices)),
    })
    return {"plan_dir": str(out), "epoch": epoch, "realised": plan.size,
            "pool_fingerprint": clusters["pool_fingerprint"]}
