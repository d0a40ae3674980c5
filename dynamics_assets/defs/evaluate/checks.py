"""evaluate: every reported metric lies in [0, 1] (not blocking: nothing trains on a report)."""

import dagster as dg

from dynamics_assets.core.records import EvalRecord
from dynamics_assets.defs.experiments import recipe_epoch_partitions
from dynamics_assets.defs.metadata import check_result


@dg.asset_check(asset="eval_report", blocking=False, partitions_def=recipe_epoch_partitions,
                description="Every metric in metrics.json (compute/* aside) lies in [0, 1]; NaN only for a "
                            "frequency bucket without eval images. Not blocking: nothing trains on a report.")
def metrics_in_unit_range(eval_report: EvalRecord) -> dg.AssetCheckResult:
    from dynamics_assets.core.evaluate.validate import eval_report_findings

    return check_result(eval_report_findings(eval_report.report_dir))
