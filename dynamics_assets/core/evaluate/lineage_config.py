"""The secondary comparison's settings: data/comparison.yaml read into what one profile runs.

``dynamics compare-lineage`` (``dynamics_assets/compare_lineage.py``) runs every recipe × seed of
that file through the whole Dagster lineage, each pool profile in its own data root. Per profile it
writes an experiments file (data/experiments.yaml's format, read by the code location through
``DYNAMICS_EXPERIMENTS``): the learner's training settings merged under every recipe's own (a
recipe's ``training:`` block wins), the chosen seeds and recipes (``build``). The number of epochs
is the file's ``learner.epochs`` and nothing else (``epochs``), handed to the pipeline as
``--epochs N``; the ``pool:`` section becomes its ``--pool-option`` arguments (``pool_options``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dynamics_assets.core.io.atomic import atomic_path


def load(path: str | Path) -> dict[str, Any]:
    """The comparison file, checked for the sections the command reads (ValueError when one is wrong)."""
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("recipes"), dict) or not spec["recipes"]:
        raise ValueError(f"{path}: no `recipes:` mapping")
    epochs(spec)  # a missing or wrong learner.epochs is refused here, before anything runs
    return spec


def epochs(spec: dict[str, Any]) -> int:
    """``learner.epochs``: the one place the comparison's number of epochs is set."""
    value = (spec.get("learner") or {}).get("epochs")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"learner.epochs must be an integer ≥ 1 (got {value!r})")
    return value


def profiles(spec: dict[str, Any]) -> list[str]:
    """The pool profiles the file runs (``profiles:``, default ``[concept]``)."""
    return [str(p) for p in spec.get("profiles", ["concept"])]


def pool_options(spec: dict[str, Any]) -> list[str]:
    """The ``pool:`` section as the pipeline's arguments: ``--pool-option KEY=VALUE`` per entry."""
    return [arg for k, v in (spec.get("pool") or {}).items() for arg in ("--pool-option", f"{k}={v}")]


def build(spec: dict, seeds: int | None, recipes: list[str] | None) -> dict:
    """One profile's experiments file: the learner's training settings under every recipe's own, the
    first ``seeds`` seeds (0 … N−1 when N exceeds the file's), only ``recipes`` when given (an unknown
    name: ValueError)."""
    learner = spec.get("learner") or {}
    defaults = dict(learner.get("training") or {})
    all_recipes = spec["recipes"]
    if recipes:
        if unknown := [r for r in recipes if r not in all_recipes]:
            raise ValueError(f"unknown recipe(s) {unknown}; known: {list(all_recipes)}")
    chosen = {name: body for name, body in all_recipes.items() if not recipes or name in recipes}
    out_recipes = {}
    for name, body in chosen.items():
        body = dict(body)
        body["training"] = {**defaults, **dict(body.get("training") or {})}
        out_recipes[name] = body
    all_seeds = [int(s) for s in spec.get("seeds", [0])]
    use_seeds = all_seeds[:seeds] if seeds else all_seeds
    if seeds and seeds > len(all_seeds):
        use_seeds = list(range(seeds))
    default = spec.get("default_recipe", next(iter(out_recipes)))
    if default not in out_recipes:
        default = next(iter(out_recipes))
    return {"default_recipe": default, "seeds": use_seeds, "recipes": out_recipes,
            "recuration": {"cron": "0 2 * * *", "recipes": []}}


def has_reference(experiments: dict) -> bool:
    """Whether a uniform recipe is among them: without one the comparison report has no reference."""
    return any(name.startswith("uniform") for name in experiments["recipes"])


def write(path: str | Path, experiments: dict, source: str | Path) -> Path:
    """Write an experiments file atomically (a reader never sees half of it)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(f"# written by dynamics compare-lineage from {source}\n"
                       + yaml.safe_dump(experiments, sort_keys=False))
    return path
