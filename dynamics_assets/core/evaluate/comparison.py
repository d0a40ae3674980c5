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


def write_comparison(c: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Commit the comparison (PNG, Markdown, JSON) as a new version of the artefact root
    ``out_dir``; returns the files inside the committed version."""
    with versions.Artefact(out_dir).write() as staging:
        _write_comparison(c, staging.path)
    return {name: staging.version_dir / f"comparison.{ext}" for name, ext in (("png", "png"), ("md", "md"), ("json", "json"))}


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
