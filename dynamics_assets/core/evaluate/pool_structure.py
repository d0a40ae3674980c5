"""Structure of a clustered pool against its ground-truth concepts (pure numpy, bincount-based).

What the benchmark comparison reports for each pool profile, so a reader can see what the
clusters give a cluster-based sampler to act on:

* cluster-size distribution: the share of the pool in the largest 10% of clusters (and in the
  smallest 20%), and the Gini coefficient of the cluster sizes (0 = all equal);
* concept purity (Σ over clusters of the majority concept's count / N) and the normalised mutual
  information between clusters and concepts (arithmetic-mean normalisation, as scikit-learn's
  default);
* the tail concepts — the 20% least frequent concepts, as Parashar et al. ("The neglected tails of
  vision-language models") — their share of the pool and of a plan (indices with multiplicity),
  and the number of clusters whose majority concept is a tail concept.

``measure_pool`` reads them from a synthetic pool's ground truth and its cluster assignment (DuckDB
join, streamed), ``plan_tail_rows`` the tail share of every committed plan, ``structure_markdown``
the comparison report's section.

Every figure comes from a cluster × concept contingency table accumulated with ``np.bincount``
(``Contingency.update`` per chunk), so a pool never has to be held in memory at once. Samples
with a negative cluster id (quarantined or held out) are left out of the cluster figures.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["Contingency", "PoolConcepts", "PoolStructure", "gini", "measure_pool", "plan_tail_rows",
           "plan_tail_share", "plan_tail_share_of", "pool_structure", "structure_markdown", "tail_concepts",
           "top_share"]

TAIL_FRACTION = 0.2  # Parashar et al.: tail = the 20% least frequent concepts


def gini(sizes: np.ndarray) -> float:
    """Gini coefficient of non-negative sizes: ``Σ_i Σ_j |x_i − x_j| / (2 n² mean)`` (0 = equal)."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2.0 * (ranks * x).sum() / (n * total) - (n + 1) / n)


def top_share(sizes: np.ndarray, fraction: float = 0.1, largest: bool = True) -> float:
    """Share of the total held by the ``ceil(fraction × n)`` largest (or smallest) entries."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    if largest:
        x = x[::-1]
    total = x.sum()
    return float(x[: max(1, math.ceil(fraction * len(x)))].sum() / total) if total else 0.0


def tail_concepts(frequencies: np.ndarray, fraction: float = TAIL_FRACTION) -> np.ndarray:
    """Boolean mask over concept ids: the ``round(fraction × C)`` (≥ 1) least frequent concepts
    (ties broken by concept id)."""
    frequencies = np.asarray(frequencies)
    n_tail = max(1, int(round(fraction * len(frequencies))))
    mask = np.zeros(len(frequencies), dtype=bool)
    mask[np.argsort(frequencies, kind="stable")[:n_tail]] = True
    return mask


def plan_tail_share(plan_concepts: np.ndarray, tail: np.ndarray, multiplicity: np.ndarray | None = None) -> float:
    """Share of a plan's draws (``multiplicity`` per entry, default 1) whose concept is a tail concept."""
    tail_draws, total = _tail_draws(plan_concepts, tail, multiplicity)
    return tail_draws / total if total else 0.0


def _tail_draws(plan_concepts: np.ndarray, tail: np.ndarray, multiplicity: np.ndarray | None) -> tuple[int, int]:
    """(draws of a tail concept, all draws) of plan entries (one chunk of a plan, or all of it)."""
    plan_concepts = np.asarray(plan_concepts, dtype=np.int64)
    weights = np.ones(len(plan_concepts), np.int64) if multiplicity is None else np.asarray(multiplicity, dtype=np.int64)
    if len(weights) != len(plan_concepts):
        raise ValueError(f"multiplicity has {len(weights)} entries, the plan {len(plan_concepts)}")
    if (weights < 0).any():
        raise ValueError("multiplicity must be non-negative")
    return int((weights * tail[plan_concepts]).sum()), int(weights.sum())


