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
    try:
        return cls(**params)
    except TypeError as e:  # an unknown or missing parameter: name the strategy and its parameters
        known = sorted(f for f in getattr(cls, "__dataclass_fields__", {}) if f not in ("name", "dynamic", "cache_dir"))
        raise ValueError(f"strategy {strategy!r}: {e}; its parameters: {known}") from None


def sampler_from_spec(spec: dict, *, cache_dir: str | None = None) -> Sampler:
    """The sampler a recipe's ``sampler:`` block describes (``strategy`` plus its parameters).
    ``cache_dir``: where a strategy may keep per-pool state between epochs (a composition keeps
    its pruners' survivors there, so later epochs do not re-run the pruners)."""
    params = dict(spec)
    strategy = params.pop("strategy")
    if cache_dir is not None and "cache_dir" in getattr(SAMPLERS.get(strategy), "__dataclass_fields__", {}):
        params["cache_dir"] = str(cache_dir)
    return make_sampler(strategy, **params)


__all__ = ["ClusterPool", "Plan", "Sampler", "DynamicsSampler", "UniformSampler", "FlattenSampler",
           "SemDeDup", "SSPPruning", "DBPPruning", "ClipScoreFilter", "Compose", "SAMPLERS",
           "make_sampler", "sampler_from_spec", "resolve_budget", "cluster_targets", "read_plan", "write_plan"]
