"""Samplers: interchangeable curation strategies behind one small interface (``Sampler``).

The package imports its strategies on first use (PEP 562 ``__getattr__``), so light modules such
as ``sample.spec`` can be imported without numpy-heavy strategy code (the Dagster code location
reads recipes through ``sample.spec`` when it loads). Which strategies exist, their parameters and
whether they need feedback: ``sample.registry``.
"""
from __future__ import annotations

import importlib
from typing import Any

from dynamics_assets.core.sample import registry
from dynamics_assets.core.sample.registry import make_sampler, sampler_from_spec

_LAZY = {
    "ClusterPool": "base", "Plan": "base", "Sampler": "base", "resolve_budget": "base",
    "cluster_targets": "strategies.dynamics", "ClusterFeedback": "strategies.learnability",
    "read_plan": "plan_io", "write_plan": "plan_io",
    # every strategy class, where the registry says it lives
    **{cls: f"strategies.{module}" for module, cls in (path.split(":") for path in registry.CLASSES.values())},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "SAMPLERS":  # strategy name -> class, from the one registry (sample.registry)
        return {k: registry.strategy_class(k) for k in registry.names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClusterPool", "Plan", "Sampler", "DynamicsSampler", "UniformSampler", "FlattenSampler",
           "SemDeDup", "SSPPruning", "DBPPruning", "ClipScoreFilter", "Compose", "LearnabilitySampler",
           "ClusterFeedback", "BasicFilter", "Laion2BFilter", "TextFilter", "ImageFilter", "DFNFilter", "SAMPLERS",
           "make_sampler", "sampler_from_spec", "resolve_budget", "cluster_targets", "read_plan", "write_plan"]
