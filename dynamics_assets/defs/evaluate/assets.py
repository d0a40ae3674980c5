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
    from dynamics_assets.core.evaluate.report import evaluate_model, pool_clusters_of_images
    from dynamics_assets.core.model.clip import EncoderSpec, load_encoder
    from dynamics_assets.core.model.flops import forward_flops_per_pair, train_flops

    from dynamics_assets.core.io import lineage

    recipe, epoch_key = recipe_and_epoch(context)
    try:
        lineage.check_evaluation_inputs(checkpoint.checkpoint, clusters.clusters_dir, manifest=raw_pairs.manifest_dir)
    except ValueError as e:  # StalePlanError, LineageError
        raise dg.Failure(str(e)) from e
    if checkpoint.pool_version != clusters.pool_version:
        raise dg.Failure(f"checkpoint {checkpoint.checkpoint} was trained on a plan of pool version "
                         f"{checkpoint.pool_version}; this evaluation reads pool version {clusters.pool_version} "
                         "(its clusters would not be the ones the plan was drawn from): redraw and retrain the epoch")
    device = gpu.resolved_device()
    eval_set, held_out, notes = _evaluation_inputs(raw_pairs, clusters)
    enc = load_encoder(EncoderSpec(checkpoint.model_name, checkpoint.checkpoint), device)
    # Eval images are placed in the pool's clusters with the encoder that embedded the pool (the
    # space its centroids live in), whichever encoder that was.
    cluster_of_image = (pool_clusters_of_images(clusters.encoder, clusters.clusters_dir, eval_set, device)
                        if eval_set is not None else None)
    report = evaluate_model(enc.model, enc.preprocess, enc.tokenizer, eval_set, device=device,
                            cluster_of_image=cluster_of_image, held_out=held_out, notes=notes)
    if checkpoint.epoch == N_EPOCHS:  # the training-style set at the last epoch only (what the comparison reads)
        report = _with_train_style(report, raw_pairs, enc, device)
    visual, text = enc.model.visual, enc.model
    flops_pair = forward_flops_per_pair(enc.model, visual.image_size, text.context_length)
    training = float(train_flops(checkpoint.samples_seen, flops_pair))
    # curation_flops: the curated model a recipe's online selection scores with (reference: curated),
    # trained once for all its epochs (0 otherwise; records from before the field read the default)
    curation = float(getattr(checkpoint, "curation_flops", 0.0))
    compute = {"samples_seen": checkpoint.samples_seen, "device_seconds": checkpoint.device_seconds,
               "train_flops": training, "scoring_flops": checkpoint.scoring_flops, "curation_flops": curation,
               "total_flops": training + checkpoint.scoring_flops + curation,
               "forward_flops_per_pair": int(flops_pair), "epoch": checkpoint.epoch}
    report.metrics.update({f"compute/{k}": v for k, v in compute.items()})
    files = report.save(storage.layout.artifact("eval_report", str(partition_dir(recipe, epoch_key))),
                        refs={"checkpoint": Path(checkpoint.checkpoint).parent})
    out = next(iter(files.values())).parent  # the committed version
    with mlflow.start_run(context, run_name=f"eval {recipe.key} {epoch_key}", tags={"recipe": recipe.key}) as run:
        run.log_metrics({k: v for k, v in report.metrics.items() if v == v}, step=checkpoint.epoch)
        for path in files.values():
            run.log_artifact(path)
    m = report.metrics
    shown = {name: m[key] for name, key in (
        ("top1", "zero_shot/top1"), ("top5", "zero_shot/top5"), ("mean_per_class", "zero_shot/mean_per_class"),
        ("head", "zero_shot/head"), ("middle", "zero_shot/middle"), ("tail", "zero_shot/tail"),
        ("i2t_r1", "retrieval/i2t_r1"), ("t2i_r1", "retrieval/t2i_r1"),
        ("train_style_top1", "train_style/top1"), ("train_style_tail", "train_style/tail")) if key in m}
    context.add_output_metadata({
        **shown, **compute,
        "zero_shot": str(notes.get("zero_shot", "labelled set" if eval_set is not None else "none")),
        "held_out_pairs": len(held_out) if held_out is not None else 0,
        "notes": dg.MetadataValue.json(notes),
        "report": dg.MetadataValue.md(report.to_markdown()),
        "accuracy_vs_frequency": dg.MetadataValue.path(str(files["accuracy_vs_frequency.png"])),
        "accuracy_vs_frequency_plot": md_image(files["accuracy_vs_frequency.png"], "accuracy vs concept frequency"),
        "mlflow_run": run.url_hint,
    })
    return EvalRecord(report_dir=str(out), recipe=recipe.key, epoch=checkpoint.epoch,
                      metrics={k: float(v) for k, v in m.items()})


