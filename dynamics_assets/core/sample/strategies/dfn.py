"""Data filtering network (DFN) — keep the pairs a CLIP trained on curated data scores highest.

Formula: s_i = cos(g_img(x_i), g_txt(t_i)), where g is the *filtering network*: a CLIP trained on a
small high-quality set (the curated set: ``raw_shards.curated``; the ``curated_model`` asset), not
on the pool it judges; keep the round(f · N_valid) samples with the largest s_i (ties to the lower
index), quarantined samples (cluster -1) never. Default f = 0.3. In a ``Compose`` the count refers
to the original pool (``pool.budget_base``). Static; every survivor once.
The scores are a per-pair float32 array aligned with the pool's order (``scores.npy`` of the
``dfn_scores`` artefact, streamed here chunk by chunk: memory O(chunk) whatever N). ``scores``: that
file or the version directory holding it; a recipe may leave it out, and the lineage fills in the
current ``dfn_scores`` version (``defs/sample/assets.py``). A file of another length than the pool, or
one recorded for another pool (its ``dfn_meta.json`` names the pool's manifest identity), is
refused naming both. A pair scored −2 (its image did not decode) ranks below every cosine. On a
DataComp pool without a curated set, ``dfn_scores`` may hold the shipped
``clip_b32_similarity_score`` instead (then this is CLIP-score filtering with OpenAI's B/32, and
the plan's meta says so: ``dfn.source``).
This is the CLIP-score rule (``clip_score``) with the curated model as the scorer: the CLIP-score
filter trained on the curated set (issue 21), kept apart so the pool's own embeddings and clusters
need not change.
Source: Fang et al., "Data Filtering Networks", ICLR 2024 (a filter's quality as a filter differs
from its accuracy as a model; DFN-2B/5B beat LAION-2B and DataComp-1B at equal compute).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.sample.base import CHUNK, ClusterPool, DataclassParams, resolve_budget
from dynamics_assets.core.sample.pruning import MaskFilter, keep_top

SCORES_FILE = "scores.npy"
META_FILE = "dfn_meta.json"


def scores_file(scores: str | Path) -> Path:
    """The score array a ``scores`` setting names (a file, or a folder holding ``scores.npy``)."""
    p = Path(scores)
    if p.is_dir():
        p = p / SCORES_FILE
    if not p.is_file():
        raise FileNotFoundError(f"dfn.scores: {p}: score file not found (materialise dfn_scores: it needs a "
                                "curated set, raw_shards.curated / --curated)")
    return p


def scores_meta(path: Path) -> dict[str, Any]:
    meta = path.parent / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}


@dataclass(frozen=True)
class DFNFilter(MaskFilter, DataclassParams):
    fraction: float = 0.3
    scores: str | None = None
    name: str = "dfn"
    dynamic: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"strategy 'dfn'.fraction: {self.fraction!r} is outside its range: a number in (0, 1] "
                             "(the share of the pool kept; DFN's filtered pools keep 10–30%)")
        if self.scores is None:
            raise ValueError("strategy 'dfn'.scores: no score array: give the dfn_scores version (or its scores.npy), "
                             "or draw through the lineage, which fills in the current dfn_scores")
        scores_file(self.scores)  # refused when built, not at the first draw

    def keep_and_meta(self, pool: ClusterPool, *, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        path = scores_file(self.scores)
        meta = scores_meta(path)
        n = int(np.load(path, mmap_mode="r").shape[0])
        if n != len(pool):
            raise ValueError(f"dfn.scores: {path} has {n} scores, the pool {len(pool)} samples: "
                             "scores of another pool version (re-materialise dfn_scores)")
        if pool.manifest_dir is not None and meta.get("pool_identity"):
            from dynamics_assets.core.ingest.manifest import pool_identity

            if pool_identity(pool.manifest_dir) != meta["pool_identity"]:
                raise ValueError(f"dfn.scores: {path} scored the pool of manifest {meta.get('manifest_dir')}, "
                                 f"this pool is {pool.manifest_dir}: re-materialise dfn_scores")

        def chunks():
            for (start, ids), (_, s) in zip(pool.chunks(CHUNK), npy_chunks(path, CHUNK, np.float32, ndim=1)):
                yield start, ids, s
        count = resolve_budget(float(self.fraction), pool.budget_base)
        count = min(count, pool.n_valid)
        keep = keep_top(pool, chunks, np.array([count]), largest=True,
                        stratum_of_cluster=np.zeros(pool.n_clusters, dtype=np.int64), source=f"DFN scores {path}")
        lowest = min((float(s[keep[start:start + len(ids)]].min(initial=np.inf)) for start, ids, s in chunks()),
                     default=float("nan"))
        return keep, {"dfn": {"scores": str(path), "source": meta.get("source", "unknown"),
                              "kept": int(keep.sum()), "lowest_kept_score": lowest}}
