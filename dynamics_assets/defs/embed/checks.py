"""pair_embeddings: blocking check (a bad embedding would poison clustering and training)."""
from __future__ import annotations

import dagster as dg

from dynamics_assets.defs.metadata import check_result
from dynamics_assets.core.embed.validate import embedding_findings


@dg.asset_check(asset="pair_embeddings", blocking=True,
                description="Every shard's image and text embeddings are finite, unit-norm (|‖x‖−1| < 1e-2 "
                            "in float16) and of the record's dimension; zero rows listed in a shard's "
                            "invalid_rows are a warning (quarantined at clustering).")
def embeddings_finite_unit_norm(pair_embeddings: dict) -> dg.AssetCheckResult:
    return check_result(embedding_findings(pair_embeddings["embeddings_dir"], int(pair_embeddings["dim"]),
                              int(pair_embeddings["n"]))
                        ).result()
