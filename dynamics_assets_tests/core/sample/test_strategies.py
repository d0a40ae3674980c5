"""Static and pruning curation strategies on small fixtures with known answers: SemDeDup, DBP,
flattening, SSP, CLIP score, composition; pool context (artefacts, masks); determinism."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.sample import ClipScoreFilter, ClusterPool, Compose, DBPPruning, DynamicsSampler, FlattenSampler, SemDeDup, SSPPruning, UniformSampler, make_sampler
from dynamics_assets.core.sample.strategies import clip_score
from dynamics_assets.core.sample import pruning
from dynamics_assets.core.sample.strategies.semdedup import max_similarity_to_earlier

D = 16


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ids_of(pool: ClusterPool) -> np.ndarray:
    return np.concatenate([c for _, c in pool.chunks()])


@dataclass
class Planted:
    root: Path
    k: int
    cluster_id: np.ndarray
    distance: np.ndarray
    image: np.ndarray  # float32 as stored (fp16-rounded), normalised
    groups: list[np.ndarray]  # planted near-duplicate groups (global indices, same cluster)
    cross_pair: np.ndarray  # identical vectors assigned to different clusters

    def pool(self) -> ClusterPool:
        return ClusterPool.from_artifacts(self.root / "clusters", self.k, self.root / "emb")


def write_store(emb_dir: Path, image: np.ndarray, text: np.ndarray, shard_sizes: list[int]) -> None:
    """An EmbeddingStore in the layout the embedding stage writes (fp16 rows, one dir per shard)."""
    start = 0
    for s, n in enumerate(shard_sizes):
        d = emb_dir / f"shard-{s:05d}"
        d.mkdir(parents=True)
        np.save(d / "image.npy", image[start:start + n].astype(np.float16))
        np.save(d / "text.npy", text[start:start + n].astype(np.float16))
        np.save(d / "sample_id.npy", np.array([f"s{i:06d}".encode() for i in range(start, start + n)], dtype="S32"))
        start += n


def write_clusters(cdir: Path, cluster_id: np.ndarray, distance: np.ndarray, centroids: np.ndarray) -> None:
    cdir.mkdir(parents=True, exist_ok=True)
    np.save(cdir / "cluster_id.npy", cluster_id.astype(np.int32))
    np.save(cdir / "distance.npy", distance.astype(np.float32))
    np.save(cdir / "centroids.npy", centroids.astype(np.float32))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Planted:
    """3 clusters of 40 distinct points, plus per cluster: a triple of exact copies, a pair with
    tiny noise, a mixed triple; an identical pair split over two clusters; 3 quarantined rows."""
    rng = np.random.default_rng(0)
    k = 3
    centroids = unit(rng.normal(size=(k, D))).astype(np.float32)
    rows, cids, groups_local = [], [], []

    def add(vectors, c):
        start = len(rows)
        rows.extend(vectors)
        cids.extend([c] * len(vectors))
        return list(range(start, start + len(vectors)))

    for c in range(k):
        add(unit(centroids[c] + 0.25 * rng.normal(size=(40, D))), c)
        for recipe in (("copy", "copy"), ("noise",), ("copy", "noise")):
            x = unit(centroids[c] + 0.25 * rng.normal(size=D))
            copies = [x if r == "copy" else unit(x + 1e-3 * rng.normal(size=D)) for r in recipe]
            groups_local.append(add([x] + copies, c))
    x = unit(centroids[0] + 0.25 * rng.normal(size=D))
    cross_local = add([x], 0) + add([x], 1)
    quarantined_local = add(list(rng.normal(size=(3, D))), -1)

    perm = rng.permutation(len(rows))  # new position of old row r is where[r]
    where = np.empty_like(perm)
    where[perm] = np.arange(len(perm))
    image = np.asarray(rows)[perm].astype(np.float16).astype(np.float32)
    image = unit(image)
    cluster_id = np.asarray(cids, np.int32)[perm]
    valid = cluster_id >= 0
    distance = np.full(len(image), np.nan, np.float32)
    distance[valid] = 1.0 - np.einsum("ij,ij->i", image[valid], centroids[cluster_id[valid]])
    text = unit(image + 0.5 * rng.normal(size=image.shape))
    root = tmp_path_factory.mktemp("planted")
    write_store(root / "emb", image, text, [50, 47, len(image) - 97])
    write_clusters(root / "clusters", cluster_id, distance, centroids)
    assert len(np.asarray(quarantined_local)) == 3
    return Planted(root, k, cluster_id, distance, image, [where[g] for g in groups_local], where[cross_local])


def expected_duplicates(p: Planted) -> np.ndarray:
    """Every planted group keeps its member farthest from the centroid (ties: lower index)."""
    removed = []
    for g in p.groups:
        g = np.sort(g)
        keep = g[np.lexsort((g, -p.distance[g]))[0]]
        removed.extend(i for i in g if i != keep)
    return np.sort(np.asarray(removed))


# ---------------------------------------------------------------- pool context
def test_from_artifacts_reads_context_and_masks_compose(planted):
    pool = planted.pool()
    np.testing.assert_array_equal(ids_of(pool), planted.cluster_id)
    assert pool.centroids.shape == (3, D) and pool.has_distance
    got = np.concatenate([d for _, d in pool.distance_chunks(7)])
    np.testing.assert_array_equal(got, planted.distance)
    rng = np.random.default_rng(1)
    a, b = rng.random(len(pool)) < 0.7, rng.random(len(pool)) < 0.6
    twice = pool.masked(a).masked(b)
    np.testing.assert_array_equal(ids_of(twice), np.where(a & b, planted.cluster_id, -1))
    assert twice.budget_base == pool.n_valid and twice.n_valid == int(((planted.cluster_id >= 0) & a & b).sum())
    assert ids_of(pool).tolist() == planted.cluster_id.tolist(), "masking leaves the original pool alone"
    with pytest.raises(ValueError, match="bool array"):
        pool.masked(a.astype(np.uint8))


def test_from_artifacts_names_missing_or_inconsistent_files(planted, tmp_path):
    with pytest.raises(FileNotFoundError, match="distance.npy"):
        cdir = tmp_path / "c"
        cdir.mkdir()
        np.save(cdir / "cluster_id.npy", planted.cluster_id)
        np.save(cdir / "centroids.npy", np.eye(3, D, dtype=np.float32))
        ClusterPool.from_artifacts(cdir, 3)
    np.save(cdir / "distance.npy", planted.distance[:-1])
    with pytest.raises(ValueError, match="distance.npy.*rows"):
        ClusterPool.from_artifacts(cdir, 3)
    with pytest.raises(ValueError, match="centroids.npy.*4 centroid rows"):
        ClusterPool.from_artifacts(planted.root / "clusters", 4)
    with pytest.raises(ValueError, match="needs distances"):
        SSPPruning(10).draw(ClusterPool.from_array(planted.cluster_id, 3), epoch=1, seed=0)


# ---------------------------------------------------------------- exact per-stratum selection
@pytest.mark.parametrize("max_counters", [1 << 24, 1 << 6])  # 16-bit digits, and 1-bit digits
def test_keep_top_matches_a_full_sort_with_ties_across_chunks(monkeypatch, max_counters):
    monkeypatch.setattr(pruning, "MAX_COUNTERS", max_counters)
    rng = np.random.default_rng(2)
    n, k = 3000, 7
    ids = rng.integers(-1, k, n).astype(np.int32)
    score = np.round(rng.normal(size=n), 1).astype(np.float32)  # many ties
    score[::11] = -0.0
    score[::13] = 0.0
    pool = ClusterPool.from_array(ids, k)
    quotas = (pool.sizes * rng.random(k)).astype(np.int64)
    quotas[0], quotas[1] = 0, pool.sizes[1]

    def chunks():
        for s in range(0, n, 97):
            yield s, ids[s:s + 97], score[s:s + 97]

    for largest in (True, False):
        keep = pruning.keep_top(pool, chunks, quotas, largest=largest)
        want = np.zeros(n, bool)
        for c in range(k):
            members = np.flatnonzero(ids == c)
            s = score[members].astype(np.float64) + 0.0
            order = np.lexsort((members, -s if largest else s))
            want[members[order[:quotas[c]]]] = True
        np.testing.assert_array_equal(keep, want)
    with pytest.raises(ValueError, match="outside"):
        pruning.keep_top(pool, chunks, pool.sizes + 1)


# ---------------------------------------------------------------- SemDeDup
def test_semdedup_removes_exactly_the_planted_duplicates_keeping_the_farthest(planted):
    im = planted.image
    sim = im @ im.T
    planted_pairs = np.zeros_like(sim, dtype=bool)
    for g in planted.groups + [planted.cross_pair]:
        planted_pairs[np.ix_(g, g)] = True
    np.fill_diagonal(planted_pairs, True)
    assert sim[~planted_pairs].max() < 0.9, "the fixture's other points are far from duplicates"

    pool = planted.pool()
    want = expected_duplicates(planted)
    got = SemDeDup(epsilon=0.05).duplicates(pool)
    np.testing.assert_array_equal(got, want)
    assert len(want) == 3 * (2 + 1 + 2)
    keep = SemDeDup(epsilon=0.05).keep_mask(pool, seed=0)
    assert keep[planted.cross_pair].all(), "duplicates in different clusters are not compared"
    assert not keep[planted.cluster_id < 0].any()
    assert keep.sum() == pool.n_valid - len(want)


@pytest.mark.parametrize("tile,panel", [(3, 7), (5, 5), (1, 4), (64, 64)])
def test_semdedup_tile_and_panel_sizes_do_not_change_the_answer(planted, tile, panel):
    got = SemDeDup(epsilon=0.05, tile=tile, panel=panel).duplicates(planted.pool())
    np.testing.assert_array_equal(got, expected_duplicates(planted))


def test_tiled_max_similarity_equals_the_full_matrix():
    x = unit(np.random.default_rng(3).normal(size=(53, D))).astype(np.float32)
    full = x @ x.T
    want = np.array([-np.inf] + [full[:j, j].max() for j in range(1, 53)], np.float32)
    for tile, panel in [(4, 9), (53, 53), (1, 1), (7, 20)]:
        got = max_similarity_to_earlier(lambda lo, hi: x[lo:hi], 53, tile=tile, panel=panel)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_semdedup_budget_draws_uniformly_among_survivors(planted):
    pool = planted.pool()
    survivors = SemDeDup().keep_mask(pool, seed=0)
    keep = SemDeDup(budget=50).keep_mask(pool, seed=4)
    assert keep.sum() == 50 and not (keep & ~survivors).any()
    plan = SemDeDup(budget=0.25).draw(pool, epoch=1, seed=4)
    assert plan.size == round(0.25 * pool.n_valid)
    with pytest.raises(ValueError, match="exceeds"):
        SemDeDup(budget=1.0).keep_mask(pool, seed=0)


# ---------------------------------------------------------------- DBP
def dbp_pool(sizes, mean_distance, seed=5) -> ClusterPool:
    rng = np.random.default_rng(seed)
    k = len(sizes)
    base = unit(rng.normal(size=(k, 8)))
    base[1] = unit(base[0] + 0.3 * rng.normal(size=8))  # clusters 0 and 1 are close: low d_inter
    ids = rng.permutation(np.repeat(np.arange(k, dtype=np.int32), sizes))
    dist = (rng.random(len(ids)) * 2 * np.asarray(mean_distance)[ids]).astype(np.float32)
    return ClusterPool.from_array(ids, k, distance=dist, centroids=base)


def test_dbp_quotas_follow_complexity_and_sum_exactly(monkeypatch):
    sizes, means = [400, 300, 200, 150, 100], [0.1, 0.3, 0.2, 0.4, 0.01]
    pool = dbp_pool(sizes, means)
    tau, T = 0.02, 300
    ids, dist, mu = ids_of(pool), pool.distance_at(np.arange(len(pool))), pool.centroids
    d_intra = np.array([dist[ids == c].mean() for c in range(5)])
    cos = mu @ mu.T
    d_inter = np.array([np.sort(1 - np.delete(cos[c], c))[:2].mean() for c in range(5)])
    C = d_intra * d_inter
    np.testing.assert_allclose(DBPPruning(T, tau=tau, l_nearest=2).complexity(pool), C, rtol=1e-5)

    q, _ = DBPPruning(T, tau=tau, l_nearest=2).quotas(pool)
    P = np.exp(C / tau) / np.exp(C / tau).sum()
    assert q.sum() == T and np.all(q >= 1) and np.all(q <= sizes)
    free = (q > 1) & (q < np.asarray(sizes))
    lam = (T - q[~free].sum()) / P[free].sum()
    assert np.all(np.abs(q[free] - lam * P[free]) <= 1), "N*_c ≈ λ·P_c where no bound binds"
    for a in range(5):
        for b in range(5):
            if C[a] > C[b] and q[a] < sizes[a]:
                assert q[a] >= q[b], "higher complexity, larger quota"
    assert q[4] == 1, "a non-empty cluster of negligible complexity keeps its lower bound"

    keep = DBPPruning(T, tau=tau, l_nearest=2).keep_mask(pool, seed=0)
    for c in range(5):
        kept, dropped = dist[(ids == c) & keep], dist[(ids == c) & ~keep]
        assert len(kept) == q[c]
        assert len(dropped) == 0 or kept.min() >= dropped.max(), "the farthest from μ_c are kept"


def test_dbp_caps_a_complex_small_cluster_and_redistributes():
    sizes = [400, 300, 200, 10]
    pool = dbp_pool(sizes, [0.1, 0.1, 0.1, 0.9])
    q, x = DBPPruning(250, tau=0.05, l_nearest=2).quotas(pool)
    assert q[3] == 10 and q.sum() == 250 and abs(x.sum() - 250) < 1e-6
    plan = DBPPruning(250, tau=0.05, l_nearest=2).draw(pool, epoch=1, seed=0)
    assert plan.size == 250 and plan.cluster_realised.tolist() == q.tolist()


# ---------------------------------------------------------------- flattening
def flat_pool() -> ClusterPool:
    sizes = [100, 50, 20, 5, 1]
    ids = np.random.default_rng(6).permutation(np.repeat(np.arange(5, dtype=np.int32), sizes))
    return ClusterPool.from_array(np.concatenate([ids, [-1, -1]]).astype(np.int32), 6)  # cluster 5 empty


def test_flatten_caps_the_head_and_keeps_the_tail_whole():
    pool = flat_pool()
    plan = FlattenSampler(t=20).draw(pool, epoch=1, seed=0)
    assert plan.cluster_realised.tolist() == [20, 20, 20, 5, 1, 0]
    members = ids_of(pool)[plan.indices.astype(np.int64)]
    assert np.sum(members == 3) == 5 and np.sum(members == 4) == 1 and plan.multiplicity.max() == 1
    budget = FlattenSampler(budget=60).draw(pool, epoch=1, seed=0)  # 5 + 1 + 3·t = 60 → t = 18
    assert budget.size == 60 and budget.cluster_realised.tolist() == [18, 18, 18, 5, 1, 0]
    other = FlattenSampler(budget=60).draw(pool, epoch=2, seed=0)
    assert other.indices.tobytes() != budget.indices.tobytes(), "redrawn every epoch"
    assert FlattenSampler(budget=0.5).draw(pool, epoch=1, seed=0).size == round(0.5 * 176)
    with pytest.raises(ValueError, match="exactly one"):
        FlattenSampler()


# ---------------------------------------------------------------- SSP
def test_ssp_keeps_equal_quotas_of_the_hardest_or_easiest():
    sizes = [30, 20, 10, 4]
    rng = np.random.default_rng(7)
    ids = rng.permutation(np.repeat(np.arange(4, dtype=np.int32), sizes))
    dist = rng.random(len(ids)).astype(np.float32)
    dist[ids == 1] = 0.5  # a cluster of ties: the lowest indices win
    pool = ClusterPool.from_array(ids, 4, distance=dist)
    for keep in ("hard", "easy"):
        mask = SSPPruning(40, keep=keep).keep_mask(pool, seed=0)  # 4 + 10 + 2·13 = 40
        assert mask.sum() == 40
        for c, q in enumerate([13, 13, 10, 4]):
            members = np.flatnonzero(ids == c)
            order = np.lexsort((members, -dist[members] if keep == "hard" else dist[members]))
            np.testing.assert_array_equal(np.flatnonzero(mask & (ids == c)), np.sort(members[order[:q]]))
    glob = SSPPruning(15, balanced=False).keep_mask(pool, seed=0)
    np.testing.assert_array_equal(np.flatnonzero(glob), np.sort(np.lexsort((np.arange(64), -dist))[:15]))
    plan = SSPPruning(40).draw(pool, epoch=1, seed=0)
    assert plan.cluster_expected.tolist() == [13, 13, 10, 4] and plan.size == 40


# ---------------------------------------------------------------- CLIP score
def test_clip_score_keeps_exactly_the_top_fraction(planted, monkeypatch):
    pool = planted.pool()
    emb = planted.root / "emb"
    image = np.concatenate([np.load(p) for p in sorted(emb.glob("*/image.npy"))]).astype(np.float64)
    text = np.concatenate([np.load(p) for p in sorted(emb.glob("*/text.npy"))]).astype(np.float64)
    score = np.einsum("ij,ij->i", image, text)
    valid = np.flatnonzero(planted.cluster_id >= 0)
    count = round(0.3 * len(valid))
    want = np.sort(valid[np.lexsort((valid, -score[valid]))[:count]])
    keep = ClipScoreFilter(0.3).keep_mask(pool, seed=0)
    np.testing.assert_array_equal(np.flatnonzero(keep), want)
    monkeypatch.setattr(clip_score, "ROWS", 7)  # chunks that straddle shard boundaries
    np.testing.assert_array_equal(ClipScoreFilter(0.3).keep_mask(pool, seed=0), keep)


def test_clip_score_ties_go_to_the_lower_index_and_quarantine_is_never_kept(tmp_path):
    rng = np.random.default_rng(8)
    image = unit(rng.normal(size=(30, D)))
    text = unit(image + rng.normal(size=image.shape))
    text[[3, 9, 17, 25]] = image[[3, 9, 17, 25]]  # the best scores
    image[[9, 17, 25]], text[[9, 17, 25]] = image[3], text[3]  # exact ties
    ids = np.zeros(30, np.int32)
    ids[9] = -1
    write_store(tmp_path / "emb", image, text, [12, 18])
    write_clusters(tmp_path / "c", ids, np.zeros(30), np.eye(1, D))
    pool = ClusterPool.from_artifacts(tmp_path / "c", 1, tmp_path / "emb")
    keep = ClipScoreFilter(3 / 29).keep_mask(pool, seed=0)
    assert np.flatnonzero(keep).tolist() == [3, 17, 25]
    assert np.flatnonzero(ClipScoreFilter(2 / 29).keep_mask(pool, seed=0)).tolist() == [3, 17]


# ---------------------------------------------------------------- composition
def test_compose_keeps_only_survivors_of_every_pruner_at_the_original_budget(planted):
    pool = planted.pool()
    dedup = SemDeDup(0.05).keep_mask(pool, seed=3)
    clip = ClipScoreFilter(0.4).keep_mask(pool.masked(dedup), seed=3)
    assert clip.sum() == round(0.4 * pool.n_valid), "a fraction of the ORIGINAL pool"
    assert not (clip & ~dedup).any()
    steps = [{"strategy": "semdedup", "epsilon": 0.05}, {"strategy": "clip_score", "fraction": 0.4},
             {"strategy": "dynamics", "budget": 0.2, "alpha": 0.2}]
    recipe = make_sampler("compose", steps=steps)
    assert recipe.dynamic and isinstance(recipe.steps[-1], DynamicsSampler)
    plan = recipe.draw(pool, epoch=2, seed=3)
    assert plan.size == round(0.2 * pool.n_valid)
    assert clip[plan.indices.astype(np.int64)].all()
    assert [r["survivors"] for r in plan.meta["pruned"]] == [int(dedup.sum()), int(clip.sum())]
    assert make_sampler("compose", **recipe.params()).draw(pool, epoch=2, seed=3).indices.tobytes() == \
        plan.indices.tobytes()
    static = Compose((SemDeDup(0.05), SSPPruning(0.5)))
    assert not static.dynamic and static.draw(pool, epoch=1, seed=0).size == round(0.5 * pool.n_valid)
    with pytest.raises(ValueError, match="static pruner"):
        Compose((DynamicsSampler(), SemDeDup()))


# ---------------------------------------------------------------- determinism
STATIC = [SemDeDup(0.05), SemDeDup(0.05, budget=0.5), SSPPruning(0.5), SSPPruning(0.3, keep="easy", balanced=False),
          DBPPruning(0.5, l_nearest=2), ClipScoreFilter(0.3), UniformSampler(0.5, redraw=False),
          Compose((SemDeDup(0.05), DBPPruning(0.4, l_nearest=2)))]
DYNAMIC = [FlattenSampler(t=10), FlattenSampler(budget=0.4), Compose((ClipScoreFilter(0.5), DynamicsSampler(0.3)))]


def plan_bytes(plan) -> bytes:
    return b"".join(a.tobytes() for a in (plan.indices, plan.multiplicity, plan.cluster_size,
                                          plan.cluster_expected, plan.cluster_realised))


@pytest.mark.parametrize("sampler", STATIC + DYNAMIC, ids=lambda s: s.name)
def test_plans_are_byte_identical_for_the_same_seed_and_static_across_epochs(planted, sampler):
    pool = planted.pool()
    a = sampler.draw(pool, epoch=1, seed=9)
    assert plan_bytes(a) == plan_bytes(sampler.draw(pool, epoch=1, seed=9))
    idx = a.indices.astype(np.int64)
    assert np.all(np.diff(idx) > 0) and np.all(planted.cluster_id[idx] >= 0)
    assert a.multiplicity.dtype == np.uint16 and a.cluster_realised.sum() == a.size
    assert sampler.dynamic == (sampler in DYNAMIC)
    if not sampler.dynamic:
        assert plan_bytes(a) == plan_bytes(sampler.draw(pool, epoch=5, seed=9))


def test_compose_names_the_pruning_chain_when_the_budget_cannot_be_met(planted):
    recipe = Compose((SemDeDup(0.05), ClipScoreFilter(0.1), DynamicsSampler(0.5)))
    with pytest.raises(ValueError, match=r"compose: dynamics on the survivors \(\d+ → semdedup \d+ → clip_score \d+\)"):
        recipe.draw(planted.pool(), epoch=1, seed=0)


def test_compose_computes_survivors_once_per_pool_and_reads_them_back(planted, tmp_path):
    import dataclasses

    calls = []

    @dataclasses.dataclass(frozen=True)
    class CountingSemDeDup(SemDeDup):
        def keep_mask(self, pool, *, seed):
            calls.append(seed)
            return super().keep_mask(pool, seed=seed)

    steps = (CountingSemDeDup(0.05), ClipScoreFilter(0.5), DynamicsSampler(0.3))
    pool = dataclasses.replace(planted.pool(), fingerprint="pool-a")
    cached = Compose(steps, cache_dir=str(tmp_path / "cache"))
    plans = [cached.draw(pool, epoch=e, seed=4) for e in (1, 2, 1)]
    assert calls == [4], "pruners ran for the first epoch only"
    assert plan_bytes(plans[0]) == plan_bytes(plans[2]) and plans[0].meta == plans[2].meta
    uncached = Compose(steps)
    assert plan_bytes(uncached.draw(pool, epoch=2, seed=4)) == plan_bytes(plans[1]), "same plan as re-running"
    assert len(calls) == 2
    cached.draw(pool, epoch=1, seed=5)
    assert calls[-1] == 5 and len(list((tmp_path / "cache").glob("*.npy"))) == 2, "one mask per seed"
    cached.draw(dataclasses.replace(pool, fingerprint="pool-b"), epoch=1, seed=4)
    assert calls[-1] == 4 and len(list((tmp_path / "cache").glob("*.npy"))) == 1, "masks of older pools dropped"
    cached.draw(planted.pool(), epoch=1, seed=4)
    assert len(calls) == 5, "a pool without a fingerprint is never cached"


# ---------------------------------------------------------------------------------------------
# the one strategy registry (sample.registry): classes, parameters and feedback read from the class
# ---------------------------------------------------------------------------------------------


def test_the_registry_reads_parameters_and_feedback_from_each_strategy_class():
    """Every strategy's parameters are its dataclass's fields (no hand-kept list beside them), the
    recipe check accepts each and refuses any other, and ``needs_feedback`` is the class's."""
    import dataclasses

    from dynamics_assets.core.sample import SAMPLERS, registry, spec

    assert not hasattr(spec, "STRATEGIES"), "no second table of strategies"
    assert set(SAMPLERS) == set(registry.CLASSES) and len(SAMPLERS) >= 14
    for strategy, cls in SAMPLERS.items():
        fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("name", "dynamic", "cache_dir")]
        assert list(registry.parameters(strategy)) == fields, strategy
        name = next(f for f in dataclasses.fields(cls) if f.name == "name").default
        assert name == strategy, f"{cls.__name__} calls itself {name!r}, the registry {strategy!r}"
        assert registry.needs_feedback({"strategy": strategy}) is bool(getattr(cls, "needs_feedback", False))
        with pytest.raises(spec.SettingError, match=rf"has no parameter\(s\) \['zzz'\]; its parameters: "
                                                    rf"{re.escape(str(fields))}"):
            spec.normalise_sampler_spec({"strategy": strategy, "zzz": 1}, "r")
    assert [s for s in SAMPLERS if registry.needs_feedback(s)] == ["learnability"]
    with pytest.raises(ValueError, match=r"unknown strategy 'dynamic'; known: \["):
        registry.needs_feedback({"strategy": "dynamic"})
