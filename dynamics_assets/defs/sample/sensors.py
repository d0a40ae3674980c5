"""After a re-curation, the coming epochs' plans are redrawn."""
from __future__ import annotations

import dagster as dg

from dynamics_assets.defs.experiments import EXPERIMENTS
from dynamics_assets.defs.jobs import epoch_plan_job
from dynamics_assets.defs.recuration import coming_plan_keys


@dg.asset_sensor(asset_key=dg.AssetKey("cluster_stats"), name="replan_after_recuration", job=epoch_plan_job,
                 default_status=dg.DefaultSensorStatus.RUNNING)
def replan_after_recuration(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """After the pool's statistics change (a re-curation), the plans of the coming epochs are stale:
    for the recipes named under ``recuration.recipes`` in experiments.yaml that have started, every
    epoch without a checkpoint gets its plan redrawn (one draw_epoch_plan run each)."""
    keys = coming_plan_keys(context.instance, EXPERIMENTS.recuration_keys)
    if not keys:
        return dg.SkipReason(f"no coming epoch to redraw for {EXPERIMENTS.recuration_keys} "
                             "(not started, or every epoch trained)")
    return [dg.RunRequest(partition_key=key, run_key=f"replan:{asset_event.run_id}:{key}",
                          tags={"dynamics/trigger": "recuration"}) for key in keys]