TRAIN_STYLE_DIR = "eval_train_style"  # the generator's training-style eval set, beside eval/


def _with_train_style(report, raw_pairs: PoolManifest, enc, device: str):
    """The synthetic pool's second eval set, rendered in the training style (``eval_train_style/``
    beside ``eval/``, when the generator wrote one): its zero-shot metrics as ``train_style/*`` and
    its per-image outcomes (per_image_train_style.parquet). The main set stays the held-out style."""
    import dataclasses

    from dynamics_assets.core.evaluate.report import evaluate_model, load_eval_set

    if raw_pairs.eval_kind != "synthetic" or not raw_pairs.eval_dir:
        return report
    train_dir = Path(raw_pairs.eval_dir).parent / TRAIN_STYLE_DIR
    if not any(train_dir.glob("eval-*.tar")):
        return report
    eval_set = load_eval_set(train_dir, concepts_dir=raw_pairs.eval_dir)  # the same concepts and prompts
    style = evaluate_model(enc.model, enc.preprocess, enc.tokenizer, eval_set, device=device, progress=None)
    metrics = dict(report.metrics)
    metrics |= {f"train_style/{k.split('/', 1)[1]}": v for k, v in style.metrics.items()
                if k.startswith("zero_shot/") and "freq_bin" not in k}
    per_image = {**report.per_image, "train_style": style.per_image["eval"]}
    notes = {**report.notes, "train_style": f"{style.n_images} images of {train_dir.name}/ (training style): "
                                            "train_style/* metrics"}
    return dataclasses.replace(report, metrics=metrics, per_image=per_image, notes=notes)


