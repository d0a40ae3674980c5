"""The ``comparison_report`` step's core: every recipe's eval reports side by side
(``comparison.compare``), the paired statistics against uniform where the reports carry per-image
outcomes (``comparison.statistical_comparison``; left out, with the reason, otherwise) and, on a
synthetic pool, the pool's structure against the generator's concepts (``pool_structure``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from dynamics_assets.core.records import PoolClusters, RawShards


class NoReportsError(ValueError):
    """No eval report to compare."""


@dataclass(frozen=True)
class RecipesComparison:
    comparison: Any  # comparison.Comparison
    statistics: Optional[Any]  # comparison.StatisticalComparison, or None (then ``why_not`` says why)
    why_not: str = ""

    def statistics_metrics(self) -> dict[str, float]:
        """The paired differences as tracking metrics: ``recipe/eval set/metric/{diff, ci_low, ci_high, mde}``."""
        if self.statistics is None:
            return {}
        return {f"{r['recipe']}/{r['eval_set']}/{r['metric']}/{k}": r[k]
                for r in self.statistics.rows for k in ("diff", "ci_low", "ci_high", "mde") if r[k] == r[k]}

    def verdict_rows(self) -> list[list[Any]]:
        """(recipe, eval set, metric, Δ (points), 95% CI, MDE, verdict) of every paired difference."""
        return [[r["recipe"], r["eval_set"], r["metric"], f"{100 * r['diff']:+.1f}",
                 f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]", f"{100 * r['mde']:.1f}", r["verdict"]]
                for r in self.statistics.rows]


def compare_recipes(eval_root: str | Path, recipe_order: Sequence[str]) -> RecipesComparison:
    """Every evaluated recipe at equal samples seen and compute; the statistics against uniform when
    the reports carry per-image outcomes (a ``ValueError`` there, e.g. no uniform recipe evaluated,
    leaves them out, its message kept as the reason)."""
    from dynamics_assets.core.evaluate.comparison import (collect_outcomes, collect_reports, compare,
                                                          statistical_comparison)

    reports = collect_reports(eval_root)
    if not reports:
        raise NoReportsError("no eval_report partition has been materialised yet")
    order = list(recipe_order)
    comparison = compare(reports, recipe_order=order)
    statistics, why_not = None, ""
    outcomes = collect_outcomes(eval_root)
    try:
        statistics = statistical_comparison(outcomes, recipe_order=order) if outcomes else None
        why_not = "" if outcomes else "no eval report has per-image outcomes"
    except ValueError as e:
        why_not = str(e)
    return RecipesComparison(comparison, statistics, why_not)


def pool_structure(raw_shards: RawShards, clusters: PoolClusters, sample_plan_root: str | Path,
                   feedback_plan_root: str | Path, recipe_order: Sequence[str],
                   online: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(facts, files): the pool's structure and the tail's share of every plan
    (core/evaluate/pool_structure.py); the files are committed with the comparison
    (pool_structure.md / .json). Without files, the facts' ``pool_structure`` says why (a pool without
    the generator's ground truth); with them, it is their Markdown."""
    from dynamics_assets.core.evaluate import pool_structure as ps

    concepts = Path(raw_shards.eval_dir or "") / "concepts.parquet"
    if not raw_shards.ground_truth or not Path(raw_shards.ground_truth).is_file() or not concepts.is_file():
        return {"pool_structure": "not measured: the pool has no ground-truth concepts (only the synthetic generator's do)"}, {}
    pool = ps.measure_pool(raw_shards.ground_truth, str(concepts), clusters.manifest_dir,
                           str(Path(clusters.clusters_dir) / "assignments.parquet"), clusters.k)
    rows, other_pool = ps.plan_tail_rows(sample_plan_root, pool, feedback_plan_root, pool_version=clusters.pool_version)
    markdown, table = ps.structure_markdown(pool, rows, recipe_order=list(recipe_order), online=online,
                                            other_pool=len(other_pool))
    texts = {"pool_structure.md": markdown,
             "pool_structure.json": json.dumps({"pool": pool.structure.as_dict(), "recipes": table, "plans": rows,
                                                "plans_of_another_pool_version": other_pool}, indent=1)}
    s = pool.structure
    return {"pool_structure": markdown, "top10_cluster_share": s.top10_share, "cluster_size_gini": s.gini,
            "concept_purity": s.purity, "tail_pool_share": s.tail_pool_share}, texts
