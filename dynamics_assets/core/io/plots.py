"""The one plot helper: a headless matplotlib figure, saved as a PNG atomically and reproducibly
(no software/date stamp), and the cluster-size plot of a plan. Every plot of the project goes
through ``figure`` and ``save_png``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dynamics_assets.core.io.atomic import atomic_path


def figure(width: float, height: float, dpi: int = 110):
    """A matplotlib ``Figure`` bound to the Agg canvas (no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """Lay out and write ``fig`` to ``path`` atomically; the same figure gives the same bytes."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def plot_cluster_scaling(sizes: np.ndarray, realised: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Clusters ranked by size (log-log): samples in the pool vs samples drawn by the plan."""
    order = np.argsort(-np.asarray(sizes), kind="stable")
    rank = np.arange(1, len(order) + 1)
    fig = figure(6, 3.6)
    ax = fig.add_subplot()
    ax.loglog(rank, np.maximum(np.asarray(sizes)[order], 0.8), label="pool (cluster size)")
    ax.loglog(rank, np.maximum(np.asarray(realised)[order], 0.8), label="plan (draws)")
    ax.set_xlabel("cluster rank by size")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_png(fig, path)
