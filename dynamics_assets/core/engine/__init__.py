"""Where per-shard work runs: in this process (``local``) or as Ray tasks and actors (``ray``).

Two operations, both yielding results **in the order of their inputs** (shard order), so that the
caller writes exactly the files it would write in-process and ``engine: local`` and
``engine: ray`` give byte-identical artefacts:

``map_shards(fn, items)``
    stateless work on one item each (the manifest of one shard, the assignment of one shard's
    embeddings). Yields one ``Outcome`` per item: its value, or the error it raised (a Ray worker
    that died is that item's error too), so one bad shard never hides the others.
``map_actors(factory, method, items)``
    stateful work: ``factory()`` builds one worker object (e.g. loads an encoder) once per actor;
    ``getattr(worker, method)(item)`` runs per item. Locally one worker object serves all items.

Only ``fn``/``factory`` and items travel to Ray workers (pickled), so they must be module-level
functions or picklable objects; a Ray engine never decodes anything itself (the project's own
per-shard functions run inside the tasks, its quarantine stays in charge of bad samples).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Literal, Protocol, TypeVar

from dynamics_assets.core.engine.outcome import Outcome  # noqa: F401 (re-exported: the engines import it from outcome)

T = TypeVar("T")
R = TypeVar("R")

EngineName = Literal["local", "ray"]


class Engine(Protocol):
    name: str

    def map_shards(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[Outcome[R]]: ...

    def map_actors(self, factory: Callable[[], Any], method: str, items: Iterable[T]) -> Iterator[Outcome[R]]: ...


def local_engine() -> "Engine":
    from dynamics_assets.core.engine.local import LocalEngine

    return LocalEngine()


def resolve(engine: "Engine | None") -> "Engine":
    """``None`` is the in-process engine (today's behaviour)."""
    return local_engine() if engine is None else engine
