"""Stage 6 — evaluate: the comparison design (issue 20) as an asset: recipes × seeds on one pool
with controls, the pool gate and matched compute (``core.evaluate.design``). The same core call as
``dynamics compare``; finished runs on disk are reused, so a re-materialisation resumes."""

from pathlib import Path

import dagster as dg

from dynamics_assets.defs.resources import StorageResource

GROUP = "evaluate"
DEFAULT_DESIGN = str(Path(__file__).resolve().parents[3] / "data" / "design.yaml")


class DesignSettings(dg.Config):
    """``design``: the design file; ``seeds`` / ``recipes``: a subset (empty: the file's);
    ``source`` / ``eval_dir``: a user's shards and labelled set (empty: the synthetic pool)."""

    design: str = DEFAULT_DESIGN
    seeds: int = 0
    recipes: list[str] = []
    source: str = ""
    eval_dir: str = ""


@dg.asset(group_name=GROUP, kinds={"pytorch", "faiss"}, pool="gpu")
def comparison_design(context: dg.AssetExecutionContext, config: DesignSettings, storage: StorageResource) -> dg.MaterializeResult:
    """Controls first (a concept-oracle DynamiCS, the smallest concepts dropped), the plan tail lift
    of every recipe before any training, then every recipe against uniform redrawn at its own
    training and all-in compute (t intervals over seeds and images, Holm)."""
    from dynamics_assets.core.evaluate.design import DesignConfig, run_design

    design = DesignConfig.from_yaml(config.design, seeds=config.seeds or None, recipes=config.recipes or None)
    out = storage.layout.artifact("comparison_design")
    summary = run_design(out, design, source=config.source or None, eval_dir=config.eval_dir or None,
                         progress=context.log.info)
    controls, gate = summary["controls"], summary["gate"]
    positive = controls["positive"] or {}
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md((out / "report.md").read_text()),
        "gate_flagged": gate["flagged"], "primary_tail_lift": float(gate["primary_lift"]),
        "positive_control_tail_diff": float(positive.get("diff", float("nan"))),
        "tail_mde": float(controls["tail_mde"]) if controls["tail_mde"] is not None else float("nan"),
        "controls": controls["rule"], "seeds": summary["seeds"], "wall_seconds": float(summary["wall_seconds"]),
    })
