"""The one strategy registry: a strategy's name → its sampler class; everything else is read from
the class.

* its **parameters** are the dataclass's fields (but ``name``, ``dynamic`` and ``cache_dir``);
* whether it **needs feedback** (its plan of epoch e reads epoch e−1's training) is the class's
  ``needs_feedback`` attribute;
* its **ranges** are the checks its constructor runs: a recipe's sampler is built when the code
  location loads (``spec.check_recipe_sampler``), so a value outside its range (``alpha: 1.5``) is
  refused then, naming the recipe, the setting and the range, not when a plan is drawn.

Classes are named by import path and imported on first use, so importing this module costs
nothing; asking about a strategy imports its module (numpy, no torch).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

_PACKAGE = "dynamics_assets.core.sample.strategies"

# strategy -> "module:Class" (module under core/sample/strategies/)
CLASSES: dict[str, str] = {
    "uniform": "uniform:UniformSampler", "dynamics": "dynamics:DynamicsSampler", "flatten": "flatten:FlattenSampler",
    "semdedup": "semdedup:SemDeDup", "ssp": "ssp:SSPPruning", "dbp": "dbp:DBPPruning",
    "clip_score": "clip_score:ClipScoreFilter", "compose": "compose:Compose",
    "learnability": "learnability:LearnabilitySampler",
    # DataComp's baselines (Gadre et al. 2023)
    "basic_filter": "basic_filter:BasicFilter", "laion2b_filter": "laion2b_filter:Laion2BFilter",
    "text_filter": "text_filter:TextFilter", "image_filter": "image_filter:ImageFilter",
    # Fang et al. 2024: CLIP-score with a CLIP trained on the curated set as the scorer (the dfn_scores asset)
    "dfn": "dfn:DFNFilter",
    # the comparison's negative control (issue 20): the smallest clusters removed
    "drop_smallest": "drop_smallest:DropSmallestSampler",
}
# dataclass fields that are not settings of a recipe
NOT_PARAMETERS = ("name", "dynamic", "cache_dir")
# settings a recipe may leave out because the lineage fills them in where samplers are built for a
# plan (defs/sample/assets.py): the pool's class names, the target set's embeddings, the DFN scores.
# These strategies read them (files) when built, so at load they are checked by value only.
LINEAGE_FILLS: dict[str, tuple[str, ...]] = {"text_filter": ("classnames",), "image_filter": ("target_embeddings",),
                                             "dfn": ("scores",)}


def names() -> list[str]:
    return sorted(CLASSES)


def strategy_class(strategy: str) -> type:
    if strategy not in CLASSES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {names()}")
    module, cls = CLASSES[strategy].split(":")
    return getattr(importlib.import_module(f"{_PACKAGE}.{module}"), cls)


def parameters(strategy: str) -> tuple[str, ...]:
    """The settings a recipe may give the strategy: its dataclass's fields, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(strategy_class(strategy)) if f.name not in NOT_PARAMETERS)


def needs_feedback(spec: Mapping[str, Any] | str) -> bool:
    """Whether a recipe's sampler (its ``sampler:`` block, or a strategy name) draws epoch e's plan
    from epoch e−1's training (the ``feedback_plan`` the training step draws)."""
    strategy = spec if isinstance(spec, str) else spec.get("strategy")
    return bool(getattr(strategy_class(strategy), "needs_feedback", False))


def make_sampler(strategy: str, **params):
    """Build a sampler by name, e.g. ``make_sampler("dynamics", budget=0.5, alpha=0.2)``; a
    composition from step dicts: ``make_sampler("compose", steps=[{"strategy": "semdedup"}, ...])``."""
    cls = strategy_class(strategy)
    try:
        return cls(**params)
    except TypeError as e:  # an unknown or missing parameter: name the strategy and its parameters
        raise ValueError(f"strategy {strategy!r}: {e}; its parameters: {list(parameters(strategy))}") from None


def sampler_from_spec(spec: Mapping[str, Any], *, cache_dir: str | None = None):
    """The sampler a recipe's ``sampler:`` block describes (``strategy`` plus its parameters).
    ``cache_dir``: where a strategy may keep per-pool state between epochs (a composition keeps
    its pruners' survivors there, so later epochs do not re-run the pruners)."""
    params = dict(spec)
    strategy = params.pop("strategy")
    if cache_dir is not None and "cache_dir" in getattr(strategy_class(strategy), "__dataclass_fields__", {}):
        params["cache_dir"] = str(cache_dir)
    return make_sampler(strategy, **params)
