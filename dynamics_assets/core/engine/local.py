"""The in-process engine: items one after the other, in order (``engine: local``)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, TypeVar

from dynamics_assets.core.engine.outcome import Outcome

T = TypeVar("T")
R = TypeVar("R")


class LocalEngine:
    name = "local"

    def map_shards(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[Outcome[R]]:
        for i, item in enumerate(items):
            try:
                yield Outcome(i, fn(item))
            except Exception as err:  # the item's error, reported in its place
                yield Outcome(i, error=err)

    def map_actors(self, factory: Callable[[], Any], method: str, items: Iterable[T]) -> Iterator[Outcome[R]]:
        worker = None
        for i, item in enumerate(items):
            try:
                worker = factory() if worker is None else worker  # built on first use, once
                yield Outcome(i, getattr(worker, method)(item))
            except Exception as err:
                yield Outcome(i, error=err)

    def __repr__(self) -> str:
        return "LocalEngine()"
