"""Stage 5 — training: one open_clip checkpoint per epoch, trained on that epoch's plan,
continuing from the previous epoch's checkpoint (a self-dependency on the previous partition)."""
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import dagster as dg

from dynamics_assets.core.train.epoch import EpochJob, run_epoch
from dynamics_assets.defs.experiments import partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.partitions import N_EPOCHS, epoch_of
from dynamics_assets.defs.resources import GpuResource, StorageResource
from dynamics_assets.defs.tracking import MlflowResource

GROUP = "training"

# Same recipe, previous epoch (the first epoch gets None).
PREVIOUS_EPOCH = dg.MultiPartitionMapping({
    "recipe": dg.DimensionPartitionMapping("recipe", dg.IdentityPartitionMapping()),
    "epoch": dg.DimensionPartitionMapping("epoch", dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)),
})


class TrainingConfig(dg.Config):
    """Per-process batch size; ``init_pretrained``: an open_clip tag or local checkpoint for
    epoch 1 (empty: from scratch). The cosine schedule spans ``n_epochs`` (default: all epoch
    partitions)."""

    model_name: str = "dynamics-tiny-32"
    init_pretrained: Optional[str] = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    batch_size: int = 256
    seed: int = 0
    n_epochs: Optional[int] = None
    checkpoint_every_steps: int = 20


def epoch_job(config: TrainingConfig, context: dg.AssetExecutionContext, plan: dict, raw_pairs: dict,
              previous: Optional[dict], reference_model: dict, out: Path, gpu: GpuResource) -> EpochJob:
    """The epoch's training job: the asset config, overridden by the recipe's ``training`` keys."""
    recipe, epoch_key = recipe_and_epoch(context)
    settings = {**config.model_dump(), **recipe.training}
    selection = settings.get("selection")
    return EpochJob(
        plan_dir=plan["plan_dir"], manifest_dir=raw_pairs["manifest_dir"], shards_dir=raw_pairs["shards_dir"],
        out_checkpoint=str(out), epoch=epoch_of(epoch_key), n_epochs=settings["n_epochs"] or N_EPOCHS,
        previous_checkpoint=previous["checkpoint"] if previous else None, model_name=settings["model_name"],
        init_pretrained=settings["init_pretrained"], lr=settings["lr"], weight_decay=settings["weight_decay"],
        warmup_fraction=settings["warmup_fraction"], batch_size=settings["batch_size"],
        seed=settings["seed"] + 1000 * recipe.seed, device=gpu.resolved_device(),
        precision=gpu.resolved_precision(), checkpoint_every_steps=settings["checkpoint_every_steps"],
        **({"selection": selection, "filter_ratio": settings.get("filter_ratio", 0.8),
            "reference_checkpoint": reference_model["checkpoint"]} if selection else {}))


def run_under_torchrun(job: EpochJob, nproc: int, context: dg.AssetExecutionContext) -> dict:
    """The same epoch under torchrun (DDP, one process per GPU, gloo on CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        job_path, metrics_path = Path(tmp) / "job.json", Path(tmp) / "metrics.json"
        job_path.write_text(json.dumps(asdict(job)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "dynamics_assets.core.train.epoch", str(job_path), str(metrics_path)]
        context.log.info("launching: " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise dg.Failure(f"torchrun exited with {proc.returncode}", metadata={"stderr": proc.stderr[-4000:]})
        return json.loads(metrics_path.read_text())


@dg.asset(
    group_name=GROUP, partitions_def=recipe_epoch_partitions, pool="gpu", kinds={"pytorch"},
    ins={"previous_checkpoint": dg.AssetIn(key="checkpoint", partition_mapping=PREVIOUS_EPOCH)},
)
def checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig, sample_plan: dict, raw_pairs: dict,
               reference_model: dict, previous_checkpoint: Optional[dict], storage: StorageResource,
               gpu: GpuResource, mlflow: MlflowResource) -> dict:
    """An open_clip checkpoint after epoch e of a recipe: trained on exactly that plan's samples,
    from the recipe's checkpoint of epoch e−1; carries the optimizer state and the samples seen."""
    recipe, epoch_key = recipe_and_epoch(context)
    out = storage.layout.artifact("checkpoint", str(partition_dir(recipe, epoch_key)) + ".pt")
    job = epoch_job(config, context, sample_plan, raw_pairs, previous_checkpoint or None, reference_model, out, gpu)
    with mlflow.start_run(context, run_name=f"train {recipe.key} {epoch_key}", tags={"recipe": recipe.key}) as run:
        run.log_params({**asdict(job), "num_processes": gpu.num_processes})
        if gpu.num_processes > 1:
            metrics = run_under_torchrun(job, gpu.num_processes, context)
        else:
            metrics = run_epoch(job, on_step=lambda step, m: run.log_metrics(m, step=step))
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    context.add_output_metadata({
        "checkpoint": dg.MetadataValue.path(str(out)),
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        "mlflow_run": run.url_hint,
    })
    before = previous_checkpoint or {}
    return {"checkpoint": str(out), "model_name": job.model_name, "epoch": job.epoch, "recipe": recipe.key,
            "samples_seen": metrics["samples_seen"],  # cumulative, like the two totals below
            "device_seconds": before.get("device_seconds", 0.0) + metrics["device_seconds"],
            "scoring_flops": before.get("scoring_flops", 0.0) + float(metrics.get("scoring_flops", 0.0)),
            "global_step": metrics["global_step"], "final_loss": metrics["final_loss"]}

