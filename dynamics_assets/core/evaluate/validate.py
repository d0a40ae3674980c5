"""Invariants of an eval report: every metric a number in [0, 1], NaN only for an empty bucket."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq

from dynamics_assets.core.io.findings import Findings
from dynamics_assets.core.evaluate.report import BUCKETS


def empty_buckets(per_concept_path: Path) -> set[str]:
    """Frequency buckets without a single eval image (their accuracy is undefined)."""
    t = pq.read_table(per_concept_path, columns=["bucket", "n"]).to_pydict()
    present = {b for b, n in zip(t["bucket"], t["n"]) if n > 0}
    return set(BUCKETS) - present


def eval_report_findings(report_dir: str | Path) -> Findings:
    """Every metric (``compute/*`` aside) a number in [0, 1]; NaN (null) only for an empty bucket."""
    f = Findings()
    report_dir = Path(report_dir)
    metrics = json.loads((report_dir / "metrics.json").read_text())
    empty = empty_buckets(report_dir / "per_concept.parquet")
    may_be_nan = {f"zero_shot/{b}" for b in empty}
    checked = {k: v for k, v in metrics.items() if not k.startswith("compute/")}
    for key, value in checked.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            f.require(key in may_be_nan, "nan_metric", f"{key} is NaN but its bucket is not empty")
        elif not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            f.error("metric_out_of_range", 1, [f"{key} = {value!r}"])
    f.facts.update(metrics_checked=len(checked), empty_buckets=", ".join(sorted(empty)) or "none")
    return f

