"""The records the lineage's stages hand each other: small, frozen, typed — paths and counts, never data.

    raw_shards       → RawShards        the shard folder (and, for the synthetic pool, its eval set)
    raw_pairs        → PoolManifest     the manifest of every pair: kept and quarantined
    reference_model  → ReferenceModel   the pool-trained open_clip encoder
    curated_model    → CuratedModel     the open_clip model trained on the user's curated set (DFN's filter)
    dfn_scores       → DFNScores        the curated model's image·text score of every pool pair
    curation_targets → CurationTargets  the pool's class names and the target set's embeddings
    pair_embeddings  → PoolEmbeddings   the embeddings and the encoder that made them
    shard_embeddings → ShardIngest      one landed shard, manifested and embedded alone
    clusters         → PoolClusters     the clustered pool; its ``pool_version`` is what plans index
    cluster_stats    → ClusterStats     the per-cluster statistics table
    sample_plan      → PlanRecord       one recipe × epoch plan, with the pool version it was drawn on
    feedback_plan    → PlanRecord       a feedback recipe's plan, drawn with epoch e−1's per-cluster loss
    checkpoint       → CheckpointRecord one recipe × epoch checkpoint, with cumulative compute
    eval_report      → EvalRecord       one recipe × epoch report and its metrics
    webdataset_export → ExportRecord    one recipe × epoch plan as webdataset shards for open_clip_train
    datacomp_subset  → SubsetRecord     one recipe × epoch plan as a DataComp subset file
    laion_metadata   → LaionMetadataRecord one recipe × epoch plan as the pool's metadata parquet (img2dataset)
    learning_curve / comparison_report → ReportRecord

Records import nothing heavy (no torch, faiss or dagster), so the Dagster code location loads fast
and a Ray worker or a GPU box can use them as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from dynamics_assets.core.model.spec import EncoderSpec


@dataclass(frozen=True)
class RawShards:
    source: str
    shards_dir: str  # the shards' folder; for a pool that ships embeddings, its folder
    shards: tuple[str, ...]
    eval_dir: Optional[str] = None  # the synthetic pool's held-out set, or the user's labelled set
    eval_kind: Optional[str] = None  # "synthetic" | "labelled" | None (retrieval on the pool's held-out slice only)
    ground_truth: Optional[str] = None  # synthetic pool: the generator's concept of every pair
    dirt_counts: Mapping[str, int] = field(default_factory=dict)  # synthetic pool: the planted dirt
    layout: str = "webdataset"  # webdataset shards, or a pool that ships embeddings: "datacomp" | "laion"
    embedding: Optional[str] = None  # datacomp: which embeddings ("b32" | "l14")
    images_dir: Optional[str] = None  # a pool of embeddings: shards holding its images (joined by uid)
    curated_dir: Optional[str] = None  # the user's curated set (shards it trusts), checked not to overlap the eval set
    target_dir: Optional[str] = None  # the user's target set: images and/or a classnames.txt


@dataclass(frozen=True)
class PoolManifest:
    manifest_dir: str
    shards_dir: str
    n_ok: int
    n_total: int
    by_reason: Mapping[str, int]
    eval_dir: Optional[str] = None
    eval_kind: Optional[str] = None
    has_images: bool = True  # False for a pool that ships embeddings only
    embeddings_dir: Optional[str] = None  # set when the pool ships its embeddings (committed with the manifest)
    encoder: Optional[EncoderSpec] = None  # ... and the encoder they came from
    curated_dir: Optional[str] = None  # raw_shards' curated and target sets, passed on
    target_dir: Optional[str] = None
    ground_truth: Optional[str] = None  # synthetic pool: the generator's ground truth (dirt of every pair)

    @property
    def n_quarantined(self) -> int:
        return self.n_total - self.n_ok


@dataclass(frozen=True)
class ReferenceModel:
    checkpoint: Optional[str]  # None: not trained (the pool ships its embeddings and has no images)
    model_name: str
    steps: int
    final_loss: float
    reused: bool
    trained_on: str = "pool"  # 'pool' (the raw pairs) or 'curated' (the curated set: reference_model.train_on)
    manifest_dir: Optional[str] = None  # the manifest it was trained on (the pool's or the curated set's)
    samples_seen: int = 0
    flops: float = 0.0  # training FLOPs ≈ 3 × forward FLOPs per pair × samples seen
    seconds: float = 0.0

    @property
    def encoder(self) -> EncoderSpec:
        return EncoderSpec(self.model_name, self.checkpoint)


@dataclass(frozen=True)
class CuratedModel:
    checkpoint: Optional[str]  # None: no curated set was named (raw_shards.curated)
    model_name: str
    manifest_dir: Optional[str] = None  # the curated set's manifest (its pairs, quarantine)
    shards_dir: Optional[str] = None
    pairs: int = 0
    steps: int = 0
    samples_seen: int = 0
    flops: float = 0.0  # training FLOPs ≈ 3 × forward FLOPs per pair × samples seen
    seconds: float = 0.0
    reused: bool = False

    @property
    def encoder(self) -> EncoderSpec:
        return EncoderSpec(self.model_name, self.checkpoint)


@dataclass(frozen=True)
class DFNScores:
    scores_dir: Optional[str]  # the committed version holding scores.npy (float32, pool order); None: none
    source: str  # "curated model" | "shipped clip_b32_similarity_score" | "none"
    n: int = 0


@dataclass(frozen=True)
class CurationTargets:
    targets_dir: Optional[str]  # the committed version: classnames.txt and/or target.npy; None: nothing to write
    classnames: Optional[str] = None  # its classnames.txt (the pool's concepts, or the user's)
    target_embeddings: Optional[str] = None  # its target.npy (the target images in the pool's encoder space)
    classnames_source: str = ""
    target_source: str = ""


@dataclass(frozen=True)
class PoolEmbeddings:
    embeddings_dir: str
    encoder: EncoderSpec  # the space the pool's embeddings (and its centroids) live in
    n: int
    dim: int


@dataclass(frozen=True)
class ShardIngest:
    shard: str
    pairs: int
    ok: int
    pairs_embedded: int


@dataclass(frozen=True)
class PoolClusters:
    clusters_dir: str
    k: int
    n: int
    pool_version: str  # identity of the clustered pool: what every plan's indices refer to
    manifest_dir: str  # the pool's pairs, in the order the indices count them
    shards_dir: str
    embeddings_dir: str
    encoder: EncoderSpec
    has_images: bool = True


@dataclass(frozen=True)
class ClusterStats:
    stats_path: str
    clusters: int
    empty_clusters: int


@dataclass(frozen=True)
class PlanRecord:
    plan_dir: str
    recipe: str
    epoch: int
    realised: int
    pool_version: str


@dataclass(frozen=True)
class CheckpointRecord:
    checkpoint: str
    model_name: str
    recipe: str
    epoch: int
    pool_version: str
    samples_seen: int  # cumulative over the recipe's epochs, like the two totals below
    device_seconds: float
    scoring_flops: float
    global_step: int
    final_loss: float
    cluster_loss: Optional[str] = None  # the epoch's per-cluster training loss (cluster_loss.npy: (2, K) sum, draws)
    plan_dir: Optional[str] = None  # the plan trained (sample_plan's, or feedback_plan's for a feedback recipe)
    # training FLOPs of the curated model the recipe's online selection scores with (training
    # reference: curated); a one-off cost, counted once per recipe (not per epoch), 0 otherwise
    curation_flops: float = 0.0


@dataclass(frozen=True)
class EvalRecord:
    report_dir: str
    recipe: str
    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class ReportRecord:
    report_dir: str
    entries: int


@dataclass(frozen=True)
class ExportRecord:
    export_dir: str  # the committed version directory
    recipe: str
    epoch: int
    samples: int  # repeats counted: the plan's realised size
    distinct: int
    shards: int
    train_data: str  # the shards' brace pattern
    command: str  # the open_clip_train command line that trains on them
    pool_version: str


@dataclass(frozen=True)
class SubsetRecord:
    subset_path: str  # the sorted np.dtype("u8,u8") (f0, f1) .npy, a uid repeated k times for multiplicity k
    recipe: str
    epoch: int
    rows: int
    distinct: int
    pool_version: str


@dataclass(frozen=True)
class LaionMetadataRecord:
    metadata_path: str  # the plan's rows of the pool's metadata parquets, + count (multiplicity) and sample_id
    recipe: str
    epoch: int
    rows: int  # distinct samples: one row each
    samples: int  # the counts' sum
    url_col: str
    caption_col: str
    command: str  # the img2dataset command that downloads it
    pool_version: str