class Contingency:
    """Cluster × concept counts, accumulated chunk by chunk."""

    def __init__(self, k: int, n_concepts: int):
        if k < 1 or n_concepts < 1:
            raise ValueError(f"k={k} and n_concepts={n_concepts} must be ≥ 1")
        self.k, self.n_concepts = k, n_concepts
        self.counts = np.zeros((k, n_concepts), dtype=np.int64)
        self.concept_totals = np.zeros(n_concepts, dtype=np.int64)  # every sample, clustered or not

    def update(self, cluster_ids: np.ndarray, concept_ids: np.ndarray) -> None:
        clusters = np.asarray(cluster_ids, dtype=np.int64)
        labels = np.asarray(concept_ids, dtype=np.int64)
        if clusters.shape != labels.shape:
            raise ValueError(f"{len(clusters)} cluster ids but {len(labels)} concept ids")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.n_concepts):
            raise ValueError(f"concept ids must be in [0, {self.n_concepts})")
        if len(clusters) and clusters.max() >= self.k:
            raise ValueError(f"cluster id {clusters.max()} ≥ k = {self.k}")
        self.concept_totals += np.bincount(labels, minlength=self.n_concepts)
        kept = clusters >= 0
        codes = clusters[kept] * self.n_concepts + labels[kept]
        self.counts += np.bincount(codes, minlength=self.k * self.n_concepts).reshape(self.k, self.n_concepts)


@dataclass(frozen=True)
class PoolStructure:
    k: int  # clusters (including empty ones)
    n: int  # clustered samples
    top10_share: float  # share of the clustered samples in the largest 10% of clusters
    bottom20_share: float  # ... in the smallest 20%
    gini: float  # of the cluster sizes
    purity: float
    nmi: float
    n_tail_concepts: int
    tail_pool_share: float  # share of the pool (every sample given) whose concept is a tail concept
    tail_majority_clusters: int  # non-empty clusters whose majority concept is a tail concept
    tail_plan_share: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def structure_of(table: Contingency, frequencies: np.ndarray, tail_fraction: float = TAIL_FRACTION,
                 plan_concepts: np.ndarray | None = None, multiplicity: np.ndarray | None = None) -> PoolStructure:
    """The figures of an accumulated contingency table; ``frequencies``: the concepts' pool
    frequencies that define the tail (e.g. the generator's ``train_frequency``)."""
    frequencies = np.asarray(frequencies)
    if len(frequencies) != table.n_concepts:
        raise ValueError(f"{len(frequencies)} frequencies for {table.n_concepts} concepts")
    counts = table.counts
    sizes = counts.sum(axis=1)
    n = int(sizes.sum())
    if n == 0:
        raise ValueError("no clustered samples")
    tail = tail_concepts(frequencies, tail_fraction)
    h_clusters, h_concepts = _entropy(sizes), _entropy(counts.sum(axis=0))
    joint = counts[counts > 0] / n
    outer = (sizes[:, None] * counts.sum(axis=0)[None, :])[counts > 0] / n**2
    mutual = float((joint * np.log(joint / outer)).sum())
    mean_entropy = (h_clusters + h_concepts) / 2
    majority = counts.argmax(axis=1)
    total = table.concept_totals.sum()
    return PoolStructure(
        k=table.k,
        n=n,
        top10_share=top_share(sizes, 0.1),
        bottom20_share=top_share(sizes, 0.2, largest=False),
        gini=gini(sizes),
        purity=float(counts.max(axis=1).sum() / n),
        nmi=mutual / mean_entropy if mean_entropy > 0 else 1.0,
        n_tail_concepts=int(tail.sum()),
        tail_pool_share=float(table.concept_totals[tail].sum() / total),
        tail_majority_clusters=int((tail[majority] & (sizes > 0)).sum()),
        tail_plan_share=None if plan_concepts is None else plan_tail_share(plan_concepts, tail, multiplicity),
    )


def pool_structure(cluster_ids: np.ndarray, concept_ids: np.ndarray, frequencies: np.ndarray, *,
                   k: int | None = None, plan_indices: np.ndarray | None = None,
                   multiplicity: np.ndarray | None = None, tail_fraction: float = TAIL_FRACTION) -> PoolStructure:
    """All figures in one call (arrays aligned by sample index). ``plan_indices``: sample indices
    of a plan, ``multiplicity``: how often each is drawn (default once)."""
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    concept_ids = np.asarray(concept_ids, dtype=np.int64)
    k = int(cluster_ids.max()) + 1 if k is None else k
    table = Contingency(k, len(frequencies))
    table.update(cluster_ids, concept_ids)
    plan_concepts = None if plan_indices is None else concept_ids[np.asarray(plan_indices, dtype=np.int64)]
    return structure_of(table, frequencies, tail_fraction, plan_concepts, multiplicity)


