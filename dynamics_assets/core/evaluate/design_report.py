"""The comparison design's report: controls first, the pool gate, then every recipe against uniform
at equal training compute and at equal all-in compute (``evaluate.statistics``: paired by seed and
evaluation image, two-part t intervals, Holm over the family, no verdict below 5 seeds).

Compute, in FLOPs (forward + backward, counted by torch's FlopCounterMode, ``train.lit`` and
``embed.frozen``):
  training  = samples seen × (the learner's FLOPs per sample + the frozen tower's forward), as a
              LiT run that does not cache the locked features spends them (caching them here is an
              implementation detail of the experiment, not of the recipe);
  curation  = what the recipe needs before training: for recipes on k-means clusters the frozen
              tower over the whole valid pool plus k-means (training and assignment); 0 for uniform;
              0 for the concept oracle, which reads the generator's labels and is not a realisable
              recipe (a control);
  all-in    = training + curation.
Uniform's reference at a compute c is the line through the uniform runs of the same seed (30%, 50%,
100%, each redrawn every epoch) read at c (``statistics.reference_at``); beyond uniform-100 it is
clamped, and the table says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from dataclasses import replace

from dynamics_assets.core.io.atomic import atomic_path, write_json, write_marked_block

LEARNER_BEFORE = 0.08  # held-out top-1 of the ViT learner on main 0f8ecd8 (7–9%, issue 20's audit)


def tail_mask(prepared, fraction: float = 0.2) -> np.ndarray:
    """Over class rows: the least frequent ``fraction`` of the classes (pool_structure's rule)."""
    from dynamics_assets.core.evaluate.pool_structure import tail_concepts
    return tail_concepts(prepared.train_frequency, fraction)


def head_mask(prepared, fraction: float = 0.2) -> np.ndarray:
    from dynamics_assets.core.evaluate.pool_structure import tail_concepts
    return tail_concepts(-np.asarray(prepared.train_frequency), fraction)


def cluster_structure(prepared, clustering) -> dict[str, Any]:
    """The clusters' shape (k, count after the merge, top-10% share, Gini) and, with ground truth, purity,
    tail-majority clusters and the rarest concept's pairs."""
    from dynamics_assets.core.evaluate.pool_structure import gini, top_share
    sizes = np.bincount(clustering.ids, minlength=clustering.n_clusters)
    out = {"k": clustering.k, "clusters": int((sizes > 0).sum()), "merge_threshold": clustering.merge_threshold,
           "calibration": clustering.calibration, "top10_share": float(top_share(sizes[sizes > 0], 0.1)),
           "gini": float(gini(sizes[sizes > 0]))}
    if prepared.concept is not None:
        from dynamics_assets.core.evaluate.pool_structure import Contingency, structure_of
        n_concepts = prepared.n_concepts
        table = Contingency(clustering.n_clusters, n_concepts)
        table.update(clustering.ids.astype(np.int64), prepared.concept.astype(np.int64))
        freq = np.zeros(n_concepts, np.int64)
        freq[np.asarray(prepared.eval_concept_ids)] = prepared.train_frequency
        s = structure_of(table, freq)
        out.update({"purity": s.purity, "tail_majority_clusters": s.tail_majority_clusters,
                    "tail_concept_pairs_min": int(np.sort(np.bincount(prepared.concept, minlength=n_concepts))[0])})
    return out


def analyse(prepared, clustering, recipes, config, results: Mapping[tuple[str, int], tuple[np.ndarray, dict]],
            gate: Mapping[str, float], pools, *, learner_flops: int, skipped: Sequence[str],
            wall_seconds: float) -> dict[str, Any]:
    from dynamics_assets.core.evaluate.statistics import (MIN_SEEDS, TOO_FEW_SEEDS, ReferencePoint, bucket_masks,
                                                          holm, paired_t, reference_at)

    seeds = list(config.seeds)
    rows = np.arange(len(prepared.train_frequency))
    masks = bucket_masks(prepared.eval_labels, {"tail": rows[tail_mask(prepared)], "head": rows[head_mask(prepared)]})
    tower = prepared.tower_flops
    embed_pass = prepared.n_valid * tower + clustering.flops

    def train_flops(rec: dict) -> float:
        return rec["samples_seen"] * (learner_flops + tower)

    def curation_flops(r) -> float:
        if r.is_uniform or r.clusters == "concepts":
            return 0.0
        return float(embed_pass)

    uniforms = [r for r in recipes if r.is_uniform]
    full = next((r for r in uniforms if float(r.sampler.get("budget", 1.0)) == 1.0), None)
    full_train = np.mean([train_flops(results[(full.name, s)][1]) for s in seeds]) if full else float("nan")
    points = {s: [ReferencePoint(train_flops(results[(u.name, s)][1]), results[(u.name, s)][0], u.name)
                  for u in uniforms] for s in seeds}
    table = []
    for r in recipes:
        correct = np.stack([results[(r.name, s)][0] for s in seeds])
        recs = [results[(r.name, s)][1] for s in seeds]
        tr = float(np.mean([train_flops(x) for x in recs]))
        cur = curation_flops(r)
        row = {"recipe": r.name, "control": r.control, "clusters": r.clusters, "uniform": r.is_uniform,
               "tail_lift": gate.get(r.name, float("nan")),
               "seen_x_pool": float(np.mean([x["samples_seen"] for x in recs])) / prepared.n_valid,
               "train_x_full": tr / full_train, "allin_x_full": (tr + cur) / full_train,
               "curation_flops": cur, "steps": int(np.mean([x["steps"] for x in recs])),
               "seconds": float(np.mean([x["seconds"] for x in recs])),
               "metrics": {m: float(correct[:, mask].mean()) for m, mask in masks.items()}}
        if not r.is_uniform and uniforms:
            for kind, extra in (("equal_training", 0.0), ("equal_allin", cur)):
                refs, notes = [], set()
                for s, x in zip(seeds, recs):
                    ref, note = reference_at(points[s], train_flops(x) + extra)
                    refs.append(ref)
                    notes.add(note.split(" (t=")[0])
                res = paired_t(correct, np.stack(refs), masks)
                row[kind] = {"reference": " / ".join(sorted(notes)), "results": res}
        table.append(row)
    # Two families: the controls' two pre-specified tests (the positive control's tail gain, the
    # negative control's tail loss) check the design; every other comparison is a claim about a
    # recipe. Holm runs within each; the oracle twins without a control role are reported, not tested.
    oracle_names = {x["recipe"] for x in table if x["clusters"] == "concepts"}
    not_claims = oracle_names | {x["recipe"] for x in table if x["control"]}
    tested = [x for x in table if "equal_training" in x]
    families = [[(x, "equal_training", "tail") for x in tested if x["control"]]]  # the controls' two tests
    for kind in ("equal_training", "equal_allin"):  # the claims about recipes, one family per table
        families.append([(x, kind, m) for x in tested if x["recipe"] not in not_claims
                         for m in x[kind]["results"]])
    for x in tested:  # the controls' and oracles' other cells are shown, not tested
        if x["recipe"] in not_claims:
            for kind in ("equal_training", "equal_allin"):
                cells = x[kind]["results"]
                for m in cells:
                    cells[m] = replace(cells[m], verdict="control (not a claim)")
    for fam in families:
        for (x, kind, m), adjusted in zip(fam, holm([x[kind]["results"][m] for x, kind, m in fam])):
            x[kind]["results"][m] = adjusted
    # controls first
    def tail_of(name_control):
        row = next((x for x in table if x["control"] == name_control and "equal_training" in x), None)
        return (row, row["equal_training"]["results"]["tail"]) if row else (None, None)

    pos_row, pos = tail_of("positive")
    neg_row, neg = tail_of("negative")
    claim_rows = [x for x in table if "equal_training" in x and x["recipe"] not in not_claims]
    tail_mde = tail_mde_unpaired = None
    if claim_rows:
        tail_mde = float(np.nanmedian([x["equal_training"]["results"]["tail"].mde_paired for x in claim_rows]))
        tail_mde_unpaired = float(np.nanmax([x["equal_training"]["results"]["tail"].mde for x in claim_rows]))
    detects = bool(pos is not None and pos.ci_low > 0 and pos.p_holm < 0.05)
    if len(seeds) < MIN_SEEDS:
        verdict_rule = TOO_FEW_SEEDS
    elif pos is None:
        verdict_rule = "no positive control on this pool (no ground truth): verdicts read the intervals alone"
    elif detects:
        verdict_rule = "the positive control beat uniform on the tail: the design can detect a curation effect"
    else:
        verdict_rule = ("the positive control did NOT beat uniform on the tail: this design cannot detect curation "
                        "effects, and no verdicts are given")
        for row in table:
            for kind in ("equal_training", "equal_allin"):
                if kind in row:
                    for m, v in list(row[kind]["results"].items()):
                        row[kind]["results"][m] = replace(v, verdict="no verdict (controls failed)")
    primary = next((x for x in table if x["recipe"] == config.primary), None)
    primary_lift = primary["tail_lift"] if primary else float("nan")
    u100 = next((x for x in table if x["recipe"] == (full.name if full else None)), None)
    return {
        "seeds": len(seeds), "epochs": config.epochs, "learner": dict(config.learner),
        "learner_flops_per_sample": learner_flops, "tower_flops_per_image": tower,
        "pool": {"valid": prepared.n_valid, "input_pairs": prepared.n_generated, "notes": prepared.notes,
                 "identity": prepared.identity, "eval_images": int(len(prepared.eval_labels)),
                 "tail_images": int(masks["tail"].sum()), "head_images": int(masks["head"].sum())},
        "structure": cluster_structure(prepared, clustering),
        "gate": {"threshold": 1.5, "primary": config.primary, "primary_lift": primary_lift,
                 "flagged": bool(not primary_lift >= 1.5), "lifts": dict(gate)},
        "controls": {"positive": pos.as_dict() if pos else None, "positive_recipe": pos_row["recipe"] if pos_row else None,
                     "negative": neg.as_dict() if neg else None, "negative_recipe": neg_row["recipe"] if neg_row else None,
                     "tail_mde": tail_mde, "tail_mde_unpaired": tail_mde_unpaired,
                     "powered": bool(pos is not None and tail_mde is not None and pos.diff > tail_mde),
                     "detects": detects, "rule": verdict_rule},
        "learner_check": {"uniform_100_top1": u100["metrics"]["top1"] if u100 else None, "before": LEARNER_BEFORE},
        "table": table, "skipped": list(skipped), "wall_seconds": wall_seconds,
        "run_seconds": float(sum(rec["seconds"] for _, rec in results.values())), "runs": len(results),
    }


def _pct(x: float) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


def _ci(r) -> str:
    return f"{100 * r.diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"


def markdown(summary: Mapping[str, Any]) -> str:
    g, c, s, p = summary["gate"], summary["controls"], summary["structure"], summary["pool"]
    lines = ["# Comparison design report", ""]
    if g["flagged"]:
        lines += [f"> **Pool gate: FLAGGED.** {g['primary']}'s plans lift the tail's share only "
                  f"{g['primary_lift']:.2f}× (< {g['threshold']}×): on this pool's clusters DynamiCS cannot "
                  "up-weight the tail much, whatever the training shows.", ""]
    else:
        lines += [f"> Pool gate: passed — {g['primary']}'s plans lift the tail's share {g['primary_lift']:.2f}× "
                  f"(≥ {g['threshold']}×).", ""]
    lines += ["## Controls", "", f"- **Rule:** {c['rule']}."]
    if c["positive"]:
        pr = c["positive"]
        lines.append(f"- Positive control `{c['positive_recipe']}` vs uniform at equal compute, tail accuracy: "
                     f"{100 * pr['diff']:+.1f} points [{100 * pr['ci_low']:+.1f}, {100 * pr['ci_high']:+.1f}], "
                     f"Holm p = {pr['p_holm']:.3g}.")
    if c["negative"]:
        nr = c["negative"]
        lines.append(f"- Negative control `{c['negative_recipe']}`, tail: {100 * nr['diff']:+.1f} points "
                     f"[{100 * nr['ci_low']:+.1f}, {100 * nr['ci_high']:+.1f}], Holm p = {nr['p_holm']:.3g}.")
    if c["tail_mde"] is not None:
        line = (f"- The design's tail MDE (80% power, two-sided 0.05, t at the paired difference's df; median over the "
                f"recipes): {100 * c['tail_mde']:.1f} points (unpaired, as if the arms were independent: "
                f"{100 * c['tail_mde_unpaired']:.1f})")
        if c["positive"]:
            line += (f"; the positive control's tail effect is {'larger' if c['powered'] else 'NOT larger'} than it")
        lines.append(line + ".")
    lines.append("- Families: the controls' two tail tests form one Holm family; the recipes' comparisons another "
                 "(per table); the oracle twin without a control role is shown, not tested.")
    lc = summary["learner_check"]
    if lc["uniform_100_top1"] is not None:
        line = f"- Learner: uniform-100 held-out top-1 {100 * lc['uniform_100_top1']:.1f}%"
        if "purity" in s:  # the synthetic pool, where the ViT learner's figure was measured
            line += f" ({lc['uniform_100_top1'] / lc['before']:.1f}× the ≈ {100 * lc['before']:.0f}% of the ViT learner before)"
        lines.append(line + ".")
    lines += ["", "## Recipes against uniform at equal training compute", "",
              f"{summary['seeds']} seeds × {p['eval_images']:,} evaluation images ({p['tail_images']} tail, "
              f"{p['head_images']} head); Δ in points with 95% t intervals (seeds + images); verdicts read Holm-adjusted "
              "p over the table's family.", "",
              "| recipe | control | plan tail lift | samples seen ÷ pool | training × u-100 | all-in × u-100 | top-1 | tail | "
              "Δ top-1 | Δ tail | Δ head | verdict (tail) | reference |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["table"]:
        m = row["metrics"]
        cells = [f"`{row['recipe']}`", row["control"] or "", f"{row['tail_lift']:.2f}×",
                 f"{row['seen_x_pool']:.2f}", f"{row['train_x_full']:.2f}", f"{row['allin_x_full']:.2f}",
                 _pct(m["top1"]), _pct(m["tail"])]
        if "equal_training" in row:
            res = row["equal_training"]["results"]
            cells += [_ci(res["top1"]), _ci(res["tail"]), _ci(res["head"]), res["tail"].verdict,
                      row["equal_training"]["reference"]]
        else:
            cells += ["reference", "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## At equal all-in compute (curation counted)", "",
              "| recipe | all-in × u-100 | Δ top-1 | Δ tail | verdict (tail) | reference |", "|---|---|---|---|---|---|"]
    for row in summary["table"]:
        if "equal_allin" in row:
            res = row["equal_allin"]["results"]
            lines.append(f"| `{row['recipe']}` | {row['allin_x_full']:.2f} | {_ci(res['top1'])} | {_ci(res['tail'])} | "
                         f"{res['tail'].verdict} | {row['equal_allin']['reference']} |")
    lines += ["", "## Pool and clusters", ""]
    lines += [f"- {v}" for v in p["notes"].values()]
    lines.append(f"- {p['valid']:,} valid pairs of {p['input_pairs']:,} input pairs (the rest quarantined, with reasons, in the manifest).")
    line = (f"- k-means k = {s['k']} → {s['clusters']} clusters after the merge ({s['calibration']}); "
            f"top-10% share {s['top10_share']:.2f}, Gini {s['gini']:.2f}")
    if "purity" in s:
        line += (f", purity {s['purity']:.2f}, {s['tail_majority_clusters']} clusters with a tail concept as their majority; "
                 f"the rarest concept has {s['tail_concept_pairs_min']} valid pairs")
    lines.append(line + ".")
    lines.append("- Plan tail lift (tail share of all epochs' draws ÷ the tail's share of the valid pool, mean over seeds): "
                 + ", ".join(f"`{k}` {v:.2f}×" for k, v in g["lifts"].items()) + ".")
    if summary["skipped"]:
        lines.append(f"- Left out (they need ground truth this pool lacks): {', '.join(summary['skipped'])}.")
    lr = summary["learner"]
    lines += ["", "## Learner and compute", "",
              f"- LiT: frozen ImageNet EfficientNet-Lite0 features ({summary['tower_flops_per_image'] / 1e6:.0f} MFLOPs per image), "
              f"a trained head and open_clip text tower (width {lr.get('text_width')}, {lr.get('text_layers')} layers, "
              f"context {lr.get('context_length')}); {summary['learner_flops_per_sample'] / 1e6:.1f} MFLOPs per sample "
              f"forward + backward; batch {lr.get('batch_size')}, lr {lr.get('lr')}, {summary['epochs']} epochs.",
              f"- Time: {summary['runs']} runs took {summary['run_seconds'] / 60:.1f} min of training and evaluation "
              f"in all (summed over runs; parallel parts overlap); this call took {summary['wall_seconds'] / 60:.1f} min "
              "(runs already on disk are reused)."]
    return "\n".join(lines) + "\n"


def _jsonable(obj):
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def write_report(root: str | Path, summary: Mapping[str, Any]) -> dict[str, Path]:
    root = Path(root)
    md, js = root / "report.md", root / "report.json"
    with atomic_path(md) as tmp:
        tmp.write_text(markdown(summary))
    write_json(js, _jsonable(summary))
    return {"markdown": md, "json": js}


DOC_START, DOC_END = "<!-- design:start -->", "<!-- design:end -->"


def write_doc_block(doc: str | Path, summary: Mapping[str, Any]) -> None:
    """Replace the block between ``DOC_START`` and ``DOC_END`` in ``doc`` with the report (headings
    one level down); the rest of the file is left as it is."""
    body = "\n".join(("#" + line) if line.startswith("#") else line for line in markdown(summary).splitlines())
    block = f"{DOC_START}\n<!-- written by `dynamics compare --doc`; do not edit -->\n\n{body}\n\n{DOC_END}"
    write_marked_block(doc, DOC_START, DOC_END, block, append=False)
