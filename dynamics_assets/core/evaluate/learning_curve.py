"""The learning curve: every recipe's headline metrics per epoch, against samples seen."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from dynamics_assets.core.io.atomic import atomic_path, write_json  # noqa: E402


def learning_curve_table(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (recipe, epoch), sorted; ``reports`` as from ``comparison.collect_reports``."""
    return sorted(reports, key=lambda r: (r["recipe"], r["epoch"]))


def plot_learning_curve(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 4), dpi=110)
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
    fig.tight_layout()
    png = out_dir / "learning_curve.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    js = out_dir / "learning_curve.json"
    write_json(js, rows)
    return {"png": png, "json": js}
