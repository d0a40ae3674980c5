"""Experiments as data: recipes (strategy, parameters, budget, training overrides) × seeds.

Read from ``data/experiments.yaml`` (or ``DYNAMICS_EXPERIMENTS``) when the code location loads.
Each (recipe, seed) is one key of the ``recipe`` partition dimension, e.g. ``dynamics-50.s0``;
plans, checkpoints and eval reports are partitioned by recipe × epoch, so the UI shows the
recipes side by side.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster._utils.schedules import is_valid_cron_string  # no public equivalent in dagster 1.13

from dynamics_assets.core.sample.spec import check_recipe_sampler, normalise_sampler_spec
from dynamics_assets.core.train.settings import TrainSettings
from dynamics_assets.defs.partitions import epoch_partitions

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "data" / "experiments.yaml"
BUILTIN = {"default_recipe": "dynamics-50", "seeds": [0],
           "recipes": {"dynamics-50": {"sampler": {"strategy": "dynamics", "budget": 0.5, "alpha": 0.2}}}}
DEFAULT_RECURATION_CRON = "0 2 * * *"  # nightly, 02:00 UTC


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    sampler: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}.s{self.seed}"


@dataclass(frozen=True)
class Recuration:
    cron: str = DEFAULT_RECURATION_CRON
    recipes: tuple[str, ...] = ()  # recipe names whose coming epochs are redrawn after a re-curation


@dataclass(frozen=True)
class Experiments:
    recipes: dict[str, Recipe]  # by partition key
    default_recipe: str
    recuration: Recuration = Recuration()

    @property
    def default_keys(self) -> list[str]:
        return [k for k, r in self.recipes.items() if r.name == self.default_recipe][:1]

    @property
    def recuration_keys(self) -> list[str]:
        """Partition keys (every seed) of the recipes redrawn after a re-curation."""
        return [k for k, r in self.recipes.items() if r.name in self.recuration.recipes]


def load_experiments(path: str | os.PathLike | None = None) -> Experiments:
    path = Path(path or os.environ.get("DYNAMICS_EXPERIMENTS", DEFAULT_PATH))
    spec = yaml.safe_load(path.read_text()) if path.exists() else BUILTIN
    seeds = [int(s) for s in spec.get("seeds", [0])]
    recipes: dict[str, Recipe] = {}
    for name, body in spec["recipes"].items():
        if "." in name or "|" in name or "," in name:
            raise ValueError(f"{path}: recipe name {name!r} may not contain '.', '|' or ','")
        if "sampler" not in body or "strategy" not in body["sampler"]:
            raise ValueError(f"{path}: recipe {name!r} needs sampler.strategy")
        sampler = normalise_sampler_spec(body["sampler"], f"{path}: recipe {name!r}: sampler")
        # built now, so a value outside its range (alpha: 1.5) is refused as the code location loads
        check_recipe_sampler(sampler, f"{path}: recipe {name!r}: sampler")
        training = dict(body.get("training") or {})
        TrainSettings().with_overrides(training, source=f"{path}: recipe {name!r}: training")
        for seed in seeds:
            r = Recipe(name, seed, sampler, training)
            recipes[r.key] = r
    default = spec.get("default_recipe", next(iter(spec["recipes"])))
    if default not in spec["recipes"]:
        raise ValueError(f"{path}: default_recipe {default!r} is not a recipe")
    recuration = spec.get("recuration") or {}
    names = tuple(recuration.get("recipes", [default]))
    if unknown := [n for n in names if n not in spec["recipes"]]:
        raise ValueError(f"{path}: recuration.recipes names unknown recipes {unknown}")
    cron = str(recuration.get("cron", DEFAULT_RECURATION_CRON))
    if not is_valid_cron_string(cron):
        raise ValueError(f"{path}: recuration.cron {cron!r} is not a cron expression")
    return Experiments(recipes, default, Recuration(cron, names))


EXPERIMENTS = load_experiments()
recipe_partitions = dg.StaticPartitionsDefinition(list(EXPERIMENTS.recipes))
recipe_epoch_partitions = dg.MultiPartitionsDefinition({"recipe": recipe_partitions, "epoch": epoch_partitions})


def recipe_and_epoch(context: dg.AssetExecutionContext) -> tuple[Recipe, str]:
    keys = context.partition_key.keys_by_dimension
    return EXPERIMENTS.recipes[keys["recipe"]], keys["epoch"]


def partition_dir(recipe: Recipe, epoch_key: str) -> Path:
    return Path(recipe.key) / epoch_key
