"""Recipes side by side: which curation gives the best model per unit of compute, head and tail.

Every (recipe, seed) has a curve of eval points (one per epoch). Three views, each reported as
mean ± sample standard deviation over seeds:
  * final     — the last evaluated epoch of every recipe;
  * equal samples seen — each curve linearly interpolated at S*, the smallest final samples-seen
    of all recipes (so every recipe is read inside its own range);
  * equal compute      — the same at F*, the smallest final total FLOPs (training forward+backward
    plus, for online selection, the scoring passes of learner and reference).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import write_bytes, write_json
from dynamics_assets.core.io.plots import figure, save_png

METRICS = {"top1": "zero_shot/top1", "mean_per_class": "zero_shot/mean_per_class", "head": "zero_shot/head",
           "middle": "zero_shot/middle", "tail": "zero_shot/tail", "i2t_r1": "retrieval/i2t_r1"}
COMPUTE = {"samples_seen": "compute/samples_seen", "total_flops": "compute/total_flops",
           "device_seconds": "compute/device_seconds"}


def collect_reports(root: str | Path) -> list[dict[str, Any]]:
    """The ``metrics.json`` of every ``<root>/<recipe>.s<seed>/<epoch>`` report (the current version
    of an artefact root, or a plain directory) as a flat record."""
    out = []
    for report_dir in sorted(Path(root).glob("*/*")):
        path = versions.resolve(report_dir) / "metrics.json"
        if not path.is_file():
            continue
        recipe_key, epoch_key = report_dir.parent.name, report_dir.name
        name, _, seed = recipe_key.rpartition(".s")
        m = json.loads(path.read_text())
        metrics = m.get("metrics", m)
        out.append({"recipe": recipe_key, "name": name, "seed": int(seed), "epoch": int(epoch_key.split("-")[-1]),
                    **{k: _num(metrics.get(v)) for k, v in {**METRICS, **COMPUTE}.items()}})
    return out


def _num(v) -> float:
    return float("nan") if v is None else float(v)


@dataclass
class Comparison:
    rows: list[dict[str, Any]]  # one per recipe: name, seeds, and "<view>/<metric>" → (mean, std)
    s_star: float
    f_star: float
    markdown: str
    curves: dict[str, list[dict[str, Any]]]  # recipe name → per-epoch means


def _curves(reports: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    by: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in reports:
        by[r["name"]][r["seed"]].append(r)
    for seeds in by.values():
        for points in seeds.values():
            points.sort(key=lambda r: r["epoch"])
    return by


def _at(points: list[dict[str, Any]], axis: str, x: float, metric: str) -> float:
    xs = np.array([p[axis] for p in points])
    ys = np.array([p[metric] for p in points])
    return float(np.interp(x, xs, ys))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).all():  # e.g. zero-shot metrics of a pool evaluated by retrieval only
        return float("nan"), 0.0
    return float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if np.sum(~np.isnan(v)) > 1 else 0.0


def compare(reports: list[dict[str, Any]], recipe_order: Sequence[str] | None = None) -> Comparison:
    """Only complete curves (every epoch evaluated) are compared; the others are listed."""
    by = _curves(reports)
    last = max(r["epoch"] for r in reports)
    incomplete = sorted(f"{n}.s{seed}" for n, seeds in by.items() for seed, pts in seeds.items()
                        if pts[-1]["epoch"] < last)
    for n in list(by):
        by[n] = {seed: pts for seed, pts in by[n].items() if pts[-1]["epoch"] == last}
        if not by[n]:
            del by[n]
    names = [n for n in (recipe_order or []) if n in by] + sorted(n for n in by if n not in (recipe_order or []))
    final = {n: [pts[-1] for pts in by[n].values()] for n in names}
    s_star = min(min(p["samples_seen"] for p in final[n]) for n in names)
    f_star = min(min(p["total_flops"] for p in final[n]) for n in names)
    rows = []
    for n in names:
        row: dict[str, Any] = {"recipe": n, "seeds": len(by[n]), "epochs": max(p["epoch"] for p in final[n])}
        for c in COMPUTE:
            row[f"final/{c}"] = _mean_std([p[c] for p in final[n]])
        for m in METRICS:
            row[f"final/{m}"] = _mean_std([p[m] for p in final[n]])
            row[f"samples/{m}"] = _mean_std([_at(pts, "samples_seen", s_star, m) for pts in by[n].values()])
            row[f"compute/{m}"] = _mean_std([_at(pts, "total_flops", f_star, m) for pts in by[n].values()])
        rows.append(row)
    curves = {n: _mean_curve(by[n]) for n in names}
    markdown = _markdown(rows, s_star, f_star)
    if incomplete:
        markdown += f"\nLeft out (not every epoch evaluated yet): {', '.join(incomplete)}.\n"
    return Comparison(rows, s_star, f_star, markdown, curves)


def _mean_curve(seeds: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    epochs = sorted({p["epoch"] for pts in seeds.values() for p in pts})
    out = []
    for e in epochs:
        pts = [p for ps in seeds.values() for p in ps if p["epoch"] == e]
        out.append({"epoch": e, **{k: _mean_std([p[k] for p in pts]) for k in (*METRICS, *COMPUTE)}})
    return out


def _fmt(ms: tuple[float, float], pct: bool = True) -> str:
    m, s = ms
    if np.isnan(m):
        return "–"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3g}"


def _markdown(rows, s_star, f_star) -> str:
    lines = ["# Curation recipes compared", "",
             "Zero-shot accuracy on the held-out set, % (mean ± sd over seeds); head / tail = mean per-class "
             "accuracy of the 20% most / least frequent concepts.", ""]
    views = [("final", "At the last epoch"),
             ("samples", f"At equal samples seen ({s_star:,.0f}, interpolated)"),
             ("compute", f"At equal compute ({f_star:.3g} FLOPs, interpolated)")]
    for view, title in views:
        lines += [f"## {title}", "",
                  "| recipe | seeds | top-1 | mean/class | head | middle | tail | i→t R@1 |" +
                  (" samples seen | FLOPs |" if view == "final" else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|---|" if view == "final" else "")]
        for r in rows:
            cells = [r["recipe"], str(r["seeds"])] + [_fmt(r[f"{view}/{m}"]) for m in METRICS]
            if view == "final":
                cells += [f"{r['final/samples_seen'][0]:,.0f}", f"{r['final/total_flops'][0]:.3g}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_comparison(c: Comparison, out_dir: str | Path, statistics: "StatisticalComparison | None" = None,
                     texts: dict[str, str] | None = None) -> dict[str, Path]:
    """Commit the comparison (PNG, Markdown, JSON) — and, when given, the statistical comparison
    (``write_statistics``' files) and ``texts`` (file name → content, e.g. the pool structure) — as
    one new version of the artefact root ``out_dir``; returns the files inside the committed version."""
    with versions.Artefact(out_dir).write() as staging:
        _write_comparison(c, staging.path)
        extra = write_statistics(statistics, staging.path) if statistics is not None else {}
        for name, text in (texts or {}).items():
            (staging.path / name).write_text(text)
            extra[name] = staging.path / name
    paths = {name: staging.version_dir / f"comparison.{ext}" for name, ext in (("png", "png"), ("md", "md"), ("json", "json"))}
    return paths | {name: staging.version_dir / p.name for name, p in extra.items()}


def _write_comparison(c: Comparison, out_dir: Path) -> None:
    fig = figure(13, 4)
    for i, metric in enumerate(("top1", "head", "tail")):
        ax = fig.add_subplot(1, 3, i + 1)
        for name, curve in c.curves.items():
            x = [p["total_flops"][0] for p in curve]
            y = [p[metric][0] for p in curve]
            e = [p[metric][1] for p in curve]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=2, label=name)
        ax.axvline(c.f_star, color="grey", ls=":", lw=1)
        ax.set_xlabel("compute (FLOPs)")
        ax.set_title({"top1": "overall top-1", "head": "head (mean per class)", "tail": "tail (mean per class)"}[metric])
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("zero-shot accuracy")
    fig.axes[-1].legend(fontsize=7, loc="best")
    save_png(fig, out_dir / "comparison.png")
    write_bytes(out_dir / "comparison.md", c.markdown.encode())
    write_json(out_dir / "comparison.json", {"s_star": c.s_star, "f_star": c.f_star, "rows": c.rows})


# ---------------------------------------------------------------------------------------------
# The statistical comparison: every recipe against uniform at equal compute
# ---------------------------------------------------------------------------------------------

EQUAL_COMPUTE = (
    "Uniform at equal compute: for each seed, uniform curation's accuracy-vs-compute frontier is made of "
    "the final checkpoints of the uniform recipes (uniform-50, uniform-100: each trained with its own full "
    "cosine schedule, the same epochs and seed), and read at the recipe's total compute (training FLOPs "
    "plus scoring FLOPs of online selection) by linear interpolation of the per-image outcomes between the "
    "two points that bracket it. A recipe at the 50% budget without scoring cost therefore meets uniform-50 "
    "exactly, same seed and same images; jest / activeclip (full plan, scoring passes) fall between "
    "uniform-50 and uniform-100 or above it (clamped to uniform-100, said in the reference column). "
    "With only one uniform recipe, its own epochs form the frontier.")


@dataclass
class RunOutcome:
    """One (recipe, seed, epoch) eval report with its per-image outcomes."""

    name: str
    seed: int
    epoch: int
    compute: float  # total FLOPs
    samples_seen: float
    metrics: dict[str, float]
    per_image: dict[str, np.ndarray]  # eval set name ("eval", "train_style") → correct (images,)
    labels: dict[str, np.ndarray]  # eval set name → label (class row) per image
    report_dir: Path


def collect_outcomes(root: str | Path) -> list[RunOutcome]:
    """Every ``<root>/<recipe>.s<seed>/<epoch>`` report that has per-image outcomes."""
    import pyarrow.parquet as pq

    out = []
    for report_dir in sorted(Path(root).glob("*/*")):
        current = versions.resolve(report_dir)
        if not (current / "metrics.json").is_file() or not (current / "per_image.parquet").is_file():
            continue
        name, _, seed = report_dir.parent.name.rpartition(".s")
        m = json.loads((current / "metrics.json").read_text())
        m = {k: _num(v) for k, v in m.get("metrics", m).items()}
        per_image, labels = {}, {}
        for set_name, file in (("eval", "per_image.parquet"), ("train_style", "per_image_train_style.parquet")):
            if (current / file).is_file():
                t = pq.read_table(current / file).to_pydict()
                per_image[set_name] = np.asarray(t["correct"], dtype=np.float64)
                labels[set_name] = np.asarray(t["label"], dtype=np.int64)
        out.append(RunOutcome(name, int(seed), int(report_dir.name.split("-")[-1]), m.get("compute/total_flops", float("nan")),
                              m.get("compute/samples_seen", float("nan")), m, per_image, labels, current))
    return out


def concept_table(report_dir: Path) -> dict[str, np.ndarray]:
    """The eval set's concepts (per_concept.parquet of a report): bucket and train frequency by class row."""
    import pyarrow.parquet as pq

    t = pq.read_table(Path(report_dir) / "per_concept.parquet").to_pydict()
    return {"bucket": np.asarray(t["bucket"]), "train_frequency": np.asarray(t["train_frequency"], dtype=np.float64),
            "concept": np.asarray(t["concept"])}


@dataclass
class StatisticalComparison:
    rows: list[dict[str, Any]]  # long: recipe × eval set × metric
    markdown: str
    final: dict[str, list[RunOutcome]]  # recipe → its final runs (one per seed)
    curves: dict[str, list[RunOutcome]]  # recipe → every evaluated run
    concepts: dict[str, np.ndarray]
    epochs: int
    references: list[str]


def _frontier(by_seed_final: dict[str, dict[int, RunOutcome]], every: dict[str, list[RunOutcome]],
              references: Sequence[str], seed: int, eval_set: str):
    from dynamics_assets.core.evaluate.statistics import ReferencePoint

    present = [r for r in references if seed in by_seed_final.get(r, {})]
    if len(present) >= 2:
        return [ReferencePoint(by_seed_final[r][seed].compute, by_seed_final[r][seed].per_image[eval_set], r)
                for r in present if eval_set in by_seed_final[r][seed].per_image]
    if len(present) == 1:  # one uniform recipe: its learning curve
        r = present[0]
        return [ReferencePoint(o.compute, o.per_image[eval_set], f"{r} epoch {o.epoch}")
                for o in every[r] if o.seed == seed and eval_set in o.per_image]
    return []


def statistical_comparison(outcomes: Sequence[RunOutcome], *, recipe_order: Sequence[str] | None = None,
                           references: Sequence[str] | None = None) -> StatisticalComparison:
    """Every recipe whose every seed reached the last epoch, against uniform at equal compute
    (``EQUAL_COMPUTE``), on top-1 / head / tail, per eval set, by the paired two-stage bootstrap of
    ``statistics``. ``references``: the uniform recipes (default: names starting with 'uniform')."""
    from dynamics_assets.core.evaluate import statistics as st

    if not outcomes:
        raise ValueError("no eval report with per-image outcomes")
    last = max(o.epoch for o in outcomes)
    every: dict[str, list[RunOutcome]] = defaultdict(list)
    for o in outcomes:
        every[o.name].append(o)
    final: dict[str, dict[int, RunOutcome]] = {}
    for name, runs in every.items():
        by_seed = {o.seed: o for o in runs if o.epoch == last}
        if by_seed:
            final[name] = by_seed
    order = [n for n in (recipe_order or []) if n in final] + sorted(n for n in final if n not in (recipe_order or []))
    refs = [r for r in (references or sorted(n for n in final if n.startswith("uniform"))) if r in final]
    if not refs:
        raise ValueError(f"no uniform reference among the complete recipes {order}")
    first = next(iter(final[refs[0]].values()))
    concepts = concept_table(first.report_dir)
    buckets = {b: np.flatnonzero(concepts["bucket"] == b) for b in ("head", "tail")}
    found: list[tuple[dict, "st.PairedResult"]] = []
    for name in order:
        for eval_set in ("eval", "train_style"):
            seeds = sorted(s for s, o in final[name].items() if eval_set in o.per_image)
            A, B, notes, computes = [], [], set(), []
            for s in seeds:
                frontier = _frontier(final, every, refs, s, eval_set)
                if not frontier:
                    continue
                o = final[name][s]
                ref, note = st.reference_at(frontier, o.compute)
                A.append(o.per_image[eval_set])
                B.append(ref)
                notes.add(note)
                computes.append(o.compute)
            if not A:
                continue
            labels = final[name][seeds[0]].labels[eval_set]
            masks = st.bucket_masks(labels, buckets)
            results = st.paired_t(np.stack(A), np.stack(B), masks)
            for metric in st.METRICS:
                found.append(({"recipe": name, "eval_set": eval_set, "reference": "; ".join(sorted(notes)),
                               "compute": float(np.mean(computes))}, results[metric]))
    # one family: every comparison of a recipe that is not itself a reference (Holm, module doc of statistics)
    family = [i for i, (row, _) in enumerate(found) if row["recipe"] not in refs]
    adjusted = dict(zip(family, st.holm([found[i][1] for i in family])))
    rows = [{**row, **adjusted.get(i, r).as_dict(), "family": len(family)} for i, (row, r) in enumerate(found)]
    ref_final = max(refs, key=lambda r: np.mean([o.compute for o in final[r].values()]))
    md = _statistics_markdown(rows, last, refs, ref_final, final)
    return StatisticalComparison(rows, md, {n: list(final[n].values()) for n in order},
                                 {n: sorted(every[n], key=lambda o: (o.seed, o.epoch)) for n in order},
                                 concepts, last, refs)


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:+.1f}"


