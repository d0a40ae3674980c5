"""embed: the pool's embeddings are checked before anything clusters or trains on them (blocking)."""

import dagster as dg

from dynamics_assets.core.records import PoolEmbeddings
from dynamics_assets.defs.metadata import check_result


@dg.asset_check(asset="pair_embeddings", blocking=True,
                description="Every shard's image and text embeddings are finite, unit-norm (|‖x‖−1| < 1e-2 "
                            "in float16) and of the record's dimension; zero rows listed in a shard's "
                            "invalid_rows are a warning (quarantined at clustering).")
def embeddings_finite_unit_norm(pair_embeddings: PoolEmbeddings) -> dg.AssetCheckResult:
    from dynamics_assets.core.embed.validate import embedding_findings

    return check_result(embedding_findings(pair_embeddings.embeddings_dir, pair_embeddings.dim, pair_embeddings.n))
