"""One item's result from an engine: its value or the error it raised (``Outcome``).

Its own module so that the engines (``local``, ``ray``) and the package that chooses among them
(``core.engine``) all import it from here, none from another: no import circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """The result of one item: ``value`` or ``error`` (the exception it raised)."""

    index: int
    value: R | None = None
    error: BaseException | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.error is None

    def get(self) -> R:
        """The value, or the item's error raised again."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]
