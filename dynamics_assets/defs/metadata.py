"""Small helpers that turn core results into Dagster metadata (plain Python numbers only) and
core ``Findings`` into asset-check results."""
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


def check_result(findings) -> dg.AssetCheckResult:
    """A core ``Findings`` as a check result: passed, a WARN (only warnings: nothing is blocked) or
    an ERROR (blocks downstream), with the counts, facts and first examples as metadata."""
    metadata: dict = dict(findings.facts)
    metadata |= {f"error/{k}": int(v) for k, v in findings.errors.items()}
    metadata |= {f"warning/{k}": int(v) for k, v in findings.warnings.items()}
    if findings.examples:
        metadata["examples"] = dg.MetadataValue.json(findings.examples)
    severity = dg.AssetCheckSeverity.ERROR if findings.errors else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(passed=findings.passed, severity=severity, metadata=metadata,
                               description=findings.summary())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")
