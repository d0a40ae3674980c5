"""The comparison design: recipes × seeds on one pool, with controls, a pool gate and matched compute.

Stages (each result is a file under the design's root, committed atomically, so the run resumes):

1. **pool**   the synthetic pool (``ingest.synthetic.generate``) or a user's shards (``--source``),
              its manifest (``ingest.manifest.build_manifest``: quarantined pairs counted, never
              trained on), the frozen tower's features of every ok pair (``embed.frozen``), the
              captions' tokens, the evaluation set's features, and — where the pool has ground
              truth — each pair's concept.
2. **clusters** spherical faiss k-means on the features (k by ``cluster.params.k_for``), then the
              paper's greedy centroid merge, its threshold calibrated for this encoder (below), then
              every pair assigned to its nearest kept centroid. The oracle's clusters are the
              generator's concepts.
3. **gate**   every recipe's plans for every seed and epoch are drawn first (seconds) and the tail's
              share of each plan is divided by its share of the valid pool: the *plan tail lift*.
              A design where DynamiCS lifts the tail less than ``GATE_LIFT`` (1.5×) is flagged at the
              top of the report: its clusters do not carry the tail, so no training can show
              DynamiCS's effect on it.
4. **runs**   one LiT learner (``train.lit``) per recipe × seed, trained on that recipe's plans;
              per-image zero-shot correctness saved per run (``runs/<recipe>.s<seed>.npz``).
5. **report** (``evaluate.design_report``) each recipe against uniform at equal training compute
              and at equal all-in compute, paired by seed and image, t intervals, Holm; the controls
              first.

Merge calibration: DynamiCS merges centroids at cos ≥ 0.70 for DINOv2 features; a cosine threshold
belongs to its encoder. The calibrated threshold is the median cosine of a pair to its own centroid
under this encoder: two centroids closer to each other than a typical member is to its centroid are
one concept. It is computed from the unmerged clustering, never from the labels, and reported.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dynamics_assets.core.io.atomic import atomic_path

log = logging.getLogger(__name__)

GATE_LIFT = 1.5
CONTROL_KINDS = ("positive", "negative")


@dataclass(frozen=True)
class Recipe:
    name: str
    sampler: dict[str, Any]
    clusters: str = "kmeans"  # "kmeans" | "concepts" (the oracle: needs ground truth)
    control: str | None = None  # "positive" | "negative" | None

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> "Recipe":
        spec = dict(spec)
        clusters = spec.pop("clusters", "kmeans")
        control = spec.pop("control", None)
        if clusters not in ("kmeans", "concepts"):
            raise ValueError(f"recipe {name}: clusters must be 'kmeans' or 'concepts', got {clusters!r}")
        if control not in (None, *CONTROL_KINDS):
            raise ValueError(f"recipe {name}: control must be one of {CONTROL_KINDS}, got {control!r}")
        if "strategy" not in spec:
            raise ValueError(f"recipe {name}: no strategy")
        recipe = cls(name, spec, clusters, control)
        recipe.make()  # refuse a bad parameter now, naming the strategy and its range
        return recipe

    @property
    def is_uniform(self) -> bool:
        return self.sampler["strategy"] == "uniform" and self.clusters == "kmeans"

    def make(self):
        from dynamics_assets.core.sample.registry import make_sampler
        params = {k: v for k, v in self.sampler.items() if k != "strategy"}
        return make_sampler(self.sampler["strategy"], **params)


@dataclass(frozen=True)
class DesignConfig:
    recipes: tuple[Recipe, ...]
    seeds: tuple[int, ...]
    epochs: int
    learner: dict[str, Any]
    pool: dict[str, Any] = field(default_factory=dict)
    k: int | None = None
    merge: str | float | None = "calibrated"
    primary: str = "dynamics-exact-50"

    @classmethod
    def from_yaml(cls, path: str | Path, *, seeds: int | None = None, recipes: list[str] | None = None,
                  epochs: int | None = None) -> "DesignConfig":
        import yaml
        spec = yaml.safe_load(Path(path).read_text())
        all_recipes = [Recipe.from_spec(n, s) for n, s in spec["recipes"].items()]
        if recipes:
            unknown = set(recipes) - {r.name for r in all_recipes}
            if unknown:
                raise ValueError(f"unknown recipe(s) {sorted(unknown)}; known: {[r.name for r in all_recipes]}")
            all_recipes = [r for r in all_recipes if r.name in recipes]
        else:   # the primary design: the secondary recipes run only when named with --recipes
            secondary = set(spec.get("secondary") or ())
            if secondary - {r.name for r in all_recipes}:
                raise ValueError(f"secondary names unknown recipe(s) {sorted(secondary - {r.name for r in all_recipes})}")
            all_recipes = [r for r in all_recipes if r.name not in secondary]
        n_seeds = int(seeds or spec.get("seeds", 10))
        clusters = spec.get("clusters") or {}
        return cls(recipes=tuple(all_recipes), seeds=tuple(range(n_seeds)), epochs=int(epochs or spec["learner"]["epochs"]),
                   learner={k: v for k, v in spec["learner"].items() if k != "epochs"}, pool=dict(spec.get("pool") or {}),
                   k=clusters.get("k"), merge=clusters.get("merge", "calibrated"),
                   primary=spec.get("primary", "dynamics-exact-50"))


# ---------------------------------------------------------------------------------------------
# 1. the pool
# ---------------------------------------------------------------------------------------------
@dataclass
class PreparedPool:
    root: Path
    manifest_dir: Path
    n_generated: int  # every input pair (ok + quarantined)
    n_valid: int
    features: np.ndarray  # (n_valid, 1280) float16 memmap, pool order
    tokens: np.ndarray  # (n_valid, ctx) int32
    concept: np.ndarray | None  # (n_valid,) concept id per pair, None without ground truth
    caption_class: np.ndarray | None  # (n_valid,) class row the caption names (-1: none or several); user pools
    eval_features: np.ndarray
    eval_labels: np.ndarray  # row into the class table
    class_names: list[list[str]]
    templates: tuple[str, ...]
    train_frequency: np.ndarray  # per class (generator's counts, or caption counts for a user's pool)
    eval_concept_ids: np.ndarray  # concept id of each class row (ground truth pools)
    identity: str  # the pool's manifest version
    eval_identity: str  # digest of the evaluation set's images, labels and class names: runs are keyed by it too
    tower_flops: int
    notes: dict[str, str]

    @property
    def n_concepts(self) -> int:
        """Concept ids in the ground truth (the oracle's clusters): 0 … n − 1."""
        return int(max(self.concept.max() + 1, len(self.train_frequency)))


def _emit(progress: Callable[[str], None] | None, msg: str) -> None:
    log.info(msg)
    if progress:
        progress(msg)


def prepare_pool(root: str | Path, *, source: str | None = None, eval_dir: str | None = None,
                 pool: Mapping[str, Any] | None = None, context_length: int = 16,
                 progress: Callable[[str], None] | None = None, device: str = "cpu") -> PreparedPool:
    """Stage 1 (module doc). ``source``: a folder of webdataset shards (a user's pool); None: the
    synthetic pool with ``pool``'s generator settings. ``eval_dir``: the labelled evaluation set
    (required with ``source``)."""
    from dynamics_assets.core.embed.frozen import FrozenTower, encode_images, encode_pool
    from dynamics_assets.core.ingest.manifest import build_manifest
    from dynamics_assets.core.ingest.pool import pool_shards, shard_ok_rows
    from dynamics_assets.core.train.lit import tokenize

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str] = {}
    ground_truth = None
    if source is None:
        from dynamics_assets.core.ingest.synthetic import WebProfile, generate
        opts = dict(pool or {})
        web = WebProfile(**(opts.pop("web", None) or {}))
        ds = generate(root / "pool", web=web, **opts)
        shards, eval_dir, ground_truth = list(ds.shards), str(ds.eval_dir), ds.ground_truth_path
        notes["pool"] = (f"synthetic `{ds.profile}` pool: {ds.pairs:,} pairs, {ds.bursts:,} near-duplicate bursts "
                         f"({ds.burst_members:,} pairs), Zipf s = {opts.get('zipf_s', 1.3)}")
    else:
        shards = sorted(Path(source).glob("*.tar"))
        if not shards:
            raise ValueError(f"--source {source}: no .tar shards")
        if eval_dir is None:
            raise ValueError("a user's pool needs --eval (a labelled set: ImageFolder or clip_benchmark webdataset)")
        notes["pool"] = f"your pool: {len(shards)} shard(s) from {source}"
    summary = build_manifest(shards, root / "manifest")
    manifest_dir = Path(summary.version_dir)
    shards_dir = Path(shards[0]).parent
    pool_shard_list = pool_shards(manifest_dir)
    n_valid = sum(s.n_ok for s in pool_shard_list)
    identity = summary.version_id
    tower = FrozenTower(device=device)
    feats_path = root / f"features-{identity}.npy"
    if not feats_path.exists():
        t0 = time.perf_counter()
        encode_pool(tower, manifest_dir, shards_dir, feats_path)
        _emit(progress, f"pool features: {n_valid:,} pairs in {time.perf_counter() - t0:.0f} s")
    tokens_path = root / f"tokens-{identity}-{context_length}.npy"
    concept_path = root / f"concepts-{identity}.npy"
    text: list = []  # (captions, keys) of the ok pairs, read at most once, only when a file below is missing

    def pool_text() -> tuple[list[str], list[tuple[str, str]]]:
        if not text:
            captions, keys = [], []
            for s in pool_shard_list:
                rows = shard_ok_rows(s, ["caption", "key"])
                captions += [c or "" for c in rows["caption"].to_pylist()]
                keys += [(s.name, k) for k in rows["key"].to_pylist()]
            text.extend([captions, keys])
        return text[0], text[1]

    if not tokens_path.exists():
        with atomic_path(tokens_path) as tmp:
            np.save(tmp, tokenize(pool_text()[0], context_length))
    if ground_truth is not None and not concept_path.exists():
        import pyarrow.parquet as pq
        keys = pool_text()[1]
        gt = pq.read_table(ground_truth, columns=["shard", "key", "concept_id"]).to_pydict()
        lookup = {(sh, k): c for sh, k, c in zip(gt["shard"], gt["key"], gt["concept_id"])}
        missing = [k for k in keys if k not in lookup]
        if missing:
            raise ValueError(f"{len(missing)} pool pairs are not in {ground_truth}, e.g. {missing[:2]}")
        with atomic_path(concept_path) as tmp:
            np.save(tmp, np.array([lookup[k] for k in keys], dtype=np.int32))
    eval_set, freq, concept_ids = _eval_set(eval_dir, manifest_dir, synthetic=source is None)
    caption_class = None
    if ground_truth is None:
        class_path = root / f"caption-class-{identity}-{_digest(eval_set.prompt_names)}.npy"
        if not class_path.exists():
            with atomic_path(class_path) as tmp:
                np.save(tmp, caption_classes(pool_text()[0], eval_set.prompt_names))
        caption_class = np.load(class_path)
        named = float((caption_class >= 0).mean())
        notes["caption_classes"] = (f"{named:.0%} of the valid pairs have a caption naming exactly one class: the "
                                    "gate's tail lift is measured on them (no ground truth)")
    content = hashlib.sha256()
    for data in eval_set.encoded_images:  # the images themselves, so a set rewritten in place is re-encoded
        content.update(hashlib.sha256(data).digest())
    eval_path = root / f"eval-features-{content.hexdigest()[:16]}.npy"
    if not eval_path.exists():
        encode_images(tower, (eval_set.image(i) for i in range(len(eval_set))), len(eval_set), eval_path)
    notes["eval"] = f"{len(eval_set):,} evaluation images, {len(eval_set.prompt_names)} classes ({eval_dir})"
    if ground_truth is None:
        notes["ground_truth"] = ("none: the concept oracle (positive and negative controls) and cluster purity "
                                 "are left out; the tail is the 20% of classes least named in the pool's captions")
    return PreparedPool(
        root=root, manifest_dir=manifest_dir, n_generated=summary.total, n_valid=n_valid,
        features=np.load(feats_path, mmap_mode="r"), tokens=np.load(tokens_path, mmap_mode="r"),
        concept=np.load(concept_path) if ground_truth is not None else None, caption_class=caption_class,
        eval_features=np.load(eval_path), eval_labels=np.asarray(eval_set.labels),
        class_names=eval_set.prompt_names, templates=tuple(eval_set.templates), train_frequency=freq,
        eval_concept_ids=concept_ids, identity=identity,
        eval_identity=_digest([content.hexdigest(), np.asarray(eval_set.labels).tolist(), eval_set.prompt_names]),
        tower_flops=tower.flops_per_image(), notes=notes)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def caption_classes(captions, prompt_names) -> np.ndarray:
    """Per caption, the class row whose name (or synonym) it names as whole words, plurals too
    (``ingest.text.concept_pattern``, the rule the pool's caption frequencies use); -1 when it
    names none or several classes."""
    import re

    from dynamics_assets.core.ingest.text import concept_pattern
    patterns = [re.compile(concept_pattern(names)) for names in prompt_names]
    out = np.full(len(captions), -1, dtype=np.int32)
    for i, caption in enumerate(captions):
        hits = [c for c, p in enumerate(patterns) if p.search(caption)]
        if len(hits) == 1:
            out[i] = hits[0]
    return out


