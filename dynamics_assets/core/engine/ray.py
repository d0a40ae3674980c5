"""The Ray engine (``engine: ray``): per-shard tasks and an actor pool on a local or remote Ray.

``RayEngine(address=None, num_cpus=N)`` starts a private local Ray sized by ``num_cpus`` on first
use and shuts it down on ``close``: ``start_local_ray`` — always a new instance (``RAY_ADDRESS``
and a ``ray start`` cluster on the machine are not joined), its node address, GCS, raylet, object
manager and workers bound to 127.0.0.1 only, no dashboard, the driver's logging kept quiet; it
refuses to run if Ray came up on another address. ``address="ray://host:10001"`` (or ``"auto"``)
connects to a running cluster instead, which ``close`` only disconnects from (securing that
cluster is its operator's part: docs/deployment.md). The address may carry credentials: it is never logged or put in
an error message by this module (``repr`` hides it).

Results come back in input order (``core.engine``): tasks are submitted in a bounded window
(``max_in_flight``, default twice the cluster's CPUs) and collected by index, so the driver writes
the same files in the same order as the local engine. A task's exception is that item's error; a
worker or actor that dies (``WorkerCrashedError``, ``RayActorError``) is retried ``max_retries``
times by Ray, then becomes that item's error — never a hang, never another item's.

Imports ``ray`` lazily: the code location and the local engine load without it.
"""
from __future__ import annotations

import ipaddress
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

from dynamics_assets.core.engine import Outcome

T = TypeVar("T")
R = TypeVar("R")


LOOPBACK = "127.0.0.1"
# Ray's switch for single-machine Ray (meant for macOS and Windows): with it off, Ray takes the
# loopback address as the node's address instead of the host's routable one, and its gRPC servers
# then bind to loopback. Read from the environment when ``ray`` is imported, so it is also set on
# the imported module for the time of ``ray.init``; the processes Ray starts inherit the variable.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_local_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start a new private Ray on this machine, reachable from this machine only: node address
    127.0.0.1, GCS, raylet, object manager and workers listening on loopback, no dashboard. Ray
    has no authentication to rely on here, so nothing may listen on another interface; if Ray
    comes up on a non-loopback address anyway, it is shut down and ``RuntimeError`` is raised."""
    import ray
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    kwargs.update(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False)
    try:
        ray.init(**kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = saved_env
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise RuntimeError(f"the private local Ray came up on address {node_ip}, not on loopback: refused "
                           f"(it has no authentication); use a secured cluster by address instead")


def _call(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


class _Host:
    """One actor: builds its worker once (e.g. loads a model), then serves items."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.worker = factory()

    def call(self, method: str, item: Any) -> Any:
        return getattr(self.worker, method)(item)


def _unwrap(err: BaseException) -> BaseException:
    """The user's exception inside a ``RayTaskError`` (its traceback text kept in the message)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_task: float = 1,
                 cpus_per_actor: float = 1, num_gpus_per_actor: float = 0, num_actors: int | None = None,
                 max_in_flight: int | None = None, max_retries: int = 1,
                 runtime_env: dict[str, Any] | None = None) -> None:
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
        if num_actors is not None and num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        self._address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.cpus_per_actor = cpus_per_actor
        self.num_gpus_per_actor = num_gpus_per_actor
        self.num_actors = num_actors
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.runtime_env = runtime_env
        self._started = False  # this engine called ray.init (and so owns the shutdown)

    def __repr__(self) -> str:  # never the address: it may hold credentials
        where = "remote" if self._address else f"local, num_cpus={self.num_cpus}"
        return f"RayEngine({where})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = dict(logging_level="WARNING", log_to_driver=False, configure_logging=True)
        if self.runtime_env is not None:
            kwargs["runtime_env"] = self.runtime_env
        try:
            if self._address:
                ray.init(address=self._address, include_dashboard=False, **kwargs)
            else:
                start_local_ray(self.num_cpus, **kwargs)
        except Exception as err:  # the address (it may hold credentials) is not repeated in the error
            if self._address:
                raise RuntimeError("could not reach the Ray cluster at the configured address: "
                                   f"{type(err).__name__}") from None
            raise RuntimeError(f"could not start a local Ray: {type(err).__name__}: {err}") from err
        self._started = True

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def __enter__(self) -> "RayEngine":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _cluster_cpus(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    # ------------------------------------------------------------------ work

    def map_shards(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[Outcome[R]]:
        import ray

        self.start()
        remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=self.max_retries)(_call)
        fn_ref = ray.put(fn)
        window = self.max_in_flight or 2 * self._cluster_cpus()
        pending: deque = deque()
        for i, item in enumerate(items):
            pending.append((i, remote.remote(fn_ref, item)))
            if len(pending) >= window:
                yield self._collect(*pending.popleft())
        while pending:
            yield self._collect(*pending.popleft())

    @staticmethod
    def _collect(index: int, ref: Any) -> Outcome:
        import ray

        try:
            return Outcome(index, ray.get(ref))
        except Exception as err:  # RayTaskError (the task raised), WorkerCrashedError, RayActorError, ...
            return Outcome(index, error=_unwrap(err))

    def map_actors(self, factory: Callable[[], Any], method: str, items: Iterable[T]) -> Iterator[Outcome[R]]:
        """Items go to whichever actor is free (one task per actor at a time); results are yielded in
        input order, at most ``2 × actors`` items ahead of the one the caller waits for."""
        import ray

        self.start()
        todo = list(items)
        if not todo:
            return
        n = self.num_actors or max(1, int(self._cluster_cpus() // max(self.cpus_per_actor, 1e-9)))
        n = min(n, len(todo))
        host = ray.remote(num_cpus=self.cpus_per_actor, num_gpus=self.num_gpus_per_actor,
                          max_restarts=self.max_retries, max_task_retries=self.max_retries)(_Host)
        factory_ref = ray.put(factory)
        actors = [host.remote(factory_ref) for _ in range(n)]
        free = deque(actors)
        running: dict[Any, tuple[int, Any]] = {}  # ref -> (index, actor)
        done: dict[int, Outcome] = {}
        next_submit = next_yield = 0
        try:
            while next_yield < len(todo):
                while free and next_submit < len(todo) and next_submit - next_yield < 2 * n:
                    actor = free.popleft()
                    running[actor.call.remote(method, todo[next_submit])] = (next_submit, actor)
                    next_submit += 1
                if next_yield in done:
                    yield done.pop(next_yield)
                    next_yield += 1
                    continue
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    index, actor = running.pop(ref)
                    done[index] = self._collect(index, ref)
                    free.append(actor)
        finally:
            for actor in actors:
                ray.kill(actor)
