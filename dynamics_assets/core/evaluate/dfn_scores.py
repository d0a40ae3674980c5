"""The ``dfn_scores`` step's core: the data filtering network's score of every pool pair, committed
as a version pinned to the manifest (and the curated model), with the filter's quality against the
synthetic pool's ground truth and the curated model's own zero-shot accuracy, kept apart.

Without a curated model, a DataComp pool's shipped ``clip_b32_similarity_score`` stands in
(``shipped_scores``); without either, nothing is scored (``DfnScoring.scores_dir`` None)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from dynamics_assets.core.records import CuratedModel, PoolManifest

SKIPPED = "no curated model (raw_shards.curated, --curated) and no score shipped with the pool: the dfn strategy cannot run"
SHIPPED = "shipped clip_b32_similarity_score (DataComp's OpenAI B/32 score: no curated model; not a DFN)"


def shipped_scores(manifest_dir: str):
    """DataComp's shipped clip_b32_similarity_score of every ok pair in pool order, or None when
    some pair lacks it."""
    import duckdb
    import numpy as np

    from dynamics_assets.core.ingest.manifest import manifest_files

    sql = ("SELECT TRY_CAST(json_extract_string(meta_json, '$.clip_b32_similarity_score') AS DOUBLE) "
           "FROM read_parquet(?) WHERE status = 'ok' ORDER BY \"row\"")
    parts = []
    with duckdb.connect() as con:
        for _, path in manifest_files(manifest_dir):
            parts.append(np.array([r[0] if r[0] is not None else np.nan
                                   for r in con.sql(sql, params=[str(path)]).fetchall()], dtype=np.float64))
    scores = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    if not len(scores) or not np.isfinite(scores).all():
        return None
    return scores


@dataclass(frozen=True)
class DfnScoring:
    scores_dir: Optional[Path]  # the committed version (None: nothing to score with)
    source: str
    n: int = 0
    scoring: dict[str, Any] = field(default_factory=dict)  # the curated model's pass: unscored, mean, quantiles, …
    quality: dict[str, Any] = field(default_factory=dict)  # filter_quality against the ground truth, less by_dirt
    by_dirt: dict[str, Any] = field(default_factory=dict)
    zero_shot: dict[str, float] = field(default_factory=dict)

    def filter_facts(self) -> dict[str, Any]:
        """The filter's quality (``filter/*``, finite values), or why there is none."""
        from dynamics_assets.core.evaluate.dfn import finite

        if not self.quality:
            return {"filter": "no ground truth (only the synthetic pool knows which pairs are dirty)"}
        return {f"filter/{k}": v for k, v in finite(self.quality).items()}

    def zero_shot_facts(self) -> dict[str, Any]:
        """The curated model's own zero-shot accuracy (``model/zero_shot_*``), or why there is none."""
        if not self.zero_shot:
            return {"model/zero_shot": "no curated model or no labelled eval set"}
        return {f"model/zero_shot_{k}": v for k, v in self.zero_shot.items()}

    def by_dirt_rows(self) -> list[tuple]:
        """(dirt, pairs, mean score, kept share) of each kind of planted dirt."""
        return [(d, v["pairs"], round(v["mean_score"], 4), round(v["kept_share"], 3)) for d, v in self.by_dirt.items()]


def score_pairs(raw_pairs: PoolManifest, curated_model: CuratedModel, root: str | Path, embeddings_root: str | Path,
                *, fraction: float, batch_size: int, device: Callable[[], str], precision: Callable[[], str],
                num_workers: int, engine: Callable[[], AbstractContextManager]) -> DfnScoring:
    """Every pool pair's score (the image·text cosine in the curated model's space, embedded and
    scored shard by shard on ``engine()``; or the shipped score), committed under ``root`` with
    dfn_meta.json, filter_quality.json (a pool with ground truth: at keep ``fraction``) and
    zero_shot.json (a curated model and a labelled eval set). ``device`` and ``precision`` are asked
    for only when a curated model scores."""
    from dynamics_assets.core.evaluate import dfn
    from dynamics_assets.core.ingest.manifest import pool_identity
    from dynamics_assets.core.io.atomic import write_json
    from dynamics_assets.core.io.versions import Artefact, pinned, resolve
    from dynamics_assets.core.model.spec import EncoderSpec

    manifest = str(resolve(raw_pairs.manifest_dir))
    if curated_model.checkpoint is None:
        shipped = shipped_scores(manifest) if raw_pairs.embeddings_dir else None
        if shipped is None:
            return DfnScoring(None, "none")
        source = SHIPPED
    else:
        source = f"curated model {curated_model.checkpoint}"
    quality, zero_shot, scoring = {}, {}, {}
    with Artefact(root).write(refs=pinned(manifest=manifest)) as staging:
        path = staging / dfn.SCORES_FILE
        if curated_model.checkpoint is None:
            import numpy as np

            from dynamics_assets.core.io.atomic import save_npy

            save_npy(path, shipped.astype(np.float32))
            n = len(shipped)
        else:
            staging.refs.update(pinned(curated_model=str(Path(curated_model.checkpoint).parent)))
            spec = EncoderSpec(curated_model.model_name, curated_model.checkpoint, precision=precision())
            with engine() as eng:
                summary, emb = dfn.score_pool(spec, manifest, raw_pairs.shards_dir, embeddings_root, path,
                                              device=device(), batch_size=batch_size, num_workers=num_workers,
                                              engine=eng)
            n = summary.n
            scoring = {"unscored (image did not decode)": summary.unscored, "mean_score": summary.mean,
                       "score_quantiles": summary.quantiles, "scoring_seconds": round(emb.seconds, 2),
                       "pairs_embedded": emb.pairs_embedded}
        write_json(staging / "dfn_meta.json", {"source": source, "n": n, "manifest_dir": manifest,
                                                "pool_identity": pool_identity(manifest)})
        if raw_pairs.ground_truth:
            quality = dfn.filter_quality(path, manifest, raw_pairs.ground_truth, fraction)
            write_json(staging / "filter_quality.json", quality)
        if curated_model.checkpoint is not None and raw_pairs.eval_dir:
            zero_shot = dfn.zero_shot_top1(spec, raw_pairs.eval_dir, raw_pairs.eval_kind, device())
            write_json(staging / "zero_shot.json", zero_shot)
    by_dirt = quality.pop("by_dirt", {})
    return DfnScoring(staging.version_dir, source, n, scoring, quality, by_dirt, zero_shot)
