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

Every figure comes from a cluster × concept contingency table accumulated with ``np.bincount``
(``Contingency.update`` per chunk), so a pool never has to be held in memory at once. Samples
with a negative cluster id (quarantined or held out) are left out of the cluster figures.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Contingency", "PoolStructure", "gini", "plan_tail_share", "pool_structure", "tail_concepts",
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
    plan_concepts = np.asarray(plan_concepts, dtype=np.int64)
    weights = np.ones(len(plan_concepts)) if multiplicity is None else np.asarray(multiplicity, dtype=np.float64)
    if len(weights) != len(plan_concepts):
        raise ValueError(f"multiplicity has {len(weights)} entries, the plan {len(plan_concepts)}")
    if (weights < 0).any():
        raise ValueError("multiplicity must be non-negative")
    total = weights.sum()
    return float((weights * tail[plan_concepts]).sum() / total) if total else 0.0


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
