"""train: a checkpoint loads safely and is finite before the next epoch starts from it (blocking)."""

import dagster as dg

from dynamics_assets.core.records import CheckpointRecord
from dynamics_assets.defs.experiments import recipe_epoch_partitions
from dynamics_assets.defs.metadata import check_result


@dg.asset_check(asset="checkpoint", blocking=True, partitions_def=recipe_epoch_partitions,
                description="The epoch's checkpoint loads with torch.load(weights_only=True) and into open_clip; "
                            "its weights and last loss (extra.last_loss) are finite.")
def checkpoint_loads(checkpoint: CheckpointRecord) -> dg.AssetCheckResult:
    from dynamics_assets.core.train.validate import checkpoint_findings

    return check_result(checkpoint_findings(checkpoint.checkpoint, checkpoint.model_name))