# ---------------------------------------------------------------------------------------------
# From the artefacts: a synthetic pool's ground truth, its cluster assignment and the plans
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolConcepts:
    structure: PoolStructure
    concept_of_index: np.ndarray  # concept id per clustered sample index (-1: the index is not in the assignment)
    tail: np.ndarray  # boolean mask over concept ids


def measure_pool(ground_truth: str, concepts: str, manifest_dir: str, assignments: str, k: int, *,
                 tail_fraction: float = TAIL_FRACTION, batch_rows: int = 1 << 20) -> PoolConcepts:
    """The pool's structure from the generator's ``ground_truth.parquet`` (shard, key, concept_id of
    every training pair), its ``eval/concepts.parquet`` (concept_id, train_frequency: the tail's
    definition), the manifest (``manifest_dir/*.parquet``: sample_id, shard, key of every ok pair)
    and the clustering's ``assignments.parquet`` (sample_index, sample_id, cluster_id), joined in
    DuckDB (assignment → manifest on sample_id → ground truth on shard and key; a pair without a
    json uid gets a content-hash sample_id, so the uid cannot be the key) and streamed in record
    batches. Pairs the assignment does not hold (quarantined or held out) count in the pool's tail
    share, not in the cluster figures. An assigned sample the ground truth does not know is an
    error (the files are of different pools)."""
    import duckdb

    con = duckdb.connect()
    freq = con.execute("SELECT concept_id, train_frequency FROM read_parquet(?) ORDER BY concept_id",
                       [str(concepts)]).fetchnumpy()
    ids = np.asarray(freq["concept_id"], dtype=np.int64)
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{concepts}: concept ids are not 0..{len(ids) - 1}")
    frequencies = np.asarray(freq["train_frequency"], dtype=np.int64)
    assigned = ("WITH assigned AS (SELECT a.sample_index, a.cluster_id, m.shard, m.key FROM read_parquet(?) a "
                "LEFT JOIN (SELECT sample_id, shard, key FROM read_parquet(?) WHERE status = 'ok') m "
                "ON a.sample_id = m.sample_id) ")
    inputs = [str(assignments), str(Path(manifest_dir) / "*.parquet")]
    unknown, n_index = con.execute(
        assigned + "SELECT count(*) FILTER (WHERE g.key IS NULL), coalesce(max(a.sample_index) + 1, 0) "
        "FROM assigned a LEFT JOIN read_parquet(?) g ON a.shard = g.shard AND a.key = g.key",
        [*inputs, str(ground_truth)]).fetchall()[0]
    if unknown:
        raise ValueError(f"{unknown} assigned samples of {assignments} are not in {ground_truth} "
                         f"(through the manifest {manifest_dir}): not the same pool")
    concept_of = np.full(int(n_index), -1, dtype=np.int32)
    table = Contingency(k, len(frequencies))
    reader = con.sql(
        assigned + "SELECT g.concept_id, coalesce(a.cluster_id, -1) AS cluster_id, "
        "coalesce(a.sample_index, -1) AS sample_index "
        "FROM read_parquet(?) g LEFT JOIN assigned a ON a.shard = g.shard AND a.key = g.key",
        params=[*inputs, str(ground_truth)]).to_arrow_reader(batch_rows)
    for batch in reader:
        concept = batch.column("concept_id").to_numpy(zero_copy_only=False).astype(np.int64)
        cluster = batch.column("cluster_id").to_numpy(zero_copy_only=False).astype(np.int64)
        index = batch.column("sample_index").to_numpy(zero_copy_only=False).astype(np.int64)
        table.update(cluster, concept)
        assigned = index >= 0
        concept_of[index[assigned]] = concept[assigned]
    return PoolConcepts(structure_of(table, frequencies, tail_fraction), concept_of,
                        tail_concepts(frequencies, tail_fraction))


def plan_tail_share_of(plan, pool: PoolConcepts, where: str = "plan", chunk: int = 1 << 22) -> float:
    """Tail share of one ``Plan`` (e.g. ``read_plan(..., mmap=True)``), in chunks. A plan index
    outside the assignment is an error (a plan of another pool), naming ``where``."""
    tail_draws = total = 0
    for start in range(0, len(plan.indices), chunk):
        idx = np.asarray(plan.indices[start:start + chunk], dtype=np.int64)
        if len(idx) and idx.max() >= len(pool.concept_of_index):
            raise ValueError(f"{where}: index {idx.max()} beyond the pool's {len(pool.concept_of_index)} samples")
        concept = pool.concept_of_index[idx]
        if (concept < 0).any():
            raise ValueError(f"{where}: {(concept < 0).sum()} plan indices are not in the cluster assignment")
        draws = _tail_draws(concept, pool.tail, plan.multiplicity[start:start + chunk])
        tail_draws, total = tail_draws + draws[0], total + draws[1]
    return tail_draws / total if total else 0.0


