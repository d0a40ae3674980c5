"""Stage 5 — train: one open_clip checkpoint per recipe × epoch, trained on that epoch's plan,
continuing from the recipe's previous checkpoint (a self-dependency on the previous partition).

Feedback recipes (a sampler that reads the previous epoch's training: ``learnability``): the plan of
epoch e depends on the checkpoint of epoch e−1, which depends on the plan of epoch e−1. Dagster
rejects that cycle between distinct assets (CircularDependencyError), so the plan is a second
output of the training step, ``feedback_plan``: one op, two assets, with feedback_plan(e) ←
checkpoint(e−1) (the previous-epoch mapping) and checkpoint(e) ← feedback_plan(e). The UI's
lineage shows both edges; the plan is written, versioned and checked like a sample plan before
training reads it (and by the ``feedback_plan_is_valid`` check). Other recipes do not yield it.
It sits in the train group: it is made by the training step (a plan-only job cannot draw it).
"""

import dataclasses
from pathlib import Path
from typing import Optional

import dagster as dg

from dynamics_assets.core.records import CheckpointRecord, PlanRecord, PoolClusters, ReferenceModel
from dynamics_assets.core.train.settings import TrainSettings
from dynamics_assets.defs.config import config_from
from dynamics_assets.defs.experiments import partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.partitions import N_EPOCHS, epoch_of
from dynamics_assets.core.sample import registry
from dynamics_assets.defs.sample.assets import feedback_plan_of
from dynamics_assets.defs.resources import GpuResource, StorageResource
from dynamics_assets.defs.tracking import MlflowResource

GROUP = "train"

# Same recipe, previous epoch (the first epoch gets None).
PREVIOUS_EPOCH = dg.MultiPartitionMapping({
    "recipe": dg.DimensionPartitionMapping("recipe", dg.IdentityPartitionMapping()),
    "epoch": dg.DimensionPartitionMapping("epoch", dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)),
})


TrainingConfig = config_from(
    TrainSettings, "TrainingConfig",
    "Training settings (core/train/settings.py: TrainSettings); a recipe's ``training:`` keys in "
    "experiments.yaml override them. ``n_epochs`` empty: the cosine schedule spans every epoch partition.",
    __name__)


