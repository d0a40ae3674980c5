"""The learning curve across epochs: headline metrics against samples seen and training FLOPs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from .atomic import atomic_path, write_json  # noqa: E402

HEADLINE = {"top1": "zero_shot/top1", "mean_per_class": "zero_shot/mean_per_class", "head": "zero_shot/head",
            "middle": "zero_shot/middle", "tail": "zero_shot/tail", "i2t_r1": "retrieval/i2t_r1",
            "samples_seen": "compute/samples_seen", "train_flops": "compute/train_flops",
            "device_seconds": "compute/device_seconds"}


def learning_curve_table(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch (sorted), from eval_report records ``{"epoch", "metrics"}``."""
    rows = []
    for r in sorted(reports, key=lambda r: r["epoch"]):
        rows.append({"epoch": r["epoch"], **{k: r["metrics"].get(v, float("nan")) for k, v in HEADLINE.items()}})
    return rows


def plot_learning_curve(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    x = [r["samples_seen"] for r in rows]
    for key, style in [("top1", "-o"), ("head", "--^"), ("middle", "--s"), ("tail", "--v")]:
        ax.plot(x, [r[key] for r in rows], style, label=key)
    ax.set_xlabel("samples seen")
    ax.set_ylabel("zero-shot accuracy (mean per class for buckets)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = out_dir / "learning_curve.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    js = out_dir / "learning_curve.json"
    write_json(js, json.loads(json.dumps(rows, default=float)))
    return {"png": png, "json": js}
