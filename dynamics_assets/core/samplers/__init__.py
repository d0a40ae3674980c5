"""Samplers: interchangeable curation strategies behind one small interface (``Sampler``)."""
from .base import ClusterPool, Plan, Sampler, resolve_budget
from .dynamics import DynamicsSampler, cluster_targets
from .plan_io import read_plan, write_plan
from .uniform import UniformSampler

SAMPLERS = {"uniform": UniformSampler, "dynamics": DynamicsSampler}


def make_sampler(strategy: str, **params) -> Sampler:
    """Build a sampler by name, e.g. ``make_sampler("dynamics", budget=0.5, alpha=0.2)``."""
    try:
        cls = SAMPLERS[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; known: {sorted(SAMPLERS)}") from None
    return cls(**params)


__all__ = ["ClusterPool", "Plan", "Sampler", "DynamicsSampler", "UniformSampler", "SAMPLERS",
           "make_sampler", "resolve_budget", "cluster_targets", "read_plan", "write_plan"]
