"""The comparison's settings for one profile: reads data/comparison.yaml (or --config) and writes
that profile's experiments file (data/experiments.yaml's format: the learner's training settings
merged under every recipe's own, the chosen seeds and recipes); prints shell assignments for
scripts/compare.sh (EPOCHS, POOL_OPTIONS, PROFILES).

    python scripts/comparison_config.py --out data/comparison/web/experiments.yaml [--seeds 5] [--recipes a b]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def build(spec: dict, seeds: int | None, recipes: list[str] | None) -> dict:
    learner = spec.get("learner") or {}
    defaults = dict(learner.get("training") or {})
    all_recipes = spec["recipes"]
    if recipes:
        if unknown := [r for r in recipes if r not in all_recipes]:
            sys.exit(f"unknown recipe(s) {unknown}; known: {list(all_recipes)}")
        if not any(r.startswith("uniform") for r in recipes):
            print("comparison_config: no uniform recipe chosen: the report will have no reference "
                  "(add uniform-50 and/or uniform-100)", file=sys.stderr)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "data" / "comparison.yaml"))
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, help="the first N seeds (default: every seed of the file)")
    p.add_argument("--recipes", nargs="*", help="only these recipes (default: every recipe)")
    args = p.parse_args(argv)
    spec = yaml.safe_load(Path(args.config).read_text())
    experiments = build(spec, args.seeds, args.recipes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("# written by scripts/comparison_config.py from " + str(args.config) + "\n"
                   + yaml.safe_dump(experiments, sort_keys=False))
    tmp.replace(out)
    learner, pool = spec.get("learner") or {}, spec.get("pool") or {}
    options = " ".join(f"--pool-option {k}={v}" for k, v in pool.items())
    print(f"EPOCHS={int(learner.get('epochs', 3))}")
    print(f"POOL_OPTIONS={shlex.quote(options)}")
    print(f"PROFILES={shlex.quote(' '.join(spec.get('profiles', ['concept'])))}")
    print(f"N_RUNS={len(experiments['recipes']) * len(experiments['seeds'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
