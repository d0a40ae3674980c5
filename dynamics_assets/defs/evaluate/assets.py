"""Stage 6 — evaluate: a long-tail-aware report per recipe × epoch, learning curves and the
side-by-side comparison of the recipes."""

from pathlib import Path

import dagster as dg

from dynamics_assets.core.records import (CheckpointRecord, EvalRecord, PoolClusters, PoolManifest, RawShards,
                                          ReportRecord)
from dynamics_assets.defs.experiments import EXPERIMENTS, partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.metadata import md_image, md_table
from dynamics_assets.defs.partitions import N_EPOCHS
from dynamics_assets.defs.resources import GpuResource, StorageResource
from dynamics_assets.defs.tracking import MlflowResource

GROUP = "evaluate"


@dg.asset(group_name=GROUP, partitions_def=recipe_epoch_partitions, pool="gpu", kinds={"pytorch", "mlflow"})
def eval_report(context: dg.AssetExecutionContext, checkpoint: CheckpointRecord, raw_pairs: PoolManifest,
                clusters: PoolClusters, storage: StorageResource, gpu: GpuResource,
                mlflow: MlflowResource) -> EvalRecord:
    """Zero-shot top-1/top-5, mean per-class accuracy, head / middle / tail buckets by training
    frequency (tail = the 20% least frequent concepts), retrieval recall@1/5/10 both ways,
    accuracy per cluster, samples seen and compute spent."""
    from dynamics_assets.core.evaluate.eval_report import check_inputs, evaluate_checkpoint

    recipe, epoch_key = recipe_and_epoch(context)
    try:
        check_inputs(checkpoint, raw_pairs, clusters)
    except ValueError as e:  # StalePlanError, LineageError, PoolVersionMismatch
        raise dg.Failure(str(e)) from e
    # the training-style set at the last epoch only (what the comparison reads)
    ev = evaluate_checkpoint(checkpoint, raw_pairs, clusters, gpu.resolved_device(),
                             train_style=checkpoint.epoch == N_EPOCHS)
    files = ev.report.save(storage.layout.artifact("eval_report", str(partition_dir(recipe, epoch_key))),
                           refs={"checkpoint": Path(checkpoint.checkpoint).parent})
    out = next(iter(files.values())).parent  # the committed version
    with mlflow.start_run(context, run_name=f"eval {recipe.key} {epoch_key}", tags={"recipe": recipe.key}) as run:
        run.log_metrics({k: v for k, v in ev.report.metrics.items() if v == v}, step=checkpoint.epoch)
        for path in files.values():
            run.log_artifact(path)
    context.add_output_metadata({
        **ev.headline, **ev.compute, "zero_shot": ev.zero_shot, "held_out_pairs": ev.held_out_pairs,
        "notes": dg.MetadataValue.json(ev.notes),
        "report": dg.MetadataValue.md(ev.report.to_markdown()),
        "accuracy_vs_frequency": dg.MetadataValue.path(str(files["accuracy_vs_frequency.png"])),
        "accuracy_vs_frequency_plot": md_image(files["accuracy_vs_frequency.png"], "accuracy vs concept frequency"),
        "mlflow_run": run.url_hint,
    })
    return EvalRecord(report_dir=str(out), recipe=recipe.key, epoch=checkpoint.epoch,
                      metrics={k: float(v) for k, v in ev.report.metrics.items()})