def plan_tail_rows(sample_plan_root, pool: PoolConcepts, feedback_plan_root=None,
                   pool_version: str | None = None) -> tuple[list[dict], list[str]]:
    """The tail share of every ``<root>/<recipe>.s<seed>/<epoch>`` plan with a committed version;
    a recipe × epoch that drew a ``feedback_plan`` (the plan its training actually read) counts that
    one instead of its ``sample_plan``. With ``pool_version``, a plan drawn from another version of
    the clustered pool (before a re-curation: its indices count another pool) is not measured but
    returned in the second list (its directory)."""
    from dynamics_assets.core.io import versions
    from dynamics_assets.core.sample.plan_io import read_plan

    rows, other_pool = [], []
    for plan_dir in sorted(Path(sample_plan_root).glob("*/epoch-*")):
        name, _, seed = plan_dir.parent.name.rpartition(".s")
        if not name or not seed.isdigit():
            continue
        source = "sample_plan"
        if feedback_plan_root is not None:
            feedback = Path(feedback_plan_root) / plan_dir.parent.name / plan_dir.name
            if feedback.is_dir() and versions.Artefact(feedback).current() is not None:
                plan_dir, source = feedback, "feedback_plan"
        if versions.Artefact(plan_dir).current() is None and not (plan_dir / "indices.npy").is_file():
            continue
        plan = read_plan(plan_dir, mmap=True)
        if pool_version is not None and plan.meta.get("pool_version") not in (None, pool_version):
            other_pool.append(str(plan_dir))
            continue
        rows.append({"recipe": name, "seed": int(seed), "epoch": int(plan_dir.name.split("-")[-1]),
                     "plan": source, "tail_share": plan_tail_share_of(plan, pool, str(plan_dir))})
    return rows, other_pool


def structure_markdown(pool: PoolConcepts, rows: list[dict], recipe_order: list[str] | None = None,
                       online: set[str] = frozenset(), other_pool: int = 0) -> tuple[str, list[dict]]:
    """Markdown of the pool's structure and of the tail's share of every recipe's plans (mean over
    seeds × epochs, its range, and its ratio to the pool's share), and that per-recipe table."""
    s = pool.structure
    lines = ["## Pool structure (against the generator's ground-truth concepts)", "",
             "| clusters | clustered pairs | largest 10% of clusters hold | smallest 20% hold | Gini of sizes | "
             "concept purity | NMI | tail concepts | tail share of pool | clusters with a tail majority |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {s.k} | {s.n:,} | {s.top10_share:.3f} | {s.bottom20_share:.3f} | {s.gini:.3f} | {s.purity:.3f} | "
             f"{s.nmi:.3f} | {s.n_tail_concepts} | {s.tail_pool_share:.3f} | {s.tail_majority_clusters} |", ""]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r)
    order = [n for n in (recipe_order or []) if n in by] + sorted(n for n in by if n not in (recipe_order or []))
    table = []
    for name in order:
        shares = np.array([r["tail_share"] for r in by[name]])
        table.append({"recipe": name, "plans": len(shares), "tail_share": float(shares.mean()),
                      "min": float(shares.min()), "max": float(shares.max()),
                      "ratio_to_pool": float(shares.mean() / s.tail_pool_share) if s.tail_pool_share else float("nan"),
                      "plan": "+".join(sorted({r["plan"] for r in by[name]})), "online": name in online})
    if table:
        lines += ["## Tail concepts' share of each recipe's plans", "",
                  "| recipe | plans (seeds × epochs) | tail share (mean) | range | × pool's share | plan read |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t['recipe']}{' †' if t['online'] else ''} | {t['plans']} | {t['tail_share']:.3f} | "
                  f"{t['min']:.3f}–{t['max']:.3f} | {t['ratio_to_pool']:.2f} | {t['plan']} |" for t in table]
        lines.append("")
        if online & set(by):
            lines += ["† selects each batch online from its plan's candidates: the share is of the candidates, "
                      "not of the pairs it trained on.", ""]
    if other_pool:
        lines += [f"{other_pool} plan(s) drawn from an earlier version of the clustered pool are not measured "
                  "(their indices count another pool).", ""]
    return "\n".join(lines), table
