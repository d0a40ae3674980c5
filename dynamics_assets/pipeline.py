"""The main command: materialise the whole lineage on the default data in the local instance.

    bash scripts/pipeline.sh            # (sets DAGSTER_HOME=data/dagster_home and bootstraps)
    python -m dynamics_assets.pipeline  # the same, inside the venv

Runs the ``curate_pool`` job, then ``train_epoch`` (plan → checkpoint → eval report) once per
epoch partition in order, then ``report_learning_curve``, all in the instance's persistent
storage, so every run and materialisation shows up in the Dagster UI.
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
    args = parser.parse_args(argv)
    if "DAGSTER_HOME" not in os.environ:
        sys.exit("DAGSTER_HOME is not set: run `bash scripts/pipeline.sh`, which sets it to data/dagster_home")

    from .defs.partitions import epoch_partitions
    from .definitions import defs

    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    result = defs.resolve_job_def("curate_pool").execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        print(f"curate_pool failed (run {result.run_id})", file=sys.stderr)
        return 1
    keys = args.epochs or epoch_partitions.get_partition_keys()
    epoch_job = defs.resolve_job_def("train_epoch")
    for key in keys:
        r = epoch_job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
        if not r.success:
            print(f"train_epoch {key} failed (run {r.run_id})", file=sys.stderr)
            return 1
        m = r.output_for_node("eval_report")["metrics"]
        print(f"{key}: top-1 {m['zero_shot/top1']:.3f}  head {m['zero_shot/head']:.3f}  "
              f"tail {m['zero_shot/tail']:.3f}  samples seen {int(m['compute/samples_seen']):,}")
    curve = defs.resolve_job_def("report_learning_curve").execute_in_process(instance=instance, raise_on_error=False)
    if not curve.success:
        print(f"report_learning_curve failed (run {curve.run_id})", file=sys.stderr)
        return 1
    root = Path(os.environ.get("DYNAMICS_DATA_DIR", "data")).resolve()
    print(f"\nDone in {time.perf_counter() - started:.0f} s: curate_pool, {len(keys)} epoch(s), learning curve.")
    print(f"  reports:    {root / 'artifacts' / 'eval_report'}/<epoch>/report.md (+ accuracy_vs_frequency.png)")
    print(f"  curve:      {root / 'artifacts' / 'learning_curve' / 'learning_curve.png'}")
    print(f"  instance:   {os.environ['DAGSTER_HOME']}")
    print("  Dagster UI: bash scripts/ui.sh  → http://127.0.0.1:3000 (asset lineage, runs, metadata)")
    print(f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow' / 'mlflow.db'} "
          "--host 127.0.0.1 --port 5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
