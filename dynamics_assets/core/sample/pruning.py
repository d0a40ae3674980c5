"""Shared machinery of the static pruners: exact per-stratum top-R selection, grouping by cluster,
and turning a keep mask into a plan.

``keep_top``: stratum s (a cluster, or the whole pool) keeps exactly R_s members — those with the
largest scores (or smallest), ties broken by lower index. It is a streaming radix select: the score
is mapped to a 32-bit key whose unsigned order is the float order, then ``32 / b`` passes over the
pool histogram the next b-bit digit of the members still undecided (those whose higher digits equal
the stratum's threshold prefix), fixing the threshold key t_s of every stratum one digit per pass.
A last pass keeps key > t_s, plus the first R_s − #{key > t_s} members with key = t_s in index
order. Working memory: the S × 2^b histogram (b chosen so that it stays ≤ 2^24 counters) plus one
chunk; output: a 1-byte keep mask per sample.

``members_by_cluster``: a counting sort of the cluster ids, chunk by chunk: every valid sample's
index grouped by cluster and ascending within it — 4 bytes per valid sample (8 for pools ≥ 2^32).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.sample import selection
from dynamics_assets.core.sample.base import ClusterPool, Plan, guarantees

ScoreChunks = Callable[[], Iterator[tuple[int, np.ndarray, np.ndarray]]]
MAX_COUNTERS = 1 << 24


def require(pool: ClusterPool, strategy: str, *, distance: bool = False, centroids: bool = False,
            embeddings: bool = False) -> None:
    """A clear error when the pool lacks the context a strategy needs."""
    missing = [what for what, need, have in (
        ("distances", distance, pool.has_distance), ("centroids", centroids, pool.centroids is not None),
        ("an embeddings directory", embeddings, pool.embeddings_dir is not None)) if need and not have]
    if missing:
        raise ValueError(f"{strategy} needs {' and '.join(missing)}: build the pool with "
                         "ClusterPool.from_artifacts(clusters_dir, k, embeddings_dir)")


def embedding_store(pool: ClusterPool, kind: str) -> EmbeddingStore:
    """The pool's EmbeddingStore of ``kind``, checked to have one row per sample of the pool."""
    store = EmbeddingStore(pool.embeddings_dir, kind)
    if len(store) != len(pool):
        raise ValueError(f"{pool.embeddings_dir}: {len(store)} {kind} embeddings for a pool of {len(pool)} samples")
    return store


def distance_scores(pool: ClusterPool) -> ScoreChunks:
    """(start, ids, distance) chunks: the score source of the distance-based pruners."""
    def chunks():
        for (start, ids), (_, dist) in zip(pool.chunks(), pool.distance_chunks()):
            yield start, ids, dist
    return chunks


def sort_key(score: np.ndarray, largest: bool) -> np.ndarray:
    """uint32 keys whose order is the float order of ``score`` (reversed if not largest)."""
    s = np.asarray(score, dtype=np.float32) + np.float32(0.0)  # -0.0 → +0.0: equal floats, equal keys
    bits = s.view(np.uint32)
    key = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(1 << 31))
    return key if largest else ~key


def _digit_bits(n_strata: int) -> int:
    for b in (16, 8, 4, 2):
        if (n_strata + 1) << b <= MAX_COUNTERS:
            return b
    return 1


def keep_top(pool: ClusterPool, scores: ScoreChunks, quotas: np.ndarray, *, largest: bool = True,
             stratum_of_cluster: np.ndarray | None = None, source: str = "score") -> np.ndarray:
    """Keep mask with exactly ``quotas[s]`` members of every stratum: the largest (or smallest)
    scores, ties to the lower index. ``scores()`` yields (start, ids, score) over the pool in order;
    ``source`` names the scores in errors."""
    K = pool.n_clusters
    strata = np.arange(K) if stratum_of_cluster is None else np.asarray(stratum_of_cluster)
    quotas = np.asarray(quotas, dtype=np.int64)
    S = len(quotas)
    avail = np.bincount(strata, weights=pool.sizes, minlength=S).astype(np.int64)
    if np.any(quotas < 0) or np.any(quotas > avail):
        s = int(np.flatnonzero((quotas < 0) | (quotas > avail))[0])
        raise ValueError(f"quota {quotas[s]} of stratum {s} outside [0, {avail[s]}] (its valid members)")
    # Extended arrays: index S is the sink of samples with cluster -1 (never kept).
    stratum_ext = np.append(strata, S).astype(np.int32)
    active = np.append(quotas > 0, False)
    remaining = np.append(quotas, 0)
    prefix = np.zeros(S + 1, dtype=np.uint32)
    b = _digit_bits(S)
    radix = 1 << b
    for shift in range(32 - b, -1, -b):
        hist = np.zeros((S + 1) * radix, dtype=np.int64)
        for start, ids, score in scores():
            if shift == 32 - b:
                _check_finite(start, ids, score, source)
            st = stratum_ext.take(ids)
            key = sort_key(score, largest)
            undecided = active.take(st)
            if shift + b < 32:  # the digits above this one must match the stratum's prefix
                undecided &= (key >> np.uint32(shift + b)) == prefix.take(st)
            digit = (key[undecided] >> np.uint32(shift)) & np.uint32(radix - 1)
            hist += np.bincount(st[undecided].astype(np.int64) * radix + digit, minlength=len(hist))
        h = hist.reshape(S + 1, radix)
        at_or_above = np.cumsum(h[:, ::-1], axis=1)[:, ::-1]
        d = np.maximum((at_or_above >= remaining[:, None]).sum(axis=1) - 1, 0)
        rows = np.arange(S + 1)
        remaining = np.where(active, remaining - (at_or_above[rows, d] - h[rows, d]), 0)
        prefix = (prefix << np.uint32(b)) | d.astype(np.uint32)
    return _keep_at_threshold(pool, scores, stratum_ext, active, prefix, remaining, largest)


