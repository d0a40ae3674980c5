"""The comparison block of docs/comparison.md, produced from the secondary comparison's reports.

Reads each profile's current ``comparison_report`` version (statistics.parquet, written by the
Dagster asset) under ``<root>/<profile>/artifacts/``, and writes a Markdown block — settings, wall
time, uniform-100's accuracy on both eval styles, per profile every recipe against uniform at equal
compute (Δ with 95% CI, MDE, verdict) and a paragraph on what it shows and does not — to a file
(``write(..., out=)``), and into a document between the markers ``<!-- comparison:start -->`` and
``<!-- comparison:end -->`` (``write(..., doc=)``: added at its end when missing).
``dynamics compare-lineage`` calls it after its runs (``--doc docs/comparison.md`` for the document).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

START, END = "<!-- comparison:start -->", "<!-- comparison:end -->"


def _points(x: float | None, signed: bool = False) -> str:
    """A fraction in points, "–" where there is none (an interval or MDE needs ≥ 2 seeds)."""
    return "–" if x is None or x != x else f"{100 * x:{'+' if signed else ''}.1f}"


def _pct(x: float) -> str:
    return _points(x, signed=True)


def _short(v: str) -> str:
    return {"no detectable difference": "n.d."}.get(v, "no verdict" if v.startswith("too few seeds") else v)


def load(root: Path, profile: str) -> tuple[list[dict], Path]:
    from dynamics_assets.core.io import versions

    art = root / profile / "artifacts" / "comparison_report"
    current = versions.resolve(art)
    path = current / "statistics.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no statistics yet (run dynamics compare-lineage --profile {profile})")
    return pq.read_table(path).to_pylist(), current


def load_structure(report_dir: Path) -> dict | None:
    """The report's pool_structure.json (None for a report written before it existed)."""
    path = report_dir / "pool_structure.json"
    return json.loads(path.read_text()) if path.is_file() else None


