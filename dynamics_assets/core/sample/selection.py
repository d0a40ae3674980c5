"""Streaming selection kernels shared by the samplers.

Both kernels walk the pool chunk by chunk, in index order, so their output is already sorted and
their working memory is O(chunk + output). Random numbers are 31-bit integers from a PCG64 stream
seeded by (seed, epoch, stream, chunk index): a plan is a pure function of its inputs and
independent of threading, and a chunk's numbers can be regenerated at will.

``bernoulli``: sample i is kept iff u_i < p_c · 2^31 (the DynamiCS reference's per-pass coin).

``exact``: stratum s (a cluster, or the whole pool) receives exactly R_s draws. Each member gets
⌊R_s / N_s⌋ copies, and e_s = R_s mod N_s members get one more: those with the e_s smallest u_i of
the stratum (ties: lower index) — a uniform sample without replacement. Finding the e_s-th
smallest u per stratum needs no sort of the pool: members with u_i below q_s − δ_s (q_s = e_s/N_s,
δ_s six standard deviations of the empirical quantile) are certainly in, those above q_s + δ_s
certainly out. A first pass counts the certain members per stratum and collects the few in the
band; one sort of the band's (stratum, u) keys then gives each stratum's exact cut t_s; a second
pass regenerates the same numbers and writes every member with u_i < t_s straight into the
preallocated plan. A stratum whose band misses is redone with the band spanning [0, 1] (it
practically never happens, and the result is the same).
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


def _map_chunks(pool: ClusterPool, fn: Callable[[int, int, np.ndarray], object], *,
                collect: bool = True):
    """fn(chunk_index, start, ids) over the pool's chunks, two at a time (numpy drops the GIL);
    a list of the results in chunk order, or (``collect=False``) a generator yielding them in
    chunk order with at most 2·WORKERS chunks in flight."""
    results = _iter_chunks(pool, fn)
    return list(results) if collect else results


def _iter_chunks(pool: ClusterPool, fn: Callable[[int, int, np.ndarray], object]):
    with ThreadPoolExecutor(WORKERS) as ex:
        futures = []
        for k, (start, ids) in enumerate(pool.chunks()):
            futures.append(ex.submit(fn, k, start, ids))
            if len(futures) >= 2 * WORKERS:
                yield futures.pop(0).result()
        for f in futures:
            yield f.result()


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
        result = _exact_pass(pool, strata, sizes, base, extra, full_band, seed=seed, epoch=epoch,
                             stream=stream, stratum_is_cluster=stratum_of_cluster is None)
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


def _exact_pass(pool, strata, sizes, base, extra, full_band, *, seed, epoch, stream, stratum_is_cluster=False):
    """Two streaming passes that regenerate the same random numbers (counter-based by chunk):

    1. count, per cluster, the members below their stratum's band (u < lo: certainly in) and
       collect the few band members (lo ≤ u < lo + width) with their u;
    2. having fixed each stratum's exact cut t_s from its band — the ``need`` smallest (u, index)
       of the band are in, i.e. u < t_s — emit every member with u < t_s of its stratum (or with
       ⌊R/N⌋ ≥ 1 copies), chunk by chunk in index order, straight into the preallocated plan.

    No sort or merge over the pool: the output is the only array of pool scale."""
    K = pool.n_clusters
    n_strata = len(sizes)
    lo, width = _bands(sizes, extra, full_band)
    # Per-cluster tables; the last entry serves cluster -1 (lo = width = 0: never drawn).
    lo_of_cluster = np.zeros(K + 1, dtype=np.uint32)
    lo_of_cluster[:-1] = lo[strata]
    width_of_cluster = np.zeros(K + 1, dtype=np.uint32)
    width_of_cluster[:-1] = width[strata]

    def count(k: int, start: int, ids: np.ndarray):
        u = random31(seed, epoch, stream, k, len(ids))
        ix = ids.astype(np.intp)
        g_lo = lo_of_cluster.take(ix)
        definite = u < g_lo
        u -= g_lo  # unsigned wrap-around: members below the band become huge, so not candidates
        ci = np.flatnonzero(u < width_of_cluster.take(ix))
        # Certain members per cluster by one bincount over key 2·(cluster + 1) + definite (a
        # boolean-mask gather of the ids would cost several times more: branch mispredictions).
        ix += 1
        ix <<= 1
        ix += definite
        n_def = np.bincount(ix, minlength=2 * K + 2)[3::2]
        return n_def, (ci + start, ids.take(ci), u.take(ci) + g_lo.take(ci))

    parts = _map_chunks(pool, count)
    n_def_cluster = np.zeros(K, dtype=np.int64)
    for p in parts:
        n_def_cluster += p[0]
    n_def = np.bincount(strata, weights=n_def_cluster, minlength=n_strata).astype(np.int64)
    c_idx = np.concatenate([p[1][0] for p in parts]) if parts else np.empty(0, np.int64)
    c_cluster = np.concatenate([p[1][1] for p in parts]) if parts else np.empty(0, np.int32)
    c_u = np.concatenate([p[1][2] for p in parts]) if parts else np.empty(0, np.uint32)
    del parts
    c_str = strata[c_cluster]

    need = extra - n_def
    n_cand = np.bincount(c_str, minlength=n_strata)
    missed = (need < 0) | (need > n_cand)
    if missed.any():
        return missed

    # Among each stratum's band, the `need` smallest u (ties: lower index) are drawn. The cut
    # t_s = (u of the last one drawn) + 1 selects exactly them, unless the first one not drawn
    # has the same u (a tie split by index): then t_s = that u, and the drawn members with
    # u == t_s are named explicitly (``tie_idx``). One sort of the keys (stratum, u) as uint64
    # (vectorised sort; no argsort of the candidates).
    key = np.sort((c_str.astype(np.uint64) << np.uint64(32)) | c_u.astype(np.uint64))
    u_sorted = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    first = np.searchsorted(key, np.arange(n_strata, dtype=np.uint64) << np.uint64(32))
    del key
    cut = lo.astype(np.int64)  # need = 0: only the certain members (u < lo)
    has_need = need > 0
    last = first + need - 1
    cut[has_need] = u_sorted[last[has_need]] + 1
    tie = has_need & (need < n_cand)
    tie[tie] = u_sorted[first[tie] + need[tie]] == u_sorted[last[tie]]
    cut[tie] -= 1
    del u_sorted
    tie_parts = []
    for s_ in np.flatnonzero(tie):  # rare: the lowest-index band members with u == cut
        at = np.flatnonzero((c_str == s_) & (c_u == cut[s_]))
        n_below = int(((c_str == s_) & (c_u < cut[s_])).sum())
        tie_parts.append(c_idx[at[: need[s_] - n_below]])
    tie_idx = np.sort(np.concatenate(tie_parts)) if tie_parts else np.empty(0, np.int64)
    if stratum_is_cluster:
        realised = base * pool.sizes + extra
    else:
        picked = c_u < cut[c_str]
        realised = (base[strata] * pool.sizes + n_def_cluster
                    + np.bincount(c_cluster[picked], minlength=K)
                    + np.bincount(c_cluster[np.isin(c_idx, tie_idx)], minlength=K))
    del c_idx, c_cluster, c_u, c_str

    thr = np.zeros(K + 1, dtype=np.uint32)
    thr[:-1] = cut.astype(np.uint32)[strata]
    has_base = bool(base.max(initial=0) > 0)
    base_of_cluster = np.zeros(K + 1, dtype=np.uint16)
    base_of_cluster[:-1] = base[strata]
    idt = _index_dtype(len(pool))
    distinct = int(np.where(base > 0, sizes, extra).sum())
    out_idx = np.empty(distinct, dtype=idt)
    out_mult = np.empty(distinct, dtype=np.uint16) if has_base else np.ones(distinct, dtype=np.uint16)

    def emit(k: int, start: int, ids: np.ndarray):
        u = random31(seed, epoch, stream, k, len(ids))
        ix = ids.astype(np.intp)
        keep = u < thr.take(ix)
        a, b = np.searchsorted(tie_idx, [start, start + len(ids)])
        if b > a:
            keep[tie_idx[a:b].astype(np.int64) - start] = True
        if not has_base:
            return (np.flatnonzero(keep) + start).astype(idt), None
        m = base_of_cluster.take(ix)
        m += keep
        sel = np.flatnonzero(m)
        return (sel + start).astype(idt), m.take(sel)

    o = 0
    for idx, mult in _map_chunks(pool, emit, collect=False):
        out_idx[o:o + len(idx)] = idx
        if mult is not None:
            out_mult[o:o + len(idx)] = mult
        o += len(idx)
    if o != distinct:
        raise AssertionError(f"exact selection emitted {o} samples, expected {distinct}")
    return out_idx, out_mult, realised


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

