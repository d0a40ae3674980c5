"""The pool plan: per-sample integers only (no images) — the RNG streams and uids, the concept ranks and
Zipf frequencies, the dirt (``DirtRates``) and duplicate sources, and the web profile's near-duplicate
bursts (``WebProfile``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numpy as np

from .concepts import concepts, zipf_counts

DIRT_TYPES = (
    "exact_duplicate",
    "near_duplicate",
    "mismatched_caption",
    "empty_caption",
    "corrupt_image",
    "missing_caption",
)


_TRAIN, _EVAL, _PLAN, _RANKS, _EVAL_PLAN = 1, 2, 3, 4, 5  # independent RNG streams per seed
_BURST_PLAN, _BURST, _EVAL_TRAIN, _EVAL_TRAIN_PLAN = 6, 7, 8, 9  # web profile and the training-style eval set
_CURATED, _CURATED_PLAN = 10, 11  # the clean curated set (generate_curated): its own streams, its own uids


def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *index])


def _uid(seed: int, split: str, index: int) -> str:
    return hashlib.blake2b(f"dynamics-synthetic:{seed}:{split}:{index}".encode(), digest_size=16).hexdigest()


def _key(shard: int, index: int) -> str:
    return f"{shard:05d}{index:04d}"


@dataclass(frozen=True)
class DirtRates:
    """Fraction of the pool per kind of dirt; ``missing_json`` is a fraction of the *clean* samples."""

    exact_duplicate: float = 0.02
    near_duplicate: float = 0.02
    mismatched_caption: float = 0.03
    empty_caption: float = 0.015
    corrupt_image: float = 0.01
    missing_caption: float = 0.01
    missing_json: float = 0.10

    def __post_init__(self) -> None:
        for f in fields(self):
            if not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"DirtRates.{f.name}={getattr(self, f.name)} is not in [0, 1]")
        if sum(getattr(self, name) for name in DIRT_TYPES) > 0.5:
            raise ValueError(f"DirtRates: total dirt {self} exceeds half of the pool")


@dataclass(frozen=True)
class _Plan:
    """Per-sample integers only (no images): ground-truth concept, dirt code, duplicate source."""

    labels: np.ndarray  # concept id per sample
    dirt: np.ndarray  # index into DIRT_TYPES, -1 = clean
    source: np.ndarray  # sample index a duplicate copies, -1 otherwise
    json_missing: np.ndarray  # bool
    burst: np.ndarray | None = None  # web profile: burst id per sample, -1 = a drawing of its own


PROFILES = ("concept", "web")


@dataclass(frozen=True)
class WebProfile:
    """Parameters of the ``"web"`` profile (near-duplicate bursts of frequent concepts).

    * ``burst_share``: fraction of the pool that belongs to a burst of ≥ 2 near-duplicates.
      Default 0.30 after Webster et al. 2023 ("On the de-duplication of LAION-2B": ~700M images,
      about 30%, of LAION-2B are duplicated); SemDeDup (Abbas et al. 2023) removes 50% of
      LAION-440M as semantic duplicates, a looser notion — so a sweep should span 0.3–0.5.
    * ``burst_exponent`` α: burst sizes ``P(k) ∝ k^-α`` for ``2 ≤ k ≤ max_burst`` (a truncated
      discrete power law). No published exponent for web near-duplicate groups is used here:
      swept (1.5, 2.0, 2.5).
    * ``frequency_exponent`` γ: the share of concept c's pairs in bursts is ``∝ n_c^γ`` (capped at
      ``max_burst_fraction``), scaled so the pool-wide share is ``burst_share``: frequent concepts
      are burstier. γ = 0: equally bursty. Not from a measurement: swept (0, 0.5, 1).
    * ``repost``: probability a member's caption is the prototype's verbatim (else paraphrased).
    """

    burst_share: float = 0.30
    burst_exponent: float = 2.0
    frequency_exponent: float = 1.0
    max_burst: int = 1_000
    max_burst_fraction: float = 0.95
    repost: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.burst_share <= self.max_burst_fraction <= 1.0:
            raise ValueError(f"WebProfile: need 0 ≤ burst_share ≤ max_burst_fraction ≤ 1, got {self}")
        if self.burst_exponent <= 1.0 or self.frequency_exponent < 0.0 or self.max_burst < 2:
            raise ValueError(f"WebProfile: need burst_exponent > 1, frequency_exponent ≥ 0, max_burst ≥ 2, got {self}")
        if not 0.0 <= self.repost <= 1.0:
            raise ValueError(f"WebProfile.repost={self.repost} is not in [0, 1]")


def burst_fractions(counts: np.ndarray, web: WebProfile) -> np.ndarray:
    """Share of each concept's pairs that is in bursts: ``min(cap, λ n_c^γ)`` with λ such that
    ``Σ q_c n_c = burst_share × Σ n_c`` (bisection; the cap makes it a water-filling)."""
    counts = np.asarray(counts, dtype=np.float64)
    target = web.burst_share * counts.sum()
    weight = counts**web.frequency_exponent

    def covered(lam: float) -> float:
        return float((np.minimum(web.max_burst_fraction, lam * weight) * counts).sum())

    if target <= 0:
        return np.zeros_like(counts)
    lo, hi = 0.0, web.max_burst_fraction / weight[weight > 0].min()
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if covered(mid) < target else (lo, mid)
    return np.minimum(web.max_burst_fraction, hi * weight)


def _burst_sizes(total: int, web: WebProfile, rng: np.random.Generator) -> list[int]:
    """Sizes ≥ 2 summing to ``total`` (≥ 2), drawn from ``P(k) ∝ k^-α`` on ``[2, min(max_burst, total)]``;
    the last is cut to what is left, and a leftover single pair joins the previous burst."""
    top = min(web.max_burst, total)
    support = np.arange(2, top + 1)
    p = support.astype(np.float64) ** -web.burst_exponent
    p /= p.sum()
    sizes: list[int] = []
    left = total
    while left > 0:
        size = min(int(rng.choice(support, p=p)), left)
        if size == 1:
            sizes[-1] += 1
        else:
            sizes.append(size)
        left -= size
    return sizes


def _make_bursts(labels: np.ndarray, dirt: np.ndarray, counts: np.ndarray, web: WebProfile,
                 rng: np.random.Generator) -> np.ndarray:
    """Burst id per sample (-1: none). Members of concept c: ``round(q_c n_c)`` of its pairs that
    are not planted duplicates (those copy another sample, and inherit its burst)."""
    duplicate_codes = [DIRT_TYPES.index("exact_duplicate"), DIRT_TYPES.index("near_duplicate")]
    eligible = ~np.isin(dirt, duplicate_codes)
    burst = np.full(len(labels), -1, dtype=np.int64)
    fractions = burst_fractions(counts, web)
    next_id = 0
    for concept_id in range(len(counts)):
        candidates = np.flatnonzero((labels == concept_id) & eligible)
        members = min(len(candidates), int(round(fractions[concept_id] * counts[concept_id])))
        if members < 2:
            continue
        chosen = rng.permutation(candidates)[:members]
        start = 0
        for size in _burst_sizes(members, web, rng):
            burst[chosen[start:start + size]] = next_id
            next_id += 1
            start += size
    return burst


def _concept_ranks(seed: int) -> np.ndarray:
    """``order[r]`` = concept id at rank ``r + 1``."""
    return _rng(seed, _RANKS).permutation(len(concepts()))


def _train_frequencies(pairs: int, seed: int, s: float) -> np.ndarray:
    """Pairs per concept id."""
    counts = np.empty(len(concepts()), dtype=np.int64)
    counts[_concept_ranks(seed)] = zipf_counts(pairs, len(concepts()), s)
    return counts


def _assign_dirt(labels: np.ndarray, rates: DirtRates, rng: np.random.Generator) -> np.ndarray:
    """Exact quotas ``round(rate × pairs)`` at random positions, keeping ≥ 1 clean sample per concept."""
    quotas = [int(round(getattr(rates, name) * len(labels))) for name in DIRT_TYPES]
    pending = [code for code, quota in enumerate(quotas) for _ in range(quota)]
    dirt = np.full(len(labels), -1, dtype=np.int8)
    clean_left = np.bincount(labels, minlength=len(concepts()))
    cursor = 0
    for index in rng.permutation(len(labels)):
        if cursor == len(pending):
            break
        if clean_left[labels[index]] > 1:
            dirt[index] = pending[cursor]
            clean_left[labels[index]] -= 1
            cursor += 1
    if cursor < len(pending):
        raise ValueError(f"pool of {len(labels)} pairs is too small for dirt rates {rates}")
    return dirt


def _duplicate_sources(labels: np.ndarray, dirt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each duplicate, a random clean sample of the same concept (possibly in another shard)."""
    source = np.full(len(labels), -1, dtype=np.int64)
    clean = np.flatnonzero(dirt == -1)
    clean_by_concept = {c: clean[labels[clean] == c] for c in np.unique(labels)}
    duplicate_codes = [DIRT_TYPES.index("exact_duplicate"), DIRT_TYPES.index("near_duplicate")]
    for index in np.flatnonzero(np.isin(dirt, duplicate_codes)):
        candidates = clean_by_concept[labels[index]]
        source[index] = candidates[rng.integers(len(candidates))]
    return source