def _check_finite(start: int, ids: np.ndarray, score: np.ndarray, source: str) -> None:
    bad = np.flatnonzero((ids >= 0) & ~np.isfinite(score))
    if len(bad):
        raise ValueError(f"{source}: non-finite value for {len(bad)} valid samples, first at index {start + bad[0]}")


def _keep_at_threshold(pool, scores, stratum_ext, active, threshold, ties_wanted, largest) -> np.ndarray:
    keep = np.zeros(len(pool), dtype=bool)
    ties_taken = np.zeros(len(threshold), dtype=np.int64)
    for start, ids, score in scores():
        st = stratum_ext.take(ids)
        key = sort_key(score, largest)
        mine, thr = active.take(st), threshold.take(st)
        above = mine & (key > thr)
        tie_pos = np.flatnonzero(mine & (key == thr))
        tie_st = st[tie_pos]
        order = np.argsort(tie_st, kind="stable")
        sorted_st = tie_st[order]
        counts = np.bincount(tie_st, minlength=len(ties_taken))
        take = np.zeros(len(tie_pos), dtype=bool)
        take[order] = ties_taken[sorted_st] + group_rank(sorted_st, counts) < ties_wanted[sorted_st]
        ties_taken += counts
        above[tie_pos[take]] = True
        keep[start:start + len(ids)] = above
    return keep


def group_rank(sorted_groups: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rank of each element inside its group, for group labels sorted ascending (counts per label)."""
    group_start = np.cumsum(counts) - counts
    return np.arange(len(sorted_groups)) - group_start[sorted_groups]


def members_by_cluster(pool: ClusterPool) -> tuple[np.ndarray, np.ndarray]:
    """(members, offsets): ``members[offsets[c]:offsets[c+1]]`` are cluster c's samples, ascending."""
    sizes = pool.sizes
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    members = np.empty(int(offsets[-1]), dtype=selection._index_dtype(len(pool)))
    fill = offsets[:-1].copy()
    for start, ids in pool.chunks():
        valid = np.flatnonzero(ids >= 0)
        c = ids[valid]
        order = np.argsort(c, kind="stable")
        sorted_c = c[order]
        counts = np.bincount(c, minlength=pool.n_clusters)
        members[fill[sorted_c] + group_rank(sorted_c, counts)] = valid[order] + start
        fill += counts
    return members, offsets


def valid_mask(pool: ClusterPool) -> np.ndarray:
    keep = np.empty(len(pool), dtype=bool)
    for start, ids in pool.chunks():
        keep[start:start + len(ids)] = ids >= 0
    return keep


def plan_from_mask(pool: ClusterPool, keep: np.ndarray, *, expected: np.ndarray | None,
                   meta: dict[str, Any]) -> Plan:
    """A static plan: every kept sample once; ``expected`` defaults to the realised counts."""
    indices = np.flatnonzero(keep).astype(selection._index_dtype(len(pool)))
    mult = np.ones(len(indices), dtype=np.uint16)
    realised = selection.realised_per_cluster(pool, indices, mult)
    return Plan(indices=indices, multiplicity=mult, cluster_size=pool.sizes,
                cluster_expected=np.asarray(realised if expected is None else expected, dtype=np.float64),
                cluster_realised=realised,
                meta={**meta, "pool_size": pool.n_valid, "budget": int(len(indices)),
                      "guarantees": guarantees(exact_budget=True, max_multiplicity=1, every_cluster_drawn=False)})


def uniform_subset(pool: ClusterPool, keep: np.ndarray, budget: int, *, seed: int, stream: int) -> np.ndarray:
    """Keep mask of an exact uniform draw of ``budget`` samples among the survivors of ``keep``."""
    survivors = pool.masked(keep)
    if budget > survivors.n_valid:
        raise ValueError(f"budget {budget} exceeds the {survivors.n_valid} surviving samples")
    one_stratum = np.zeros(pool.n_clusters, dtype=np.int64)
    idx, _, _ = selection.exact(survivors, np.array([budget]), seed=seed, epoch=0, stream=stream,
                                stratum_of_cluster=one_stratum)
    out = np.zeros(len(pool), dtype=bool)
    out[idx.astype(np.int64)] = True
    return out


class MaskFilter:
    """A static filter: a strategy that decides a keep mask (``keep_and_meta(pool, seed=) ->
    (mask, meta)``) gets its ``keep_mask`` (for ``compose``) and its ``draw`` (every kept sample
    once, what it decided in the plan's meta) from here."""

    name: str

    def keep_and_meta(self, pool: ClusterPool, *, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def keep_mask(self, pool: ClusterPool, *, seed: int) -> np.ndarray:
        return self.keep_and_meta(pool, seed=seed)[0]

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        keep, info = self.keep_and_meta(pool, seed=seed)
        return plan_from_mask(pool, keep, expected=None,
                              meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch,
                                    **info})

