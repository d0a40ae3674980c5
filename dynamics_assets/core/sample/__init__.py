"""Samplers: interchangeable curation strategies behind one small interface (``Sampler``).

The package imports its strategies on first use (PEP 562 ``__getattr__``), so light modules such
as ``sample.spec`` can be imported without numpy-heavy strategy code (the Dagster code location
reads recipes through ``sample.spec`` when it loads).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynamics_assets.core.sample.base import Sampler

_LAZY = {
    "ClusterPool": "base", "Plan": "base", "Sampler": "base", "resolve_budget": "base",
    "ClipScoreFilter": "strategies.clip_score", "Compose": "strategies.compose", "DBPPruning": "strategies.dbp",
    "DynamicsSampler": "strategies.dynamics", "cluster_targets": "strategies.dynamics",
    "FlattenSampler": "strategies.flatten", "SemDeDup": "strategies.semdedup", "SSPPruning": "strategies.ssp",
    "UniformSampler": "strategies.uniform",
    "LearnabilitySampler": "strategies.learnability", "ClusterFeedback": "strategies.learnability", "read_plan": "plan_io", "write_plan": "plan_io",
    "BasicFilter": "strategies.basic_filter", "Laion2BFilter": "strategies.laion2b_filter",
    "TextFilter": "strategies.text_filter", "ImageFilter": "strategies.image_filter",
    "DFNFilter": "strategies.dfn",
}
_STRATEGY_CLASSES = {"uniform": "UniformSampler", "dynamics": "DynamicsSampler", "flatten": "FlattenSampler",
                     "semdedup": "SemDeDup", "ssp": "SSPPruning", "dbp": "DBPPruning", "clip_score": "ClipScoreFilter",
                     "compose": "Compose", "learnability": "LearnabilitySampler",
                     # DataComp's baselines (Gadre et al. 2023)
                     "basic_filter": "BasicFilter", "laion2b_filter": "Laion2BFilter", "text_filter": "TextFilter",
                     "image_filter": "ImageFilter", "dfn": "DFNFilter"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "SAMPLERS":
        return {k: __getattr__(v) for k, v in _STRATEGY_CLASSES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_sampler(strategy: str, **params) -> Sampler:
    """Build a sampler by name, e.g. ``make_sampler("dynamics", budget=0.5, alpha=0.2)``; a
    composition from step dicts: ``make_sampler("compose", steps=[{"strategy": "semdedup"}, ...])``."""
    if strategy not in _STRATEGY_CLASSES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {sorted(_STRATEGY_CLASSES)}")
    cls = __getattr__(_STRATEGY_CLASSES[strategy])
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
    cls = __getattr__(_STRATEGY_CLASSES[strategy]) if strategy in _STRATEGY_CLASSES else None
    if cache_dir is not None and "cache_dir" in getattr(cls, "__dataclass_fields__", {}):
        params["cache_dir"] = str(cache_dir)
    return make_sampler(strategy, **params)


__all__ = ["ClusterPool", "Plan", "Sampler", "DynamicsSampler", "UniformSampler", "FlattenSampler",
           "SemDeDup", "SSPPruning", "DBPPruning", "ClipScoreFilter", "Compose", "LearnabilitySampler",
           "ClusterFeedback", "BasicFilter", "Laion2BFilter", "TextFilter", "ImageFilter", "DFNFilter", "SAMPLERS",
           "make_sampler", "sampler_from_spec", "resolve_budget", "cluster_targets", "read_plan", "write_plan"]
