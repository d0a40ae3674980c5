"""Samplers: interchangeable curation strategies behind one small interface (``Sampler``)."""
from dynamics_assets.core.sample.base import ClusterPool, Plan, Sampler, resolve_budget
from dynamics_assets.core.sample.strategies.clip_score import ClipScoreFilter
from dynamics_assets.core.sample.strategies.compose import Compose
from dynamics_assets.core.sample.strategies.dbp import DBPPruning
from dynamics_assets.core.sample.strategies.dynamics import DynamicsSampler, cluster_targets
from dynamics_assets.core.sample.strategies.flatten import FlattenSampler
from dynamics_assets.core.sample.plan_io import read_plan, write_plan
from dynamics_assets.core.sample.strategies.semdedup import SemDeDup
from dynamics_assets.core.sample.strategies.ssp import SSPPruning
from dynamics_assets.core.sample.strategies.uniform import UniformSampler

SAMPLERS = {"uniform": UniformSampler, "dynamics": DynamicsSampler, "flatten": FlattenSampler,
            "semdedup": SemDeDup, "ssp": SSPPruning, "dbp": DBPPruning, "clip_score": ClipScoreFilter,
            "compose": Compose}


def make_sampler(strategy: str, **params) -> Sampler:
    """Build a sampler by name, e.g. ``make_sampler("dynamics", budget=0.5, alpha=0.2)``; a
    composition from step dicts: ``make_sampler("compose", steps=[{"strategy": "semdedup"}, ...])``."""
    try:
        cls = SAMPLERS[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; known: {sorted(SAMPLERS)}") from None
    return cls(**params)


__all__ = ["ClusterPool", "Plan", "Sampler", "DynamicsSampler", "UniformSampler", "FlattenSampler",
           "SemDeDup", "SSPPruning", "DBPPruning", "ClipScoreFilter", "Compose", "SAMPLERS",
           "make_sampler", "resolve_budget", "cluster_targets", "read_plan", "write_plan"]
