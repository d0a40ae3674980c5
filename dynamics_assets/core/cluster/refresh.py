"""Re-curation when the pool grows: keep the centroids and assign, or re-train them.

When new shards join the pool, the clusters are refreshed in one of two ways:

* **assign** (the default while the new data fits): the centroids are kept and every row is
  assigned to its nearest one again. Old rows keep their cluster ids (same centroids, same
  nearest neighbour), so the statistics, plans and learning curves of earlier epochs stay
  comparable with the coming ones, and the cost is one nearest-centroid search per row instead of
  a k-means fit.
* **retrain**: a fresh spherical k-means on the grown pool. Taken when the new data does not fit
  the centroids: rows of concepts the centroids never saw would be absorbed by whichever cluster
  is nearest, inflating it, and DynamiCS would then *down-sample* the very long-tail data it
  exists to up-sample.

"Does not fit" is measured as drift, the relative rise of the quantisation error on the rows
added since the centroids were fitted::

    drift = mean_{i in new} (1 - <e_i, mu_c(i)>) / mean_{i in fit} (1 - <e_i, mu_c(i)>) - 1

with ``mu_c(i)`` the nearest centroid of row ``i`` and ``fit`` the rows the centroids were last
assigned with at training time (their mean is recorded in ``fit.json``). New rows are those of
shards absent from ``fit.json``, so drift accumulates over successive assign-only refreshes until
a re-training resets it. Re-training is also forced when the clustering parameters, the encoder
or a fitted shard changed (a changed encoder moves every embedding into another space).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import write_json
from dynamics_assets.core.embed.store import EmbeddingStore

FIT_NAME = "fit.json"
RefreshMode = Literal["auto", "assign", "retrain"]
REFRESH_MODES = ("auto", "assign", "retrain")


@dataclass(frozen=True)
class FitRecord:
    """What a set of centroids was trained on."""

    params: dict[str, Any]  # k, sample size, iterations, seed, embedding kind, merge threshold
    encoder: dict[str, Any]  # identity of the encoder that made the embeddings
    shards: dict[str, int]  # shard -> embedded rows at fit time
    mean_distance: float  # mean 1 - cos to the nearest centroid over the fitted rows

    def write(self, clusters_dir: str | Path) -> None:
        """Write ``fit.json`` into a directory being written (``kmeans.assign(..., fit=...)`` does
        this in its staging directory, so the record is part of the clusters version)."""
        if versions.is_version_dir(clusters_dir) or (Path(clusters_dir) / versions.CURRENT).exists():
            raise ValueError(f"{clusters_dir}: committed versions are immutable; pass the record to "
                             f"kmeans.assign(..., fit=record) instead")
        write_json(Path(clusters_dir) / FIT_NAME, asdict(self))

    @classmethod
    def read(cls, clusters_dir: str | Path) -> "FitRecord | None":
        """The record of a clusters version (an artefact root reads its current version)."""
        clusters_dir = versions.resolve(clusters_dir)
        path = clusters_dir / FIT_NAME
        if not path.exists() or not (clusters_dir / "centroids.npy").exists():
            return None
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class RefreshDecision:
    action: Literal["assign", "retrain"]
    reason: str
    new_shards: list[str] = field(default_factory=list)
    new_rows: int = 0
    drift: float | None = None  # None when not measured

    def metadata(self) -> dict[str, Any]:
        return {"refresh": self.action, "refresh_reason": self.reason, "new_shards": len(self.new_shards),
                "new_rows": self.new_rows, **({"drift": self.drift} if self.drift is not None else {})}


def encoder_identity(store: EmbeddingStore) -> dict[str, Any]:
    """The encoder recorded in every shard's meta.json; a pool embedded by two encoders is refused."""
    identities = {}
    for shard in store.shards:
        meta_path = store.root / shard / "meta.json"
        identity = json.loads(meta_path.read_text()).get("encoder") if meta_path.exists() else None
        identities.setdefault(json.dumps(identity, sort_keys=True), shard)
    if len(identities) > 1:
        raise ValueError(f"{store.root}: shards were embedded by different encoders "
                         f"(e.g. {sorted(identities.values())[:2]}); re-embed the pool with one encoder")
    return json.loads(next(iter(identities)))


def decide(
    mode: RefreshMode,
    previous: FitRecord | None,
    params: dict[str, Any],
    encoder: dict[str, Any],
    shards: dict[str, int],
    drift_of: Callable[[list[str]], tuple[int, float]],
    threshold: float,
) -> RefreshDecision:
    """Assign to the previous centroids or re-train. ``shards``: the pool now (shard -> rows);
    ``drift_of(new_shards)`` returns ``(new rows, their mean distance)`` to the previous centroids.
    ``mode="assign"`` refuses (ValueError) when the previous centroids cannot be reused at all."""
    if mode not in REFRESH_MODES:
        raise ValueError(f"refresh mode must be one of {REFRESH_MODES}, got {mode!r}")
    if not threshold >= 0:
        raise ValueError(f"drift threshold must be >= 0, got {threshold}")
    if mode == "retrain":
        return RefreshDecision("retrain", "re-training was asked for")
    blocker = _incompatibility(previous, params, encoder, shards)
    if blocker is not None:
        if mode == "assign":
            raise ValueError(f"cannot assign to the previous centroids: {blocker}")
        return RefreshDecision("retrain", blocker)
    new = sorted(set(shards) - set(previous.shards))
    if not new:
        return RefreshDecision("assign", "no new shards since the centroids were fitted", drift=0.0)
    rows, mean_new = drift_of(new)
    if rows == 0 or math.isnan(mean_new):
        return RefreshDecision("assign", "the new shards hold no valid row", new, 0, 0.0)
    drift = mean_new / previous.mean_distance - 1.0 if previous.mean_distance > 0 else math.inf
    if mode == "auto" and drift > threshold:
        return RefreshDecision("retrain", f"drift {drift:.3f} > threshold {threshold}", new, rows, drift)
    why = "assignment was asked for" if mode == "assign" else f"drift {drift:.3f} <= threshold {threshold}"
    return RefreshDecision("assign", why, new, rows, drift)


def _incompatibility(previous: FitRecord | None, params: dict[str, Any], encoder: dict[str, Any],
                     shards: dict[str, int]) -> str | None:
    if previous is None:
        return "no previous centroids"
    if previous.params != params:
        changed = sorted(k for k in set(params) | set(previous.params) if params.get(k) != previous.params.get(k))
        return f"clustering parameters changed: {', '.join(changed)}"
    if previous.encoder != encoder:
        return "the embeddings come from another encoder"
    for shard, rows in previous.shards.items():
        if shard not in shards:
            return f"fitted shard {shard} left the pool"
        if shards[shard] != rows:
            return f"fitted shard {shard} changed ({rows} -> {shards[shard]} rows)"
    return None
