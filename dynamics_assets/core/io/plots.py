"""Small plots for the UI: the cluster-size distribution before and after a plan's scaling."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from dynamics_assets.core.io.atomic import atomic_path  # noqa: E402


def plot_cluster_scaling(sizes: np.ndarray, realised: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Clusters ranked by size (log-log): samples in the pool vs samples drawn by the plan."""
    order = np.argsort(-np.asarray(sizes), kind="stable")
    rank = np.arange(1, len(order) + 1)
    fig = Figure(figsize=(6, 3.6), dpi=110)
    ax = fig.add_subplot()
    ax.loglog(rank, np.maximum(np.asarray(sizes)[order], 0.8), label="pool (cluster size)")
    ax.loglog(rank, np.maximum(np.asarray(realised)[order], 0.8), label="plan (draws)")
    ax.set_xlabel("cluster rank by size")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