@dg.multi_asset(
    name="checkpoint", group_name=GROUP, partitions_def=recipe_epoch_partitions, pool="gpu",
    # specs, not outs + internal_asset_deps: dagster 1.13 gives an internal dep the partition mapping of
    # the *output's* own key (here: checkpoint's previous-epoch mapping). The io_manager key makes the
    # outputs values, not Nothing. The lineage shows feedback_plan(e) ← checkpoint(e−1) only: the
    # edge checkpoint(e) ← feedback_plan(e) (true: the step trains on the plan it has just drawn) would
    # close a cycle between two asset keys, and the UI then refuses to draw any lineage ("Cycle
    # detected"); it is stated in checkpoint's metadata (trained_plan) instead.
    specs=[
        dg.AssetSpec("checkpoint", kinds={"pytorch"}, description="An open_clip checkpoint after epoch e of a recipe "
                     "(a feedback recipe's: trained on the feedback_plan the same step draws first).",
                     deps=["sample_plan", "clusters", "reference_model", "curated_model",
                           dg.AssetDep("checkpoint", partition_mapping=PREVIOUS_EPOCH)]).with_io_manager_key("io_manager"),
        dg.AssetSpec("feedback_plan", kinds={"numpy"}, skippable=True,
                     description="A feedback recipe's plan of epoch e, drawn with the per-cluster loss of epoch e−1's "
                                 "training (learnability sampler); the plan its checkpoint trains on.",
                     deps=["clusters", dg.AssetDep("checkpoint", partition_mapping=PREVIOUS_EPOCH)]
                     ).with_io_manager_key("io_manager"),
    ],
    ins={"previous_checkpoint": dg.AssetIn(key="checkpoint")},
)
def checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig, sample_plan: PlanRecord,
               clusters: PoolClusters, reference_model: ReferenceModel,
               previous_checkpoint: Optional[CheckpointRecord], storage: StorageResource,
               gpu: GpuResource, mlflow: MlflowResource):
    """An open_clip checkpoint after epoch e of a recipe: trained on exactly that plan's samples,
    from the recipe's checkpoint of epoch e−1; carries the optimizer state and the samples seen.
    A feedback recipe's plan is drawn here first (``feedback_plan``, see the module doc)."""
    from dynamics_assets.core.io.lineage import LineageError
    from dynamics_assets.core.io.versions import StalePlanError
    from dynamics_assets.core.train.checkpoint import TrainedEpoch, epoch_job, reference_for
    from dynamics_assets.core.train.launch import LaunchError, Topology, launch
    from dynamics_assets.core.train.settings import resolve_training

    recipe, epoch_key = recipe_and_epoch(context)
    if not clusters.has_images:
        raise dg.Failure("this pool ships embeddings without images: its plans and exports exist "
                         "(sample_plan, datacomp_subset), but there is nothing to train on here")
    # the one resolution (core/train/settings.py): run config, recipe overrides, batch rule, seed, span
    settings = resolve_training(config.model_dump(), recipe.training, recipe.seed, clusters.n,
                                config.model_fields_set, default_epochs=N_EPOCHS, recipe_name=recipe.name)
    plan, plan_md = sample_plan, None
    if registry.needs_feedback(recipe.sampler):
        # drawn, written and checked before training; yielded after the checkpoint (Dagster wants a
        # multi_asset's outputs in the order of its lineage, and feedback_plan(e) ← checkpoint(e−1))
        plan, plan_md = feedback_plan_of(recipe, epoch_key, clusters, previous_checkpoint, storage, context.log)
    reference = reference_for(settings, reference_model.checkpoint, lambda: _curated_reference(storage, recipe.key))
    job = epoch_job(settings, plan, clusters, previous_checkpoint, reference, epoch=epoch_of(epoch_key),
                    out=storage.layout.artifact("checkpoint", str(partition_dir(recipe, epoch_key))),
                    device=gpu.resolved_device(), precision=gpu.resolved_precision(), num_workers=gpu.num_workers)
    topology = Topology(gpu.num_nodes, gpu.num_processes, gpu.ray_address or None, gpu.rdzv_endpoint or None)
    with mlflow.start_run(context, run_name=f"train {recipe.key} {epoch_key}", tags={"recipe": recipe.key}) as run:
        run.log_params({**dataclasses.asdict(job), "num_processes": gpu.num_processes, "num_nodes": gpu.num_nodes})
        try:
            metrics = launch(job, topology, on_step=lambda step, m: run.log_metrics(m, step=step), log=context.log.info)
        except LaunchError as e:
            raise dg.Failure(str(e), metadata={"stderr": e.stderr}) from e
        except (StalePlanError, LineageError) as e:
            raise dg.Failure(str(e)) from e
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    trained = TrainedEpoch(job, metrics, plan, reference, topology.launcher)
    facts = trained.facts("feedback_plan" if plan is not sample_plan else "sample_plan")
    metadata = {k: dg.MetadataValue.path(str(v)) if isinstance(v, Path) else v for k, v in facts.items()}
    metadata["open_clip_model"] = dg.MetadataValue.md(facts["open_clip_model"])
    context.add_output_metadata(output_name="checkpoint", metadata={**metadata, "mlflow_run": run.url_hint})
    yield dg.Output(output_name="checkpoint", value=trained.record(recipe.key, previous_checkpoint))
    if plan is not sample_plan:
        yield dg.Output(plan, output_name="feedback_plan", metadata=plan_md)


def _curated_reference(storage: StorageResource, recipe: str) -> tuple[str, float]:
    """The current curated_model checkpoint and its training FLOPs (core/train/checkpoint.py:
    ``curated_reference``: online selection's reference with ``training.reference: curated``),
    refused as a Dagster failure, naming the recipe and what provides it, when there is none."""
    from dynamics_assets.core.train.checkpoint import CuratedReferenceError, curated_reference

    try:
        return curated_reference(storage.layout.artifact("curated_model"), recipe)
    except CuratedReferenceError as e:
        raise dg.Failure(str(e)) from None
