"""Drawing a recipe's plan of one epoch on the clustered pool and committing it (the ``sample_plan``
asset's and the ``feedback_plan`` output's core): the pool read from the clusters stage's record,
the plan written as a new version with its cluster-scaling plot, and, for a feedback recipe, the
previous epoch's per-cluster loss read and the plan checked before anything trains on it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from dynamics_assets.core.records import CheckpointRecord, PlanRecord, PoolClusters
from dynamics_assets.core.sample.registry import LINEAGE_FILLS


class FeedbackPlanError(ValueError):
    """A feedback plan that cannot be drawn (no per-cluster loss recorded), breaks its guarantees, or
    has not been drawn yet where it is read."""


def pool_of(clusters: PoolClusters):
    """The ``ClusterPool`` the clusters stage wrote."""
    from dynamics_assets.core.sample import ClusterPool

    return ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=clusters.embeddings_dir,
                                      fingerprint=clusters.pool_version, manifest_dir=clusters.manifest_dir)


def commit_plan(plan, root: str | Path, clusters: PoolClusters, title: str) -> Path:
    """The plan committed as a new version of ``root`` (pinned to the clusters version), with its
    cluster-scaling plot; returns the version directory."""
    from dynamics_assets.core.io.plots import plot_cluster_scaling
    from dynamics_assets.core.sample import write_plan

    return write_plan(root, plan, pool_version=clusters.clusters_dir,
                      extras=lambda d: plot_cluster_scaling(plan.cluster_size, plan.cluster_realised,
                                                            d / "cluster_scaling.png", title=title))


def plan_record(out: Path, plan, recipe: str, epoch: int, clusters: PoolClusters) -> PlanRecord:
    return PlanRecord(plan_dir=str(out), recipe=recipe, epoch=epoch, realised=plan.size,
                      pool_version=clusters.pool_version)


class LineageFillError(ValueError):
    """A setting a recipe left out that the lineage has no version to fill in from."""


# strategy -> (the artefact and file that fill its setting, what provides it); the setting itself is
# the registry's (``registry.LINEAGE_FILLS``)
_FILLS = {
    "text_filter": ("curation_targets", "classnames.txt",
                    "materialise curation_targets on a pool with class names (the synthetic pool, "
                    "--eval, or --target with a classnames.txt), or list classnames in the recipe"),
    "image_filter": ("curation_targets", "target.npy",
                     "materialise curation_targets with target images (--target DIR of "
                     "images) or a curated set (--curated), or give a .npy in the recipe"),
    "dfn": ("dfn_scores", "scores.npy",
            "materialise curated_model and dfn_scores with a curated set (--curated DIR; "
            "the synthetic pool: --curated synthetic)"),
}


def lineage_filled(spec: Mapping[str, Any], artifact: Callable[[str], Path], recipe: str) -> dict:
    """The sampler block with what a recipe may leave out filled in from the lineage's current
    versions (``registry.LINEAGE_FILLS``; ``artifact(name)``: that artefact's root):
    ``text_filter.classnames`` = the pool's class names and ``image_filter.target_embeddings`` = the
    target set's embeddings (``curation_targets``), ``dfn.scores`` = the data filtering network's
    scores (``dfn_scores``); compositions step by step. Nothing there to fill in: refused
    (``LineageFillError``), naming the recipe, the setting and what provides it."""
    from dynamics_assets.core.io.versions import Artefact

    out = dict(spec)
    strategy = out.get("strategy")
    if strategy == "compose":
        out["steps"] = [lineage_filled(s, artifact, recipe) for s in out.get("steps", [])]
    elif strategy in _FILLS and out.get(LINEAGE_FILLS[strategy][0]) is None:
        key = LINEAGE_FILLS[strategy][0]
        name, file, how = _FILLS[strategy]
        setting = f"{strategy}.{key}"
        version = Artefact(artifact(name)).current()
        if version is None or not (version / file).is_file():
            raise LineageFillError(f"recipe {recipe}: {setting} is not set and the lineage has none: {how}")
        out[key] = str(version / file)
    return out


def trained_plan_dir(sampler: Mapping[str, Any], sample_plan_dir: str, feedback_plan_root: str | Path,
                     partition: str) -> str:
    """The plan a recipe × epoch (``partition``) trains on. For most recipes that is the sample plan;
    a feedback recipe (``learnability``) trains on the feedback plan its training step draws from
    epoch e−1's per-cluster loss, so the committed version under ``feedback_plan_root`` is read, and
    refused, with the reason, until the training step has drawn it (it is not the size-only sample plan)."""
    from dynamics_assets.core.io.versions import Artefact
    from dynamics_assets.core.sample import registry

    if not registry.needs_feedback(sampler):
        return sample_plan_dir
    current = Artefact(feedback_plan_root).current()
    if current is None:
        raise FeedbackPlanError(f"{partition}: this recipe trains on the feedback_plan its checkpoint step "
                                "draws from the previous epoch's per-cluster loss; materialise checkpoint for this "
                                "partition first, then export")
    return str(current)


def draw_sample_plan(sampler: Mapping[str, Any], clusters: PoolClusters, *, recipe: str, epoch: int, seed: int,
                     root: str | Path, cache_dir: str | Path, title: str):
    """(plan, version dir): the recipe's plan of ``epoch``, drawn from (seed, epoch) and committed."""
    from dynamics_assets.core.sample import sampler_from_spec

    plan = sampler_from_spec(sampler, cache_dir=cache_dir).draw(pool_of(clusters), epoch=epoch, seed=seed)
    plan.meta.update(recipe=recipe)
    return plan, commit_plan(plan, root, clusters, title)


def previous_feedback(previous: Optional[CheckpointRecord], clusters: PoolClusters, epoch: int,
                      warn: Callable[[str], None]):
    """The per-cluster loss the previous epoch's checkpoint recorded: None for epoch 1, or (with a
    warning) when that checkpoint was trained on another pool version; refused when it has none."""
    from dynamics_assets.core.sample import ClusterFeedback

    if previous is None:
        return None
    if previous.pool_version != clusters.pool_version:
        warn(f"epoch {epoch - 1} was trained on pool version {previous.pool_version}, this epoch reads "
             f"{clusters.pool_version}: its per-cluster loss does not apply; drawn without feedback")
        return None
    if previous.cluster_loss is None:
        raise FeedbackPlanError(f"checkpoint {previous.checkpoint} recorded no per-cluster loss (cluster_loss.npy): "
                                "retrain that epoch with this version")
    return ClusterFeedback.read(previous.cluster_loss)


def draw_feedback_plan(sampler: Mapping[str, Any], clusters: PoolClusters, previous: Optional[CheckpointRecord], *,
                       recipe: str, epoch: int, seed: int, root: str | Path, title: str,
                       warn: Callable[[str], None]):
    """(plan, version dir, facts): a feedback recipe's plan of one epoch, drawn with the per-cluster
    loss the previous epoch's checkpoint recorded (``previous_feedback``), committed like a sample
    plan and checked with the plan check (``plan_findings``) before anything trains on it; the
    facts say where the feedback came from. Refused (``FeedbackPlanError``) when it breaks them."""
    from dynamics_assets.core.sample import sampler_from_spec
    from dynamics_assets.core.sample.validate import plan_findings

    feedback = previous_feedback(previous, clusters, epoch, warn)
    plan = sampler_from_spec(sampler).draw(pool_of(clusters), epoch=epoch, seed=seed, feedback=feedback)
    plan.meta.update(recipe=recipe)
    out = commit_plan(plan, root, clusters, title)
    findings = plan_findings(out, clusters.clusters_dir, clusters.k, clusters.pool_version)
    if not findings.passed:
        raise FeedbackPlanError(f"feedback plan {out} breaks its guarantees: {findings.summary()}")
    info = plan.meta["feedback"]
    facts = {"feedback_source": str(info["source"]), "feedback_clusters_seen": info["clusters_seen"],
             "feedback_factor_min": info["factor_min"], "feedback_factor_max": info["factor_max"],
             "feedback_scoring_flops": 0}
    return plan, out, facts


def plan_facts(plan) -> dict:
    """The plan's plain figures: budget and realised size, distinct samples, the largest
    multiplicity, starved clusters, and the head share (largest 10% of clusters) before and after."""
    import numpy as np

    order = np.argsort(-plan.cluster_size, kind="stable")
    nonempty = plan.cluster_size > 0
    head = order[:max(1, len(order) // 10)]
    return {
        "budget": int(plan.meta.get("budget", plan.size)), "realised": plan.size,
        "distinct": int(len(plan.indices)), "max_multiplicity": int(plan.multiplicity.max(initial=0)),
        "starved_clusters": int(((plan.cluster_realised == 0) & nonempty).sum()),
        "head_share_before (largest 10% of clusters)": float(plan.cluster_size[head].sum() / max(1, plan.cluster_size.sum())),
        "head_share_after": float(plan.cluster_realised[head].sum() / max(1, plan.size)),
    }


def per_cluster_rows(plan) -> list[tuple]:
    """(cluster, size, expected, realised), largest cluster first."""
    import numpy as np

    order = np.argsort(-plan.cluster_size, kind="stable")
    return [(int(c), int(plan.cluster_size[c]), float(plan.cluster_expected[c]), int(plan.cluster_realised[c]))
            for c in order]