def _make_plan(pairs: int, seed: int, s: float, rates: DirtRates, web: WebProfile | None = None) -> _Plan:
    """The per-sample plan; ``web`` adds bursts from their own RNG stream, so labels, dirt and
    duplicate sources are the same in both profiles for the same seed."""
    rng = _rng(seed, _PLAN)
    frequencies = _train_frequencies(pairs, seed, s)
    labels = rng.permutation(np.repeat(np.arange(len(frequencies), dtype=np.int32), frequencies))
    dirt = _assign_dirt(labels, rates, rng)
    source = _duplicate_sources(labels, dirt, rng)
    clean = np.flatnonzero(dirt == -1)
    json_missing = np.zeros(pairs, dtype=bool)
    json_missing[rng.choice(clean, size=int(round(rates.missing_json * len(clean))), replace=False)] = True
    burst = None if web is None else _make_bursts(labels, dirt, frequencies, web, _rng(seed, _BURST_PLAN))
    return _Plan(labels, dirt, source, json_missing, burst)


def _burst_of(plan: _Plan, index: int) -> int:
    """The burst a sample's image comes from (a planted duplicate: its source's), -1 if none."""
    if plan.burst is None:
        return -1
    source = int(plan.source[index])
    return int(plan.burst[source if source >= 0 else index])