@dg.asset(group_name=GROUP, kinds={"mlflow"}, deps=["eval_report"])
def learning_curve(context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource) -> ReportRecord:
    """Every evaluated epoch of every recipe: headline metrics against samples seen and compute.
    Reads whichever eval-report partitions exist, so it can run after any subset of them."""
    from dynamics_assets.core.evaluate.comparison import collect_reports
    from dynamics_assets.core.evaluate.learning_curve import learning_curve_table, plot_learning_curve

    reports = collect_reports(storage.layout.artifact("eval_report"))
    if not reports:
        raise dg.Failure("no eval_report partition has been materialised yet")
    out = storage.layout.artifact("learning_curve")
    table = learning_curve_table(reports)
    paths = plot_learning_curve(table, out)
    with mlflow.start_run(context, run_name="learning curve") as run:
        for path in paths.values():
            run.log_artifact(path)
    cols = ["recipe", "epoch", "samples_seen", "total_flops", "top1", "mean_per_class", "head", "middle", "tail", "i2t_r1"]
    context.add_output_metadata({
        "curve": md_table(cols, [[row[c] for c in cols] for row in table]),
        "plot": dg.MetadataValue.path(str(paths["png"])), "reports": len(table),
        "plot_inline": md_image(paths["png"], "learning curves"),
    })
    return ReportRecord(report_dir=str(paths["png"].parent), entries=len(table))


@dg.asset(group_name=GROUP, kinds={"mlflow", "duckdb"}, deps=["eval_report"])
def comparison_report(context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource,
                      raw_shards: RawShards, clusters: PoolClusters) -> ReportRecord:
    """Every recipe side by side at equal samples seen and equal compute: overall, head and
    tail accuracy (mean ± spread over seeds), as Markdown and PNG; and, when the eval reports
    carry per-image outcomes and a uniform recipe was run, every recipe against uniform at equal
    compute: paired differences with 95% intervals (bootstrap over seeds and eval images), the
    minimum detectable effect and a verdict (statistics.md / .parquet / .csv), accuracy against
    concept frequency per recipe and tail accuracy against compute (PNG). On a synthetic pool, also
    the pool's structure against the generator's concepts (cluster-size share of the largest 10%,
    Gini, purity, NMI, the tail's share of the pool) and the tail's share of every recipe's plans
    (pool_structure.md / .json)."""
    from dynamics_assets.core.evaluate.comparison import write_comparison
    from dynamics_assets.core.evaluate.comparison_report import NoReportsError, compare_recipes, pool_structure

    order = list(dict.fromkeys(r.name for r in EXPERIMENTS.recipes.values()))
    try:
        compared = compare_recipes(storage.layout.artifact("eval_report"), order)
    except NoReportsError as e:
        raise dg.Failure(str(e)) from None
    comparison, statistics = compared.comparison, compared.statistics
    structure, texts = pool_structure(raw_shards, clusters, storage.layout.artifact("sample_plan"),
                                      storage.layout.artifact("feedback_plan"), order,
                                      online={r.name for r in EXPERIMENTS.recipes.values() if r.training.get("selection")})
    if texts:
        structure["pool_structure"] = dg.MetadataValue.md(structure["pool_structure"])
    paths = write_comparison(comparison, storage.layout.artifact("comparison_report"), statistics, texts=texts)
    with mlflow.start_run(context, run_name="comparison report") as run:
        for path in paths.values():
            run.log_artifact(path)
        if statistics is not None:
            run.log_metrics(compared.statistics_metrics())
    meta = {
        "report": dg.MetadataValue.md(comparison.markdown), "plot": dg.MetadataValue.path(str(paths["png"])),
        "plot_inline": md_image(paths["png"], "accuracy against compute per recipe"),
        "recipes": len(comparison.rows), "mlflow_run": run.url_hint,
    }
    if statistics is not None:
        meta |= {
            "statistics": dg.MetadataValue.md(statistics.markdown),
            "statistics_table": dg.MetadataValue.path(str(paths["statistics.parquet"])),
            "accuracy_vs_frequency": md_image(paths["accuracy_vs_frequency.png"], "accuracy against concept frequency"),
            "tail_vs_compute": md_image(paths["tail_vs_compute.png"], "tail accuracy against compute"),
            "references": ", ".join(statistics.references),
            "verdicts": md_table(["recipe", "eval set", "metric", "Δ (points)", "95% CI", "MDE", "verdict"],
                                 compared.verdict_rows(), max_rows=300),
        }
    else:
        meta["statistics"] = f"not computed: {compared.why_not}"
    context.add_output_metadata(meta | structure)
    return ReportRecord(report_dir=str(paths["png"].parent), entries=len(comparison.rows))