def _evaluation_inputs(raw_pairs: PoolManifest, clusters: PoolClusters):
    """(eval set or None, held-out pool pairs or None, notes): the synthetic pool's own held-out
    set; a user's labelled set, its classes counted in the pool's captions (DuckDB, word
    boundaries, synonyms) for head / middle / tail; and, for a user's pool, retrieval on the slice
    of the pool held out of every plan. Without a labelled set: retrieval only, said in the notes."""
    from dynamics_assets.core.evaluate import frequency, holdout, labelled
    from dynamics_assets.core.evaluate.report import load_eval_set

    notes: dict = {}
    if raw_pairs.eval_kind == "synthetic":
        return load_eval_set(raw_pairs.eval_dir), None, notes
    held_out = holdout.load_held_out(raw_pairs.manifest_dir, raw_pairs.shards_dir)
    notes["held_out"] = (f"{len(held_out)} pairs of the pool (sha256(sample_id) mod 1000 < "
                         f"{holdout.HOLDOUT_PER_MILLE}) kept out of every plan: image↔text retrieval")
    if raw_pairs.eval_kind == "labelled" and raw_pairs.eval_dir:
        eval_set = labelled.load_labelled_set(raw_pairs.eval_dir)
        freq = frequency.caption_frequency(raw_pairs.manifest_dir, eval_set.prompt_names)
        notes["labelled_set"] = labelled.describe(eval_set)
        notes["train_frequency"] = ("ok captions of the pool naming the class or a synonym "
                                    "(DuckDB, word boundaries, case-insensitive, plurals)")
        return labelled.with_train_frequency(eval_set, freq), held_out, notes
    notes["zero_shot"] = "no labelled set"
    return None, held_out, notes


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
    from dynamics_assets.core.evaluate.comparison import (collect_outcomes, collect_reports, compare,
                                                          statistical_comparison, write_comparison)

    root = storage.layout.artifact("eval_report")
    reports = collect_reports(root)
    if not reports:
        raise dg.Failure("no eval_report partition has been materialised yet")
    order = list(dict.fromkeys(r.name for r in EXPERIMENTS.recipes.values()))
    comparison = compare(reports, recipe_order=order)
    statistics, why_not = None, ""
    outcomes = collect_outcomes(root)
    try:
        statistics = statistical_comparison(outcomes, recipe_order=order) if outcomes else None
        why_not = "" if outcomes else "no eval report has per-image outcomes"
    except ValueError as e:  # e.g. no uniform recipe evaluated: the statistics are left out, said why
        why_not = str(e)
    out = storage.layout.artifact("comparison_report")
    structure_meta, texts = _pool_structure(raw_shards, clusters, storage, order)
    paths = write_comparison(comparison, out, statistics, texts=texts)
    with mlflow.start_run(context, run_name="comparison report") as run:
        for path in paths.values():
            run.log_artifact(path)
        if statistics is not None:
            run.log_metrics({f"{r['recipe']}/{r['eval_set']}/{r['metric']}/{k}": r[k]
                             for r in statistics.rows for k in ("diff", "ci_low", "ci_high", "mde")
                             if r[k] == r[k]})
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
            "verdicts": md_table(["recipe", "eval set", "metric", "Δ (points)", "95% CI", "MDE", "verdict"], [
                [r["recipe"], r["eval_set"], r["metric"], f"{100 * r['diff']:+.1f}",
                 f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]", f"{100 * r['mde']:.1f}", r["verdict"]]
                for r in statistics.rows], max_rows=300),
        }
    else:
        meta["statistics"] = f"not computed: {why_not}"
    context.add_output_metadata(meta | structure_meta)
    return ReportRecord(report_dir=str(paths["png"].parent), entries=len(comparison.rows))


def _pool_structure(raw_shards: RawShards, clusters: PoolClusters, storage: StorageResource,
                    order: list[str]) -> tuple[dict, dict[str, str]]:
    """The pool's structure and the tail's share of every plan (core/evaluate/pool_structure.py):
    metadata, and the files committed with the comparison (pool_structure.md / .json); a pool
    without the generator's ground truth says so."""
    import json

    from dynamics_assets.core.evaluate import pool_structure as ps

    concepts = Path(raw_shards.eval_dir or "") / "concepts.parquet"
    if not raw_shards.ground_truth or not Path(raw_shards.ground_truth).is_file() or not concepts.is_file():
        return {"pool_structure": "not measured: the pool has no ground-truth concepts (only the synthetic generator's do)"}, {}
    pool = ps.measure_pool(raw_shards.ground_truth, str(concepts), clusters.manifest_dir,
                           str(Path(clusters.clusters_dir) / "assignments.parquet"), clusters.k)
    rows, other_pool = ps.plan_tail_rows(storage.layout.artifact("sample_plan"), pool,
                                         storage.layout.artifact("feedback_plan"), pool_version=clusters.pool_version)
    online = {r.name for r in EXPERIMENTS.recipes.values() if r.training.get("selection")}
    markdown, table = ps.structure_markdown(pool, rows, recipe_order=order, online=online, other_pool=len(other_pool))
    texts = {"pool_structure.md": markdown,
             "pool_structure.json": json.dumps({"pool": pool.structure.as_dict(), "recipes": table, "plans": rows,
                                                      "plans_of_another_pool_version": other_pool}, indent=1)}
    s = pool.structure
    return {"pool_structure": dg.MetadataValue.md(markdown), "top10_cluster_share": s.top10_share,
            "cluster_size_gini": s.gini, "concept_purity": s.purity, "tail_pool_share": s.tail_pool_share}, texts