def block(root: Path, profiles: list[str], wall_seconds: float | None) -> str:
    lines = [START, "", "<!-- produced by dynamics compare-lineage from the comparison reports; do not edit -->", ""]
    settings = {}
    for p in profiles:
        exp = root / p / "experiments.yaml"
        if exp.is_file():
            settings[p] = yaml.safe_load(exp.read_text())
    any_exp = next(iter(settings.values()), None)
    if any_exp:
        first = next(iter(any_exp["recipes"].values()))
        t = first.get("training", {})
        lines.append(f"Settings: {len(any_exp['recipes'])} recipes × {len(any_exp['seeds'])} seeds per profile; "
                     f"learner `{t.get('model_name', 'dynamics-tiny-32')}`, batch {t.get('batch_size', '–')}, "
                     f"lr {t.get('lr', '–')}; machine: 2-core CPU box, no GPU.")
    if wall_seconds is not None:
        lines.append(f"Wall time of `dynamics compare-lineage` (measured): {wall_seconds / 60:.1f} min.")
    lines.append("")
    counts = {"better": 0, "worse": 0, "no detectable difference": 0}
    mdes = []
    for p in profiles:
        rows, where = load(root, p)
        u = {(r["eval_set"], r["metric"]): r for r in rows if r["recipe"] == "uniform-100"}
        styles = ", ".join(f"{name} {100 * u[(s, 'top1')]['recipe_mean']:.1f}% top-1"
                           f" (tail {100 * u[(s, 'tail')]['recipe_mean']:.1f}%)"
                           for s, name in (("train_style", "training style"), ("eval", "held-out style"))
                           if (s, "top1") in u)
        seeds = next((r["seeds"] for r in rows), 0)
        structure = load_structure(where)
        tail_of = {t["recipe"]: t for t in structure["recipes"]} if structure else {}
        lines += [f"### Profile `{p}`", "",
                  f"uniform-100: {styles or 'not run'} (mean of {seeds} seeds; chance = 1/120 = 0.8%).", ""]
        if structure:
            s = structure["pool"]
            lines += [f"Pool: {s['k']} clusters of {s['n']:,} pairs; the largest 10% of clusters hold {s['top10_share']:.2f} "
                      f"of them, Gini {s['gini']:.2f}; concept purity {s['purity']:.2f} (NMI {s['nmi']:.2f}); the "
                      f"{s['n_tail_concepts']} tail concepts hold {100 * s['tail_pool_share']:.1f}% of the pool and are "
                      f"the majority of {s['tail_majority_clusters']} clusters.", ""]
        lines += ["| recipe | compute | top-1 % | Δ top-1 [95% CI] | Δ head [95% CI] | Δ tail [95% CI] | "
                  "MDE top-1 / head / tail | verdict top-1 / head / tail | tail share of plans (× pool) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        held = [r for r in rows if r["eval_set"] == "eval"]
        full = max((r["compute"] for r in held if r["recipe"] == "uniform-100"), default=None) or \
            max(r["compute"] for r in held)
        for name in dict.fromkeys(r["recipe"] for r in held):
            by = {r["metric"]: r for r in held if r["recipe"] == name}
            t, h, tl = by["top1"], by["head"], by["tail"]
            if not name.startswith("uniform"):
                for r in (t, h, tl):
                    counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1  # "too few seeds …": no verdict
                    mdes.append((r["metric"], r["mde"]))
            cell = lambda r: f"{_pct(r['diff'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"  # noqa: E731
            lines.append("| " + " | ".join([
                name, f"{t['compute'] / full:.2f}×", f"{100 * t['recipe_mean']:.1f}", cell(t), cell(h), cell(tl),
                " / ".join(_points(r["mde"]) for r in (t, h, tl)),
                " / ".join(_short(r["verdict"]) for r in (t, h, tl)),
                f"{100 * tail_of[name]['tail_share']:.2f}% ({tail_of[name]['ratio_to_pool']:.2f}×)"
                + (" †" if tail_of[name].get("online") else "") if name in tail_of else "–"]) + " |")
        lines += ["", "Held-out style eval set; Δ in points against uniform at equal compute; tail share of plans: "
                      "the 20% least frequent concepts' share of the pairs each recipe's plans draw (mean over seeds "
                      "and epochs; † online selectors: share of the candidates their batches are picked from). Full report: "
                      f"`{where.relative_to(root.parent) if where.is_relative_to(root.parent) else where}/statistics.md` "
                      "(also the training-style set) and `pool_structure.md`, plots `accuracy_vs_frequency.png`, `tail_vs_compute.png`.", ""]
    mde_by = {}
    for m, v in mdes:
        mde_by.setdefault(m, []).append(v)
    mde_txt = ", ".join(f"{m} {_points(sorted(v)[len(v) // 2])}" for m, v in mde_by.items())
    total = sum(counts.values())
    no_verdict = total - counts["better"] - counts["worse"] - counts["no detectable difference"]
    lines += [
        "**What this shows and does not.** " +
        f"Of {total} recipe × metric comparisons (top-1, head, tail; held-out style; non-uniform recipes), "
        f"{counts['better']} are better than uniform at equal compute, {counts['worse']} worse and "
        f"{counts['no detectable difference']} show no detectable difference (Holm-adjusted p over the family "
        f"≥ 0.05)" + (f", and {no_verdict} get no verdict (fewer than 5 seeds)" if no_verdict else "") + ". "
        f"The design detects (80% power) differences of about {mde_txt} points (median MDE); smaller true "
        "effects can hide behind 'no detectable difference', which is not evidence of equality. "
        "The intervals cover the noise of training seeds and of the finite evaluation set, not that of the "
        "pool itself (one generated pool per profile). Everything here is a small CLIP (32 px images, a "
        "two-layer transformer per tower) trained for a few epochs on a few thousand synthetic pairs on a "
        "2-core CPU: it ranks the curation strategies in that regime, under these budgets; it says nothing "
        "direct about web-scale CLIP training, where the learner, the data and the compute differ by orders "
        "of magnitude.", "", END]
    return "\n".join(lines) + "\n"


def replace_block(text: str, new_block: str) -> str:
    """``text`` with its comparison block replaced by ``new_block`` (appended when it has none)."""
    from dynamics_assets.core.io.atomic import replace_marked_block
    return replace_marked_block(text, START, END, new_block)


def reported(root: Path, profiles: list[str]) -> list[str]:
    """The profiles among ``profiles`` that have a comparison report under ``root``."""
    return [p for p in profiles if (root / p / "artifacts" / "comparison_report").exists()]


def write(root: str | Path, profiles: list[str], wall_seconds: float | None = None, *,
          out: str | Path | None = None, doc: str | Path | None = None) -> str:
    """The block of the profiles that have a report, written to ``out`` and/or into ``doc``'s markers;
    returns it. No report at all: FileNotFoundError."""
    root = Path(root).resolve()
    present = reported(root, profiles)
    if not present:
        raise FileNotFoundError(f"no comparison report under {root} for {list(profiles)}")
    text = block(root, present, wall_seconds)
    from dynamics_assets.core.io.atomic import write_marked_block, write_text
    if out:
        write_text(out, text)
    if doc:
        write_marked_block(doc, START, END, text)
    return text
