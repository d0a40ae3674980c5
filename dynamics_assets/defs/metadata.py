"""Small helpers that turn core results into Dagster metadata (plain Python numbers only)."""
from __future__ import annotations

from typing import Iterable, Sequence

import dagster as dg


def md_table(header: Sequence[str], rows: Iterable[Sequence], *, max_rows: int = 40) -> dg.MarkdownMetadataValue:
    rows = list(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows[:max_rows]:
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    if len(rows) > max_rows:
        lines.append(f"| … {len(rows) - max_rows} more rows |" + " |" * (len(header) - 1))
    return dg.MetadataValue.md("\n".join(lines))


def md_image(path, alt: str) -> dg.MarkdownMetadataValue:
    """A PNG inlined as a data URI, so the UI shows the plot itself (plots here are ~20–60 kB)."""
    import base64
    from pathlib import Path

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")