def _eval_set(eval_dir, manifest_dir, *, synthetic: bool):
    if synthetic:
        from dynamics_assets.core.evaluate.report import load_eval_set
        es = load_eval_set(eval_dir)
        return es, np.asarray(es.train_frequency), np.asarray(es.concept_ids)
    from dynamics_assets.core.evaluate import frequency, labelled
    es = labelled.load_labelled_set(eval_dir)
    freq = np.asarray(frequency.caption_frequency(manifest_dir, es.prompt_names))
    return labelled.with_train_frequency(es, freq), freq, np.arange(len(freq))


# ---------------------------------------------------------------------------------------------
# 2. clusters
# ---------------------------------------------------------------------------------------------
@dataclass
class Clustering:
    ids: np.ndarray  # (n_valid,) int32
    n_clusters: int
    k: int
    merge_threshold: float | None
    calibration: str
    flops: float  # k-means training + assignment


def cluster_pool(features: np.ndarray, *, k: int | None = None, merge: str | float | None = "calibrated",
                 seed: int = 0, niter: int = 10, chunk: int = 65536) -> Clustering:
    """Stage 2 (module doc): spherical k-means, calibrated merge, assignment; chunked over the pool."""
    import faiss

    from dynamics_assets.core.cluster.kmeans import _normalised_rows, merge_centroids
    from dynamics_assets.core.cluster.params import k_for

    def _normalised(x: np.ndarray) -> np.ndarray:
        return _normalised_rows(x)[0]

    n, d = features.shape
    k = int(k or k_for(n))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, 1000 * k), replace=False))
    km = faiss.Kmeans(d, k, niter=niter, spherical=True, seed=seed, verbose=False)
    km.train(_normalised(features[sample]))
    centroids = _normalised(km.centroids)

    def assign(cents):
        index = faiss.IndexFlatIP(d)
        index.add(cents)
        ids = np.empty(n, np.int32)
        cos = np.empty(n, np.float32)
        for s in range(0, n, chunk):
            sims, nearest = index.search(_normalised(features[s:s + chunk]), 1)
            ids[s:s + chunk], cos[s:s + chunk] = nearest[:, 0], sims[:, 0]
        return ids, cos

    ids, cos = assign(centroids)
    threshold, calibration = None, "no merge"
    if merge == "calibrated":
        threshold = float(np.median(cos))
        calibration = (f"calibrated: the median cosine of a pair to its own centroid, {threshold:.3f} "
                       f"(DynamiCS: 0.70 for DINOv2)")
    elif merge is not None:
        threshold, calibration = float(merge), f"fixed at {float(merge):.3f}"
    if threshold is not None:
        kept, _ = merge_centroids(centroids, threshold=threshold)
        ids, _ = assign(kept)
        n_clusters = len(kept)
    else:
        n_clusters = k
    flops = 2.0 * len(sample) * k * d * niter + 2.0 * n * k * d * (2 if threshold is not None else 1)
    return Clustering(ids, n_clusters, k, threshold, calibration, flops)


