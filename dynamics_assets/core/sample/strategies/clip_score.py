"""CLIP-score filtering — the DataComp baseline.

Formula: s_i = cos(f_img(x_i), f_txt(t_i)) with the reference model's image and text embeddings
(the EmbeddingStore's ``image.npy`` and ``text.npy``, L2-normalised rows, so s_i is their row-wise
dot product, computed in float32); keep the round(f · N_valid) samples with the largest s_i, ties
to the lower index; quarantined samples (cluster -1) are never kept. Default f = 0.3. In a
``Compose`` the count refers to the original pool (``pool.budget_base``). Static.
Scores are streamed shard slice by shard slice (``ROWS`` rows at a time) and recomputed on each of
the few passes of the exact selection (``keep_top``), so memory is O(ROWS · D) whatever N.
Which model scores: the encoder of the pool's embeddings — the reference model, trained on the
raw pool by default, or on the curated set with ``reference_model.train_on: curated`` (``--reference-on
curated``; then clusters and every embedding-based strategy use that model too). CLIP-score with a
model trained on the curated set *without* changing the pool's embeddings is the ``dfn`` strategy
(the ``curated_model``'s image·text cosine, ``dfn_scores``): same rule, another scorer.
Source: Gadre et al., "DataComp: In search of the next generation of multimodal datasets",
NeurIPS 2023 (CLIP score top 30%); Hessel et al., "CLIPScore", EMNLP 2021.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.sample.base import ClusterPool, Plan, DataclassParams, resolve_budget
from dynamics_assets.core.sample.pruning import ScoreChunks, embedding_store, keep_top, plan_from_mask, require

ROWS = 16384


def row_dots(image: EmbeddingStore, text: EmbeddingStore, start: int, stop: int) -> np.ndarray:
    """float32 <image_i, text_i> for pool rows [start, stop), read shard slice by shard slice."""
    out = np.empty(stop - start, dtype=np.float32)
    first = int(np.searchsorted(image.offsets, start, side="right")) - 1
    for s in range(first, len(image.shards)):
        offset, end = int(image.offsets[s]), int(image.offsets[s + 1])
        if offset >= stop:
            break
        lo, hi = max(start, offset) - offset, min(stop, end) - offset
        a = np.load(image.embedding_path(image.shards[s]), mmap_mode="r")[lo:hi].astype(np.float32)
        b = np.load(text.embedding_path(text.shards[s]), mmap_mode="r")[lo:hi].astype(np.float32)
        out[offset + lo - start:offset + hi - start] = np.einsum("ij,ij->i", a, b)
    return out


def clip_scores(pool: ClusterPool) -> ScoreChunks:
    """(start, ids, image·text cosine) chunks over the pool."""
    image, text = embedding_store(pool, "image"), embedding_store(pool, "text")
    if image.shards != text.shards or not np.array_equal(image.counts, text.counts) or image.dim != text.dim:
        raise ValueError(f"{pool.embeddings_dir}: image.npy and text.npy differ in shards, rows or dimension")

    def chunks():
        for start, ids in pool.chunks(ROWS):
            yield start, ids, row_dots(image, text, start, start + len(ids))
    return chunks


@dataclass(frozen=True)
class ClipScoreFilter(DataclassParams):
    fraction: float = 0.3
    name: str = "clip_score"
    dynamic: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}")

    def keep_mask(self, pool: ClusterPool, *, seed: int) -> np.ndarray:
        require(pool, "CLIP-score filtering", embeddings=True)
        count = resolve_budget(float(self.fraction), pool.budget_base)
        return keep_top(pool, clip_scores(pool), np.array([count]), largest=True,
                        stratum_of_cluster=np.zeros(pool.n_clusters, dtype=np.int64),
                        source=f"image·text cosine of {pool.embeddings_dir}")

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        return plan_from_mask(pool, self.keep_mask(pool, seed=seed), expected=None,
                              meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch})
