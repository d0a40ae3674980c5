"""The clustering parameters and the pool-size rule for k (light: no faiss, importable by the
Dagster layer when the code location loads)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per centroid


def k_for(n: int) -> int:
    """k for a pool of ``n`` embedded pairs when none is set: round(0.73·√n), at most n/39 (faiss's
    minimum of 39 training points per centroid), at least 1. The default pool's 18,900 pairs → 100;
    782 → 20; 10⁶ → 730; 10⁸ → 7,300 (√n growth keeps clusters' mean size ~1.4·√n)."""
    return max(1, min(round(0.73 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def k_warning(k: int, n: int) -> str | None:
    if k > n // MIN_POINTS_PER_CENTROID:
        return (f"k = {k} is above N/{MIN_POINTS_PER_CENTROID} = {n // MIN_POINTS_PER_CENTROID} for this pool of "
                f"{n} pairs: faiss fits each centroid on fewer than {MIN_POINTS_PER_CENTROID} points and the "
                f"clusters are noise; the rule for this pool would give k = {k_for(n)}")
    return None


@dataclass(frozen=True)
class ClusterParams:
    """k centroids fitted on ``sample_size`` rows of the ``embedding`` kind ("image" or "text");
    ``k`` empty: the pool-size rule ``k_for`` (recorded as the rule, so a re-curation of a grown
    pool keeps its centroids unless the new rows drift); ``merge_threshold``: merge centroids
    whose cosine is at least it (None: no merging)."""

    k: int | None = None
    sample_size: int = 100_000
    niter: int = 20
    seed: int = 0
    embedding: str = "image"
    merge_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.embedding not in ("image", "text"):
            raise ValueError(f"clusters.embedding must be 'image' or 'text', got {self.embedding!r}")

    def fit_params(self) -> dict[str, Any]:
        return {"k": self.k, "sample_size": self.sample_size, "niter": self.niter, "seed": self.seed,
                "embedding": self.embedding, "merge_threshold": self.merge_threshold}


