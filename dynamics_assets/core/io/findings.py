"""What a validation found: counts of errors and warnings by kind, with the first offending examples.

The pure half of every asset check: each stage's ``validate`` module returns ``Findings``; the
Dagster layer only turns them into an ``AssetCheckResult`` (``defs/metadata.check_result``).
"""
from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Any, Iterable, Iterator

import numpy as np

MAX_EXAMPLES = 5  # offending examples kept per kind of finding


class Findings:
    """What a check found: counts of errors and warnings by kind, the first offending examples
    of each kind, and plain facts about what was checked (all become check metadata)."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.facts: dict[str, Any] = {}

    def error(self, kind: str, count: int = 1, examples: Iterable[str] = ()) -> None:
        self._add(self.errors, kind, count, examples)

    def warn(self, kind: str, count: int = 1, examples: Iterable[str] = ()) -> None:
        self._add(self.warnings, kind, count, examples)

    def require(self, ok: bool, kind: str, example: str) -> None:
        if not ok:
            self.error(kind, 1, [example])

    def _add(self, counter: Counter, kind: str, count: int, examples: Iterable[str]) -> None:
        if count <= 0:
            return
        counter[kind] += int(count)
        kept = self.examples.setdefault(kind, [])
        kept.extend(islice(examples, MAX_EXAMPLES - len(kept)))

    @property
    def passed(self) -> bool:
        return not self.errors and not self.warnings

    def summary(self) -> str:
        if self.passed:
            return "all invariants hold"
        parts = [f"{n} {kind}" for kind, n in (self.errors + self.warnings).most_common()]
        return ("FAILED: " if self.errors else "WARNING: ") + ", ".join(parts)


def flagged(mask: np.ndarray, label: str, start: int = 0) -> Iterator[str]:
    """``"<label> row i"`` for the first rows flagged by ``mask`` (``start`` = first row's index)."""
    return (f"{label} row {int(i) + start}" for i in np.flatnonzero(mask)[:MAX_EXAMPLES])