def _statistics_markdown(rows, epochs, refs, ref_full, final) -> str:
    from dynamics_assets.core.evaluate import statistics as st

    full_compute = np.mean([o.compute for o in final[ref_full].values()])
    lines = ["# Recipes against uniform at equal compute", "",
             f"Zero-shot top-1 / head / tail (mean per-class accuracy of the 20% most / least frequent concepts) "
             f"after {epochs} epochs. Δ = recipe − uniform at the recipe's compute, in points (percentage "
             "points), paired by seed and image; [95% CI] = Δ ± t(0.975, ν) · SE, SE from the spread over "
             "seeds plus the evaluation images' sampling noise, ν by Welch–Satterthwaite; MDE = minimum "
             "detectable effect of the design (80% power, α = 0.05: (t(0.975, ν) + t(0.8, ν)) · √2 · SE of "
             f"uniform's own metric); verdict: better / worse when the Holm-adjusted p-value over the family of "
             f"{max((r.get('family', 0) for r in rows), default=0)} comparisons is below 0.05; with fewer than "
             f"5 seeds no verdict is given.", "",
             EQUAL_COMPUTE, ""]
    for eval_set, title in (("eval", "Held-out style (eval/)"), ("train_style", "Training style (eval_train_style/)")):
        sel = [r for r in rows if r["eval_set"] == eval_set]
        if not sel:
            continue
        lines += [f"## {title}", "",
                  "| recipe | seeds | compute (× " + ref_full + ") | top-1 % | Δ top-1 [95% CI] | Δ head [95% CI] | "
                  "Δ tail [95% CI] | MDE top-1 / head / tail | verdict top-1 / head / tail | reference |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name in dict.fromkeys(r["recipe"] for r in sel):
            by = {r["metric"]: r for r in sel if r["recipe"] == name}
            t, h, tl = by["top1"], by["head"], by["tail"]
            cell = lambda r: f"{_pct(r['diff'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"  # noqa: E731
            lines.append("| " + " | ".join([
                name, str(t["seeds"]), f"{t['compute'] / full_compute:.2f}", f"{100 * t['recipe_mean']:.1f}",
                cell(t), cell(h), cell(tl),
                " / ".join(f"{100 * r['mde']:.1f}" for r in (t, h, tl)),
                " / ".join(r["verdict"].replace("no detectable difference", "n.d.")
                           .replace(st.TOO_FEW_SEEDS, "no verdict") for r in (t, h, tl)),
                t["reference"]]) + " |")
        lines.append("")
    lines += ["n.d. = no detectable difference. A uniform recipe against itself is 0 by construction "
              "(it is the reference).", ""]
    return "\n".join(lines)


def write_statistics(c: StatisticalComparison, out_dir: Path) -> dict[str, Path]:
    """The table (statistics.md / .parquet / .csv) and the two plots into ``out_dir`` (a staging
    directory): accuracy against concept frequency per recipe, tail accuracy against compute."""
    import pyarrow as pa

    from dynamics_assets.core.io.atomic import write_parquet

    out_dir = Path(out_dir)
    paths = {"statistics.md": out_dir / "statistics.md", "statistics.parquet": out_dir / "statistics.parquet",
             "statistics.csv": out_dir / "statistics.csv", "accuracy_vs_frequency.png": out_dir / "accuracy_vs_frequency.png",
             "tail_vs_compute.png": out_dir / "tail_vs_compute.png"}
    write_bytes(paths["statistics.md"], c.markdown.encode())
    cols = list(c.rows[0]) if c.rows else ["recipe"]
    table = pa.table({k: [r[k] for r in c.rows] for k in cols})
    write_parquet(paths["statistics.parquet"], table)
    csv = [",".join(cols)] + [",".join(_csv(r[k]) for k in cols) for r in c.rows]
    write_bytes(paths["statistics.csv"], ("\n".join(csv) + "\n").encode())
    _plot_accuracy_vs_frequency(c, paths["accuracy_vs_frequency.png"])
    _plot_tail_vs_compute(c, paths["tail_vs_compute.png"])
    return paths


def _csv(v) -> str:
    s = f"{v:.6g}" if isinstance(v, float) else str(v)
    return f'"{s}"' if ("," in s or ";" in s) else s


def _plot_accuracy_vs_frequency(c: StatisticalComparison, path: Path) -> None:
    """Per recipe: mean over seeds of per-concept top-1 (held-out style), averaged in log2
    frequency bins, against the concept's training frequency."""
    freq = c.concepts["train_frequency"]
    n_classes = len(freq)
    bins = np.floor(np.log2(np.maximum(freq, 1))).astype(int)
    fig = figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, runs in c.final.items():
        per_class = []
        for o in runs:
            lab, cor = o.labels["eval"], o.per_image["eval"]
            counts = np.bincount(lab, minlength=n_classes)
            hits = np.bincount(lab, weights=cor, minlength=n_classes)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_class.append(np.where(counts > 0, hits / counts, np.nan))
        acc = np.nanmean(np.stack(per_class), axis=0)
        xs, ys = [], []
        for b in np.unique(bins):
            sel = (bins == b) & ~np.isnan(acc)
            if sel.any():
                xs.append(float(np.exp(np.log(freq[sel]).mean())))
                ys.append(float(acc[sel].mean()))
        ax.plot(xs, ys, marker="o", lw=1.2, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("concept frequency in the pool (log2 bins)")
    ax.set_ylabel("zero-shot top-1 (mean per class, mean over seeds)")
    ax.set_title("Accuracy against concept frequency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    save_png(fig, path)


def _plot_tail_vs_compute(c: StatisticalComparison, path: Path) -> None:
    """Per recipe: tail accuracy (mean ± sd over seeds) at every evaluated epoch against total FLOPs."""
    fig = figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, runs in c.curves.items():
        epochs = sorted({o.epoch for o in runs})
        x, y, e = [], [], []
        for ep in epochs:
            pts = [o for o in runs if o.epoch == ep]
            x.append(float(np.mean([o.compute for o in pts])))
            tails = [o.metrics.get("zero_shot/tail", float("nan")) for o in pts]
            y.append(float(np.nanmean(tails)))
            e.append(float(np.nanstd(tails, ddof=1)) if len(tails) > 1 else 0.0)
        ax.errorbar(x, y, yerr=e, marker="o", capsize=2, lw=1.2, label=name)
    ax.set_xlabel("compute (training + scoring FLOPs)")
    ax.set_ylabel("tail zero-shot accuracy")
    ax.set_title("Tail accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    save_png(fig, path)
