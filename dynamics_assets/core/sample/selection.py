"""Streaming selection kernels shared by the samplers.

Both kernels walk the pool once, chunk by chunk, in index order, so their output is already
sorted and their working memory is O(chunk + output). Random numbers are 31-bit integers from a
PCG64 stream seeded by (seed, epoch, stream, chunk index): a plan is a pure function of its inputs
and independent of threading.

``bernoulli``: sample i is kept iff u_i < p_c · 2^31 (the DynamiCS reference's per-pass coin).

``exact``: stratum s (a cluster, or the whole pool) receives exactly R_s draws. Each member gets
⌊R_s / N_s⌋ copies, and e_s = R_s mod N_s members get one more: those with the e_s smallest u_i of
the stratum — a uniform sample without replacement. Finding the e_s-th smallest u per stratum
needs no sort of the pool: members with u_i below q_s − δ_s (q_s = e_s/N_s, δ_s six standard
deviations of the empirical quantile) are certainly in, those above q_s + δ_s certainly out, and
only the few in the band are sorted at the end. A stratum whose band misses is redone with the
band spanning [0, 1] (a second pass; it practically never happens, and the result is the same).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from dynamics_assets.core.sample.base import ClusterPool

ONE = 1 << 31  # random numbers are uniform on [0, 2^31)
WORKERS = 2


def random31(seed: int, epoch: int, stream: int, chunk_index: int, m: int) -> np.ndarray:
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch, stream, chunk_index]))
    raw = bits.random_raw((m + 1) // 2).view(np.uint32)[:m]
    return raw >> np.uint32(1)


def _map_chunks(pool: ClusterPool, fn: Callable[[int, int, np.ndarray], object]) -> list:
    """fn(chunk_index, start, ids) over the pool's chunks, two at a time (numpy drops the GIL)."""
    with ThreadPoolExecutor(WORKERS) as ex:
        futures, out = [], []
        for k, (start, ids) in enumerate(pool.chunks()):
            futures.append(ex.submit(fn, k, start, ids))
            if len(futures) >= 2 * WORKERS:
                out.append(futures.pop(0).result())
        out.extend(f.result() for f in futures)
    return out


def _index_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint32) if n < (1 << 32) else np.dtype(np.int64)


