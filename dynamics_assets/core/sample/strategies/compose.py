"""Composition of curation strategies: static pruners in order, then a sampler on the survivors.

Formula: S_0 = valid pool; S_k = S_{k−1} ∩ keep_k(S_{k−1}) for each pruner k (each sees only the
survivors of the previous ones, via ``ClusterPool.masked``); the last step (any sampler, e.g.
DynamiCS, or a pruner) draws the epoch from S_last. E.g. SemDeDup → DBP (the DBP paper's recipe),
SemDeDup → CLIP score → DynamiCS.

Budgets: a fractional budget of any step refers to the ORIGINAL pool's valid count, not to the
survivors, so recipes are compared at equal compute (``budget=0.3`` after a pruner still means 30%
of the pool). Steps with a float ``budget`` field get it resolved to a count up front; pruners that
take a fraction by another name (CLIP score) read ``pool.budget_base``, which masked pools carry.
``dynamic`` is the last step's. The survivors are a pure function of (pool, pruner parameters,
seed), so every epoch sees the same ones; with ``cache_dir`` set and a pool that carries its
fingerprint they are computed once and kept as a bit-packed mask (N/8 bytes) named by the hash of
(fingerprint, pruners, seed), which later epochs read instead of re-running the pruners.
Source: Abbas et al., ICLR 2024 (DBP after SemDeDup); Gadre et al., DataComp 2023 (filter
intersections).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynamics_assets.core.io.atomic import save_npy, write_json
from dynamics_assets.core.sample.base import ClusterPool, Plan, Sampler, resolve_budget


def _at_original_scale(step: Sampler, n: int) -> Sampler:
    """The step with a fractional ``budget`` replaced by the count it means on the original pool."""
    budget = getattr(step, "budget", None)
    if isinstance(budget, float) and dataclasses.is_dataclass(step):
        return dataclasses.replace(step, budget=resolve_budget(budget, n))
    return step


@dataclass(frozen=True)
class Compose:
    steps: tuple[Sampler, ...] = ()
    name: str = "compose"
    cache_dir: str | None = None  # where survivor masks are kept (not a parameter of the recipe)

    def __post_init__(self) -> None:
        from dynamics_assets.core.sample import make_sampler  # the registry imports this module

        steps = tuple(make_sampler(**s) if isinstance(s, dict) else s for s in self.steps)
        if not steps:
            raise ValueError("compose needs at least one step")
        for s in steps[:-1]:
            if not hasattr(s, "keep_mask"):
                raise ValueError(f"every step but the last must be a static pruner; {s.name!r} is not")
        object.__setattr__(self, "steps", steps)

    @property
    def dynamic(self) -> bool:
        return self.steps[-1].dynamic

    def params(self) -> dict[str, Any]:
        return {"steps": [{"strategy": s.name, **s.params()} for s in self.steps]}

    def survivors(self, pool: ClusterPool, *, seed: int) -> tuple[ClusterPool, list[dict[str, Any]]]:
        """The pool masked by every pruner in turn, and the survivor count after each."""
        cache = self._cache_path(pool, seed)
        if cache is not None and cache.with_suffix(".json").is_file() and cache.is_file():
            keep = np.unpackbits(np.load(cache), count=len(pool)).astype(bool)
            return pool.masked(keep), json.loads(cache.with_suffix(".json").read_text())["pruned"]
        n = pool.budget_base
        record = []
        survivors = pool
        for step in self.steps[:-1]:
            scaled = _at_original_scale(step, n)
            if hasattr(scaled, "keep_and_meta"):  # a pruner that reports what it decided (e.g. a translated threshold)
                keep, info = scaled.keep_and_meta(survivors, seed=seed)
            else:
                keep, info = scaled.keep_mask(survivors, seed=seed), {}
            survivors = survivors.masked(keep)
            record.append({"strategy": step.name, "survivors": survivors.n_valid, **info})
        if cache is not None and len(self.steps) > 1:
            keep = survivors.keep if survivors.keep is not None else np.ones(len(pool), dtype=bool)
            _forget_other_pools(cache.parent, pool.fingerprint)
            save_npy(cache, np.packbits(keep))
            write_json(cache.with_suffix(".json"), {"pruned": record, "pool_fingerprint": pool.fingerprint,
                                                    "seed": seed, "steps": self.params()["steps"][:-1]})
        return survivors, record

    def _cache_path(self, pool: ClusterPool, seed: int) -> Path | None:
        if self.cache_dir is None or pool.fingerprint is None or len(self.steps) < 2:
            return None
        key = json.dumps({"pool": pool.fingerprint, "n": len(pool), "seed": seed,
                          "steps": self.params()["steps"][:-1]}, sort_keys=True)
        return Path(self.cache_dir) / f"survivors-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        survivors, record = self.survivors(pool, seed=seed)
        last = _at_original_scale(self.steps[-1], pool.budget_base)
        try:
            plan = last.draw(survivors, epoch=epoch, seed=seed)
        except ValueError as err:
            chain = " → ".join(f"{r['strategy']} {r['survivors']}" for r in record)
            raise ValueError(f"compose: {last.name} on the survivors ({pool.n_valid} → {chain}): {err}") from err
        plan.meta.update(strategy=self.name, params=self.params(), final=plan.meta["strategy"],
                         pruned=record, pool_size=pool.n_valid)
        return plan


def _forget_other_pools(cache_dir: Path, fingerprint: str) -> None:
    """Drop the survivor masks of earlier pools (a re-curation changes the pool for every recipe)."""
    for meta_path in cache_dir.glob("survivors-*.json"):
        try:
            stale = json.loads(meta_path.read_text()).get("pool_fingerprint") != fingerprint
        except (OSError, json.JSONDecodeError):
            stale = True
        if stale:
            meta_path.with_suffix(".npy").unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
