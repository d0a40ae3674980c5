"""Composition of curation strategies: static pruners in order, then a sampler on the survivors.

Formula: S_0 = valid pool; S_k = S_{k−1} ∩ keep_k(S_{k−1}) for each pruner k (each sees only the
survivors of the previous ones, via ``ClusterPool.masked``); the last step (any sampler, e.g.
DynamiCS, or a pruner) draws the epoch from S_last. E.g. SemDeDup → DBP (the DBP paper's recipe),
SemDeDup → CLIP score → DynamiCS.

Budgets: a fractional budget of any step refers to the ORIGINAL pool's valid count, not to the
survivors, so recipes are compared at equal compute (``budget=0.3`` after a pruner still means 30%
of the pool). Steps with a float ``budget`` field get it resolved to a count up front; pruners that
take a fraction by another name (CLIP score) read ``pool.budget_base``, which masked pools carry.
``dynamic`` is the last step's. Pruners are re-run on every ``draw``: their keep masks are pure
functions of (pool, parameters, seed), so every epoch sees the same survivors.
Source: Abbas et al., ICLR 2024 (DBP after SemDeDup); Gadre et al., DataComp 2023 (filter
intersections).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .base import ClusterPool, Plan, Sampler, resolve_budget


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

    def __post_init__(self) -> None:
        from . import make_sampler  # the registry imports this module

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
        n = pool.budget_base
        record = []
        for step in self.steps[:-1]:
            pool = pool.masked(_at_original_scale(step, n).keep_mask(pool, seed=seed))
            record.append({"strategy": step.name, "survivors": pool.n_valid})
        return pool, record

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
