"""The main command: materialise the whole lineage on the default data in the local instance.

    bash scripts/pipeline.sh            # (sets DAGSTER_HOME=data/dagster_home and bootstraps)
    python -m dynamics_assets.pipeline  # the same, inside the venv
    bash scripts/compare.sh             # every recipe × seed of data/experiments.yaml

Runs the ``curate_pool`` job, then ``train_epoch`` (plan → checkpoint → eval report) for every
epoch of the chosen recipes in order, then ``report_recipes`` (learning curves, comparison), all
in the instance's persistent storage, so every run and materialisation shows up in the Dagster UI.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import dagster as dg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", nargs="*", help="epoch partition keys (default: all)")
    parser.add_argument("--recipes", nargs="*", help="recipe partition keys, or 'all' "
                        "(default: the default recipe of data/experiments.yaml, first seed)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip recipe × epoch partitions whose eval_report is already materialised")
    args = parser.parse_args(argv)
    if "DAGSTER_HOME" not in os.environ:
        sys.exit("DAGSTER_HOME is not set: run `bash scripts/pipeline.sh`, which sets it to data/dagster_home")

    from dynamics_assets.defs.experiments import EXPERIMENTS
    from dynamics_assets.defs.partitions import epoch_partitions
    from dynamics_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    curation = defs.resolve_job_def("curate_pool")
    done = args.skip_existing and all(
        instance.get_latest_materialization_event(key) is not None for key in curation.asset_layer.executable_asset_keys)
    result = None if done else curation.execute_in_process(instance=instance, raise_on_error=False)
    if result is not None and not result.success:
        print(f"curate_pool failed (run {result.run_id})", file=sys.stderr)
        return 1
    epochs = args.epochs or epoch_partitions.get_partition_keys()
    if args.recipes == ["all"]:  # seed-major: every recipe's first seed before any second seed
        recipes = sorted(EXPERIMENTS.recipes, key=lambda k: (EXPERIMENTS.recipes[k].seed, list(EXPERIMENTS.recipes).index(k)))
    else:
        recipes = args.recipes or EXPERIMENTS.default_keys
    unknown = set(recipes) - set(EXPERIMENTS.recipes)
    if unknown:
        sys.exit(f"unknown recipe partition(s) {sorted(unknown)}; known: {sorted(EXPERIMENTS.recipes)}")
    epoch_job = defs.resolve_job_def("train_epoch")
    for recipe in recipes:
        for epoch in epochs:
            key = dg.MultiPartitionKey({"recipe": recipe, "epoch": epoch})
            if args.skip_existing and _materialized(instance, "eval_report", key):
                continue
            r = epoch_job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
            if not r.success:
                print(f"train_epoch {key} failed (run {r.run_id})", file=sys.stderr)
                return 1
            m = r.output_for_node("eval_report")["metrics"]
            print(f"{recipe} {epoch}: top-1 {m['zero_shot/top1']:.3f}  head {m['zero_shot/head']:.3f}  "
                  f"tail {m['zero_shot/tail']:.3f}  samples seen {int(m['compute/samples_seen']):,}", flush=True)
    report = defs.resolve_job_def("report_recipes").execute_in_process(instance=instance, raise_on_error=False)
    if not report.success:
        print(f"report_recipes failed (run {report.run_id})", file=sys.stderr)
        return 1
    root = Path(os.environ.get("DYNAMICS_DATA_DIR", "data")).resolve()
    print(f"\nDone in {time.perf_counter() - started:.0f} s: curate_pool, {len(recipes)} recipe(s) × "
          f"{len(epochs)} epoch(s), learning curves, comparison.")
    print(f"  reports:    {root / 'artifacts' / 'eval_report'}/<recipe>/<epoch>/report.md (+ accuracy_vs_frequency.png)")
    print(f"  curves:     {root / 'artifacts' / 'learning_curve' / 'learning_curve.png'}")
    print(f"  comparison: {root / 'artifacts' / 'comparison_report' / 'comparison.md'} (+ comparison.png)")
    print(f"  instance:   {os.environ['DAGSTER_HOME']}")
    print("  Dagster UI: bash scripts/ui.sh  → http://127.0.0.1:3000 (asset lineage, runs, metadata)")
    print(f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow' / 'mlflow.db'} "
          "--host 127.0.0.1 --port 5000")
    return 0


def _materialized(instance: dg.DagsterInstance, asset: str, key: dg.MultiPartitionKey) -> bool:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]), limit=1).records
    return bool(records)


if __name__ == "__main__":
    sys.exit(main())
