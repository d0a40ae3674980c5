"""The learning curve: every recipe's headline metrics per epoch, against samples seen."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import write_json
from dynamics_assets.core.io.plots import figure, save_png


def learning_curve_table(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (recipe, epoch), sorted; ``reports`` as from ``comparison.collect_reports``."""
    return sorted(reports, key=lambda r: (r["recipe"], r["epoch"]))


def plot_learning_curve(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Commit the curves (PNG + JSON) as a new version of the artefact root ``out_dir``; returns
    the files inside the committed version."""
    with versions.Artefact(out_dir).write() as staging:
        _write_learning_curve(rows, staging.path)
    return {"png": staging.version_dir / "learning_curve.png", "json": staging.version_dir / "learning_curve.json"}


def _write_learning_curve(rows: list[dict[str, Any]], out_dir: Path) -> None:
    fig = figure(11, 4)
    recipes = sorted({r["recipe"] for r in rows})
    for i, metric in enumerate(("top1", "tail")):
        ax = fig.add_subplot(1, 2, i + 1)
        for recipe in recipes:
            pts = [r for r in rows if r["recipe"] == recipe]
            ax.plot([p["samples_seen"] for p in pts], [p[metric] for p in pts], "-o", ms=3, label=recipe)
        ax.set_xlabel("samples seen")
        ax.set_title("overall top-1" if metric == "top1" else "tail (mean per class)")
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("zero-shot accuracy")
    fig.axes[-1].legend(fontsize=6, loc="best", ncol=2)
    save_png(fig, out_dir / "learning_curve.png")
    write_json(out_dir / "learning_curve.json", rows)
