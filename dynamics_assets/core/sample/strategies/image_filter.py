"""Image-based filtering — DataComp's baseline that keeps the pool clusters nearest a target set.

Formula (the rule): with the pool's k-means centroids μ_1..μ_K (the ``clusters`` stage, the pool's image
embeddings) and the target set's image embeddings t_1..t_M in the same encoder space,
  C* = ∪_m { the ``neighbours`` clusters c with the largest cos(t_m, μ_c) }     (DataComp: 1)
and keep sample i iff cluster(i) ∈ C* and its caption passes DataComp's caption filter for this
baseline: language = ``language`` (default 'en'; null: none), ≥ ``min_words`` words (default 2,
DataComp's "more than one token") and ≥ ``min_chars`` characters (default 6). With ``language:
null, min_words: 0, min_chars: 0`` no manifest is read. Ties in cos go to the lower cluster id.
Target embeddings (``target_embeddings``): a ``.npy`` of shape M × D (M ≥ 1) in the pool's encoder
space, rows L2-normalised here; a missing file, an empty or non-2-D array, a dimension other than
the centroids', or a non-finite / zero row is refused naming the file. The centroids are the
pool's own (K = the clustering's k; DataComp used 100,000 clusters of OpenAI L/14 embeddings for
the 12.8M–12.8B pools and ImageNet-1k / 21k training images as the target set).
Quarantined samples are never kept. Static; every survivor once (compose with ``uniform`` to fill
a budget). DataComp's best baseline, image-based ∩ CLIP score top 30%, is the composition
``clip_score`` (fraction 0.3 of the whole pool) → ``image_filter``: this rule is a per-sample
predicate (fixed centroids, own caption), so applying it to CLIP score's survivors gives exactly
the intersection. The other order is not the intersection (CLIP score would rank only the
image filter's survivors).

DataComp, medium scale (128M pool, 128M samples seen, ViT-B/32; Table 3), ImageNet / average of
38 tasks: no filtering 0.176 / 0.258; image-based 0.268 / 0.312 (29M of 128M kept); image-based ∩
CLIP score (L/14 top 30%) 0.297 / 0.328 (14M kept), the best ImageNet figure of that table.
Source: Gadre et al., "DataComp", NeurIPS 2023 (section 4.1; code ``baselines/apply_filter.py``,
``load_uids_with_image_filter`` and ``caption_filter``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynamics_assets.core.sample.base import ClusterPool, DataclassParams
from dynamics_assets.core.sample.pruning import MaskFilter, require, valid_mask
from dynamics_assets.core.sample.spec import check_filter_values
from dynamics_assets.core.sample.strategies.basic_filter import apply_rules, caption_rules, check_language, refuse_empty


def read_targets(path: str | Path) -> np.ndarray:
    """float32 unit rows of the target embeddings file (see the module docstring for what is refused)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"target_embeddings: {p}: file not found (a .npy of the target set's image embeddings)")
    try:
        x = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"target_embeddings: {p} is not a readable .npy ({e})") from None
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"target_embeddings: {p} holds no embeddings (shape {x.shape}; expected M × D with M ≥ 1): "
                         "the target set has no image embeddings")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"target_embeddings: {p} has dtype {x.dtype}, expected floating-point embeddings")
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise ValueError(f"target_embeddings: {p}: {len(bad)} row(s) non-finite or zero, first row {bad[0]}")
    return x / norms[:, None]


def target_clusters(centroids: np.ndarray, targets: np.ndarray, neighbours: int) -> np.ndarray:
    """Sorted ids of the clusters among the ``neighbours`` nearest (cosine) of some target."""
    mu = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    chosen = np.zeros(len(mu), dtype=bool)
    for s in range(0, len(targets), 4096):
        sim = targets[s:s + 4096] @ mu.T
        # stable order of −sim: ties to the lower cluster id
        chosen[np.argsort(-sim, axis=1, kind="stable")[:, :neighbours].ravel()] = True
    return np.flatnonzero(chosen)


@dataclass(frozen=True)
class ImageFilter(MaskFilter, DataclassParams):
    target_embeddings: str | None = None
    neighbours: int = 1
    language: str | None = "en"
    min_words: int = 2
    min_chars: int = 6
    name: str = "image_filter"
    dynamic: bool = False

    def __post_init__(self) -> None:
        check_filter_values(self.name, self.params(), f"strategy {self.name!r}")
        check_language(self.name, self.language)
        read_targets(self.target_embeddings)  # refused when built, not at the first draw

    def keep_and_meta(self, pool: ClusterPool, *, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        require(pool, "image-based filtering", centroids=True)
        targets = read_targets(self.target_embeddings)
        if targets.shape[1] != pool.centroids.shape[1]:
            raise ValueError(f"target_embeddings: {self.target_embeddings} has dimension {targets.shape[1]}, the pool's "
                             f"centroids {pool.centroids.shape[1]}: embed the target set with the pool's encoder")
        if self.neighbours > pool.n_clusters:
            raise ValueError(f"strategy {self.name!r}.neighbours: {self.neighbours} exceeds the pool's "
                             f"{pool.n_clusters} clusters")
        chosen = target_clusters(pool.centroids, targets, self.neighbours)
        in_chosen = np.zeros(pool.n_clusters + 1, dtype=bool)
        in_chosen[chosen + 1] = True  # index 0: cluster -1, never chosen
        near = np.zeros(len(pool), dtype=bool)
        for start, ids in pool.chunks():
            near[start:start + len(ids)] = in_chosen[ids + 1]
        failed = {"cluster": int((valid_mask(pool) & ~near).sum())}
        if self.language is not None or self.min_words > 0 or self.min_chars > 0:
            captions_ok, caption_failed = apply_rules(
                pool, '"caption"', lambda t: caption_rules(t["caption"].to_pylist(), self.language,
                                                           self.min_words, self.min_chars), strategy=self.name)
            failed.update(caption_failed)
            keep = near & captions_ok
        else:
            keep = near
        refuse_empty(self.name, pool, keep, failed)
        return keep, {"image_filter": {"targets": int(len(targets)), "clusters_chosen": int(len(chosen)),
                                       "clusters": [int(c) for c in chosen[:1000]],  # the first 1000 ids
                                       "kept": int(keep.sum()), "failed": failed}}