# ---------------------------------------------------------------------------------------------
# 3. plans and the gate
# ---------------------------------------------------------------------------------------------
def cluster_pools(prepared: PreparedPool, clustering: Clustering) -> dict[str, Any]:
    from dynamics_assets.core.sample.base import ClusterPool
    pools = {"kmeans": ClusterPool.from_array(clustering.ids, clustering.n_clusters)}
    if prepared.concept is not None:
        pools["concepts"] = ClusterPool.from_array(prepared.concept.astype(np.int32), prepared.n_concepts)
    return pools


def draw_plans(recipe: Recipe, pools: Mapping[str, Any], seed: int, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if recipe.clusters not in pools:
        raise ValueError(f"recipe {recipe.name} needs clusters={recipe.clusters!r}, which this pool lacks "
                         "(no ground truth)")
    sampler = recipe.make()
    pool = pools[recipe.clusters]
    plans = []
    for epoch in range(epochs):
        plan = sampler.draw(pool, epoch=epoch, seed=seed)
        plans.append((np.asarray(plan.indices, np.int64), np.asarray(plan.multiplicity, np.int64)))
    return plans


def plan_tail_lift(plans, prepared: PreparedPool, pair_is_tail: np.ndarray) -> float:
    """Tail share of the plans' draws (multiplicity counted, all epochs) ÷ the tail's share of the
    valid pool."""
    base = pair_is_tail.mean()
    draws = sum(int(m.sum()) for _, m in plans)
    tail = sum(int((m * pair_is_tail[i]).sum()) for i, m in plans)
    return (tail / draws) / base if draws and base else float("nan")


def pair_tail(prepared: PreparedPool) -> np.ndarray | None:
    """Per valid pair: is its concept a tail concept — by ground truth, or, on a user's pool, by the
    class its caption names (``caption_classes``)."""
    from dynamics_assets.core.evaluate.design_report import tail_mask
    tail_rows = tail_mask(prepared)
    if prepared.concept is None:
        if prepared.caption_class is None:
            return None
        return np.isin(prepared.caption_class, np.flatnonzero(tail_rows))
    tail_ids = set(np.asarray(prepared.eval_concept_ids)[tail_rows].tolist())
    return np.isin(prepared.concept, list(tail_ids))


def recipe_lifts(recipes, pools: Mapping[str, Any], prepared: PreparedPool, pair_is_tail: np.ndarray | None,
                 seeds, epochs: int, plans: Mapping[tuple[str, int], Any] | None = None) -> dict[str, float]:
    """Each recipe's plan tail lift, the mean over ``seeds`` of every epoch's plans (``plans``: already
    drawn, keyed (recipe, seed); else drawn here). NaN without a tail (no ground truth, no caption classes)."""
    out = {}
    for r in recipes:
        if pair_is_tail is None:
            out[r.name] = float("nan")
            continue
        lifts = [plan_tail_lift(plans[(r.name, s)] if plans is not None else draw_plans(r, pools, s, epochs),
                                prepared, pair_is_tail) for s in seeds]
        out[r.name] = float(np.mean(lifts))
    return out


# ---------------------------------------------------------------------------------------------
# 4. runs
# ---------------------------------------------------------------------------------------------
def class_tokens(prepared: PreparedPool, context_length: int) -> np.ndarray:
    from dynamics_assets.core.train.lit import tokenize
    rows = []
    for names in prepared.class_names:
        rows.append(tokenize([t.format(names[0]) for t in prepared.templates], context_length))
    return np.stack(rows)


def run_key(recipe: Recipe, seed: int, epochs: int, learner: Mapping[str, Any], pool_identity: str,
            clustering: Clustering, device: str = "cpu", eval_identity: str = "") -> str:
    from dynamics_assets.core.train.lit import LIT_VERSION
    blob = json.dumps({"lit": LIT_VERSION, "recipe": recipe.sampler, "clusters": recipe.clusters, "seed": seed, "epochs": epochs,
                       "learner": dict(learner), "pool": pool_identity, "k": clustering.k,
                       "merge": clustering.merge_threshold, "eval": eval_identity,
                       **({"device": device} if device != "cpu" else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_one(prepared: PreparedPool, recipe: Recipe, seed: int, plans, settings, ctokens: np.ndarray,
            out: Path, key: str, device: str = "cpu") -> dict[str, Any]:
    from dynamics_assets.core.train.lit import train_lit
    run = train_lit(prepared.features, prepared.tokens, plans, prepared.eval_features, prepared.eval_labels,
                    ctokens, settings, seed, device=device)
    record = {"recipe": recipe.name, "seed": seed, "key": key, "steps": run.steps, "samples_seen": run.samples_seen,
              "distinct_seen": run.distinct_seen, "seconds": round(run.seconds, 2), "final_loss": run.final_loss,
              "top1": float(run.correct.mean())}
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, correct=run.correct.astype(np.uint8), record=json.dumps(record))
    return record


def load_run(path: Path, key: str) -> tuple[np.ndarray, dict] | None:
    if not path.exists():
        return None
    with np.load(path) as z:
        record = json.loads(str(z["record"]))
        if record.get("key") != key:
            return None
        return z["correct"].astype(np.float64), record


def run_design(root: str | Path, config: DesignConfig, *, source: str | None = None, eval_dir: str | None = None,
               progress: Callable[[str], None] | None = print, threads: int | None = None,
               device: str = "cpu", part: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """Run (or resume) the whole design and write the report; returns the report's summary dict.
    ``part=(i, n)``: train only the runs whose position in the run order is ≡ i (mod n) — n such
    processes share the runs (each run is one file, committed atomically) — and write no report
    (returns None); a call without ``part`` then reuses every run and writes it."""
    import torch

    from dynamics_assets.core.evaluate.design_report import analyse, write_report
    from dynamics_assets.core.train.lit import LitSettings, flops_per_sample

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    root = Path(root)
    settings = LitSettings(**config.learner)
    prepared = prepare_pool(root, source=source, eval_dir=eval_dir, pool=config.pool,
                            context_length=settings.context_length, progress=progress, device=device)
    _emit(progress, f"pool: {prepared.n_valid:,} valid pairs of {prepared.n_generated:,}; "
                    f"{len(prepared.eval_labels):,} evaluation images")
    clustering = cluster_pool(prepared.features, k=config.k, merge=config.merge)
    _emit(progress, f"clusters: k = {clustering.k}, {clustering.n_clusters} after the merge ({clustering.calibration})")
    pools = cluster_pools(prepared, clustering)
    recipes = [r for r in config.recipes if r.clusters in pools]
    skipped = [r.name for r in config.recipes if r.clusters not in pools]
    is_tail = pair_tail(prepared)
    # 3. the gate: every plan first
    t0 = time.perf_counter()
    plans = {(r.name, s): draw_plans(r, pools, s, config.epochs) for r in recipes for s in config.seeds}
    gate = recipe_lifts(recipes, pools, prepared, is_tail, config.seeds, config.epochs, plans=plans)
    _emit(progress, f"gate: plans of {len(recipes)} recipes × {len(config.seeds)} seeds × {config.epochs} epochs drawn in "
                    f"{time.perf_counter() - t0:.1f} s; tail lift " +
                    ", ".join(f"{n} {v:.2f}×" for n, v in gate.items()))
    # 4. runs
    ctokens = class_tokens(prepared, settings.context_length)
    runs_dir = root / "runs"
    runs_dir.mkdir(exist_ok=True)
    results: dict[tuple[str, int], tuple[np.ndarray, dict]] = {}
    todo = [(r, s) for s in config.seeds for r in recipes]
    for i, (r, s) in enumerate(todo, 1):
        key = run_key(r, s, config.epochs, config.learner, prepared.identity, clustering, device,
                      prepared.eval_identity)
        path = runs_dir / f"{r.name}.s{s}.npz"
        got = load_run(path, key)
        if got is None and part is not None and (i - 1) % part[1] != part[0]:
            continue  # another part's run
        if got is None:
            record = run_one(prepared, r, s, plans[(r.name, s)], settings, ctokens, path, key, device)
            got = load_run(path, key)
            _emit(progress, f"run {i}/{len(todo)}: {r.name} seed {s}: top-1 {record['top1']:.3f}, "
                            f"{record['steps']} steps in {record['seconds']:.0f} s")
        results[(r.name, s)] = got
    if part is not None:
        _emit(progress, f"part {part[0]}/{part[1]} done ({len(results)} of {len(todo)} runs on disk); "
                        "run without --part to write the report")
        return None
    learner_flops = flops_per_sample(prepared.features.shape[1], settings)
    summary = analyse(prepared, clustering, recipes, config, results, gate, pools,
                      learner_flops=learner_flops, skipped=skipped,
                      wall_seconds=time.perf_counter() - started)
    write_report(root, summary)
    _emit(progress, f"report: {root / 'report.md'} ({summary['wall_seconds'] / 60:.1f} min)")
    return summary


# ---------------------------------------------------------------------------------------------
# the gate over a grid of clusterings (no training)
# ---------------------------------------------------------------------------------------------
GRID_K_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
GRID_MERGES: tuple[str | float | None, ...] = (None, "calibrated", 0.70)


def gate_grid(root: str | Path, config: DesignConfig, *, source: str | None = None, eval_dir: str | None = None,
              progress: Callable[[str], None] | None = print, device: str = "cpu",
              k_factors: tuple[float, ...] = GRID_K_FACTORS,
              merges: tuple[str | float | None, ...] = GRID_MERGES) -> list[dict[str, Any]]:
    """The pool gate for a grid of clusterings, before (and without) any training: for k at multiples of
    the design's k and each merge (none, calibrated, DynamiCS's 0.70), the clusters' shape and every
    cluster-based recipe's plan tail lift (all seeds and epochs of the design). It answers "could any
    clustering of these embeddings let a size-based sampler carry the tail?" in seconds. The design
    itself keeps the k and merge of its file: picking them from this grid after seeing it is tuning.
    Writes ``gate_grid.md`` and ``gate_grid.json`` under ``root``."""
    from dynamics_assets.core.cluster.params import k_for
    from dynamics_assets.core.evaluate.design_report import cluster_structure
    from dynamics_assets.core.io.atomic import write_json

    root = Path(root)
    prepared = prepare_pool(root, source=source, eval_dir=eval_dir, pool=config.pool,
                            context_length=int(config.learner.get("context_length", 16)), progress=progress,
                            device=device)
    is_tail = pair_tail(prepared)
    if is_tail is None:
        raise ValueError("the gate grid needs the tail: ground truth, or captions that name the evaluation classes")
    n = prepared.features.shape[0]
    base_k = int(config.k or k_for(n))
    recipes = [r for r in config.recipes if r.clusters == "kmeans" and not r.is_uniform]
    oracle = [r for r in config.recipes if r.clusters == "concepts"] if prepared.concept is not None else []

    rows: list[dict[str, Any]] = []
    oracle_lift: dict[str, float] = {}
    ks = sorted({max(2, min(n // 20, int(round(base_k * f)))) for f in k_factors})
    for k in ks:
        for merge in merges:
            t0 = time.perf_counter()
            clustering = cluster_pool(prepared.features, k=k, merge=merge)
            pools = cluster_pools(prepared, clustering)
            if oracle and not oracle_lift:  # the concepts do not depend on the clustering
                oracle_lift = recipe_lifts(oracle, pools, prepared, is_tail, config.seeds, config.epochs)
            row = {"k": k, "merge": "none" if merge is None else merge, **cluster_structure(prepared, clustering),
                   "lift": recipe_lifts(recipes, pools, prepared, is_tail, config.seeds, config.epochs),
                   "design": k == base_k and merge == config.merge}
            rows.append(row)
            _emit(progress, f"k {k}, merge {row['merge']}: {row['clusters']} clusters, tail lift " +
                  ", ".join(f"{name} {v:.2f}×" for name, v in row["lift"].items()) +
                  f" ({time.perf_counter() - t0:.0f} s)")
    lines = ["# Pool gate over a grid of clusterings", "",
             f"Plan tail lift (the tail's share of the plans ÷ its share of the valid pool; {len(config.seeds)} seeds × "
             f"{config.epochs} epochs) of each cluster-based recipe, for k at multiples of the design's k ({base_k}) "
             "and each centroid merge. The gate flags a lift below 1.5×. The row marked * is the design's own "
             "setting, fixed before this grid was seen.", ""]
    if oracle_lift:
        lines += ["Oracle (clusters = the generator's concepts): " +
                  ", ".join(f"{name} {v:.2f}×" for name, v in oracle_lift.items()) + ".", ""]
    names = [r.name for r in recipes]
    has_purity = any("purity" in r for r in rows)
    lines.append("| k | merge | threshold | clusters | top-10% share | Gini |" + (" purity | tail-majority |" if has_purity else "")
                 + "".join(f" {name} |" for name in names))
    lines.append("|---" * (6 + 2 * has_purity + len(names)) + "|")
    for r in rows:
        thr = "—" if r["merge_threshold"] is None else f"{r['merge_threshold']:.3f}"
        cells = [f"{r['k']}{' *' if r['design'] else ''}", str(r["merge"]), thr, str(r["clusters"]),
                 f"{r['top10_share']:.2f}", f"{r['gini']:.2f}"]
        if has_purity:
            cells += [f"{r.get('purity', float('nan')):.2f}", str(r.get("tail_majority_clusters", "—"))]
        cells += [f"{r['lift'][name]:.2f}×" for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    with atomic_path(root / "gate_grid.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(root / "gate_grid.json", {"design_k": base_k, "oracle": oracle_lift, "rows": rows})
    _emit(progress, f"gate grid: {root / 'gate_grid.md'}")
    return rows