def bernoulli(pool: ClusterPool, p: np.ndarray, *, seed: int, epoch: int,
              stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices kept by independent coins with per-cluster probability p, and the
    realised count per cluster."""
    K = pool.n_clusters
    thr = np.zeros(K + 1, dtype=np.uint32)  # the last entry serves cluster -1
    thr[:-1] = np.floor(np.clip(p, 0.0, 1.0) * ONE).astype(np.uint64).astype(np.uint32)
    idt = _index_dtype(len(pool))

    def kernel(k: int, start: int, ids: np.ndarray):
        u = random31(seed, epoch, stream, k, len(ids))
        keep = np.flatnonzero(u < np.take(thr, ids))
        return (keep + start).astype(idt), np.bincount(ids.take(keep), minlength=K)

    parts = _map_chunks(pool, kernel)
    indices = np.concatenate([q[0] for q in parts]) if parts else np.empty(0, idt)
    return indices, sum((q[1] for q in parts), np.zeros(K, np.int64))


def exact(pool: ClusterPool, targets: np.ndarray, *, seed: int, epoch: int, stream: int,
          stratum_of_cluster: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted indices, multiplicities and realised draws per cluster, with exactly
    ``targets[s]`` draws per stratum.

    ``stratum_of_cluster`` maps cluster → stratum (identity when None); ``targets`` is per stratum.
    """
    K = pool.n_clusters
    strata = np.arange(K) if stratum_of_cluster is None else np.asarray(stratum_of_cluster)
    n_strata = len(targets)
    sizes = np.bincount(strata, weights=pool.sizes, minlength=n_strata).astype(np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if np.any((targets > 0) & (sizes == 0)):
        raise ValueError("a stratum with no samples cannot receive draws")
    base = np.floor_divide(targets, np.maximum(sizes, 1))
    extra = targets - base * sizes
    if base.max(initial=0) > np.iinfo(np.uint16).max - 1:
        raise ValueError("multiplicity above 65534 is not supported")

    full_band = np.zeros(n_strata, dtype=bool)
    while True:
        result = _exact_pass(pool, strata, sizes, base, extra, full_band,
                             seed=seed, epoch=epoch, stream=stream)
        if isinstance(result, tuple):
            return result
        full_band |= result  # strata whose band missed: redo them with the whole range


def _bands(sizes, extra, full_band) -> tuple[np.ndarray, np.ndarray]:
    n = np.maximum(sizes, 1).astype(np.float64)
    q = extra / n
    delta = 6.0 * np.sqrt(q * (1.0 - q) / n) + 2.0 / n
    lo = np.floor(np.clip(q - delta, 0.0, 1.0) * ONE)
    hi = np.ceil(np.clip(q + delta, 0.0, 1.0) * ONE)
    lo[full_band], hi[full_band] = 0, ONE
    lo[extra == 0], hi[extra == 0] = 0, 0
    return lo.astype(np.uint64), (hi - lo).astype(np.uint64)


def _exact_pass(pool, strata, sizes, base, extra, full_band, *, seed, epoch, stream):
    K = pool.n_clusters
    lo, width = _bands(sizes, extra, full_band)
    # One gather per sample: low 32 bits = lo, high 32 bits = band width (little-endian views).
    packed = np.zeros(K + 1, dtype=np.uint64)
    packed[:-1] = (lo | (width << np.uint64(32)))[strata]
    has_base = bool(base.max(initial=0) > 0)
    base_of_cluster = np.zeros(K + 1, dtype=np.uint16)
    base_of_cluster[:-1] = base[strata]
    idt = _index_dtype(len(pool))

    def kernel(k: int, start: int, ids: np.ndarray):
        u = random31(seed, epoch, stream, k, len(ids))
        g = np.take(packed, ids).view(np.uint32)
        g_lo, g_width = g[0::2], g[1::2]
        definite = u < g_lo
        ci = np.flatnonzero((u - g_lo) < g_width)  # unsigned wrap-around excludes u < lo
        cands = (ci + start, ids.take(ci), u.take(ci))
        keep = np.flatnonzero(definite)
        n_def = np.bincount(ids.take(keep), minlength=K)
        mult = None
        if has_base:  # members of clusters with ⌊R/N⌋ ≥ 1 are all in, with that multiplicity
            b = np.take(base_of_cluster, ids)
            keep = np.flatnonzero(definite | (b > 0))
            mult = b.take(keep) + definite.take(keep)
        return (keep + start).astype(idt), mult, n_def, cands, start, start + len(ids)

    parts = _map_chunks(pool, kernel)
    n_def_cluster = np.zeros(K, dtype=np.int64)
    for p in parts:
        n_def_cluster += p[2]
    n_def = np.bincount(strata, weights=n_def_cluster, minlength=len(sizes)).astype(np.int64)
    c_idx = np.concatenate([p[3][0] for p in parts]) if parts else np.empty(0, np.int64)
    c_cluster = np.concatenate([p[3][1] for p in parts]) if parts else np.empty(0, np.int32)
    c_str = strata[c_cluster]
    c_u = np.concatenate([p[3][2] for p in parts]) if parts else np.empty(0, np.uint32)

    need = extra - n_def
    n_cand = np.bincount(c_str, minlength=len(sizes))
    missed = (need < 0) | (need > n_cand)
    if missed.any():
        return missed

    # Among each stratum's band, the `need` smallest u (ties: lower index) are drawn.
    order = np.lexsort((c_idx, c_u, c_str))
    s_sorted = c_str[order]
    first = np.searchsorted(s_sorted, np.arange(len(sizes)))
    rank = np.arange(len(order)) - first[s_sorted]
    picked = order[rank < need[s_sorted]]
    chosen = np.sort(c_idx[picked]).astype(idt)
    realised = (base[strata] * pool.sizes + n_def_cluster
                + np.bincount(c_cluster[picked], minlength=K))

    indices, mult = _assemble(parts, chosen, idt)
    return indices, mult, realised


def _assemble(parts: list, chosen: np.ndarray, idt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The plan arrays: each chunk's members merged with the chosen band members of its index
    range — a chosen sample already present (cluster with ⌊R/N⌋ ≥ 1) gets one more copy, the
    others are inserted in order. The output is allocated once and filled chunk by chunk, and
    each chunk's part is released as soon as it is copied, so the peak stays near the output."""
    merges, total = [], 0
    for p in parts:
        idx = p[0]
        lo, hi = np.searchsorted(chosen, [p[4], p[5]])
        c = chosen[lo:hi]
        pos = np.searchsorted(idx, c)
        present = np.zeros(len(c), dtype=bool)
        if len(idx):
            present = (pos < len(idx)) & (idx[np.minimum(pos, len(idx) - 1)] == c)
        merges.append((c, pos, present))
        total += len(idx) + int((~present).sum())
    out_idx = np.empty(total, dtype=idt)
    out_mult = np.empty(total, dtype=np.uint16)
    o = 0
    for k, (c, pos, present) in enumerate(merges):
        idx, mult = parts[k][0], parts[k][1]
        mult = np.ones(len(idx), np.uint16) if mult is None else mult.astype(np.uint16)
        mult[pos[present]] += 1
        new = ~present
        idx, mult = _insert_sorted(idx, mult, pos[new], c[new])
        out_idx[o:o + len(idx)], out_mult[o:o + len(idx)] = idx, mult
        o += len(idx)
        parts[k] = None
    return out_idx, out_mult


def _insert_sorted(indices: np.ndarray, mult: np.ndarray, pos: np.ndarray,
                   new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``new`` (sorted, multiplicity 1) before positions ``pos`` (sorted): np.insert
    without its slow boolean mask — old elements shift by the number of insertions before them."""
    m, n = len(pos), len(indices)
    segments = np.diff(np.concatenate(([0], pos, [n])))
    dest_old = np.arange(n) + np.repeat(np.arange(m + 1), segments)
    dest_new = pos + np.arange(m)
    out_idx = np.empty(n + m, dtype=indices.dtype)
    out_mult = np.empty(n + m, dtype=np.uint16)
    out_idx[dest_old], out_mult[dest_old] = indices, mult
    out_idx[dest_new], out_mult[dest_new] = new, 1
    return out_idx, out_mult


def realised_per_cluster(pool: ClusterPool, indices: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """Draws per cluster (with multiplicity) of a plan, by one sorted pass over the pool."""
    out = np.zeros(pool.n_clusters, dtype=np.int64)
    j = 0
    for start, ids in pool.chunks():
        k = int(np.searchsorted(indices, np.array(start + len(ids), dtype=indices.dtype)))
        sel = indices[j:k].astype(np.int64) - start
        out += np.bincount(ids[sel], weights=mult[j:k], minlength=pool.n_clusters).astype(np.int64)
        j = k
    return out

