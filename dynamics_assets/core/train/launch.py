"""Run one epoch under torchrun (DDP: one process per GPU, gloo on CPU) from any caller.

The job travels as JSON (``EpochJob.from_json``); global rank 0 writes the metrics file the caller
reads, and the checkpoint (so ``job.out_checkpoint`` must be storage every node reaches).

``launch(job, topology)`` is the one entry: it picks the launcher from the ``Topology`` (several
nodes: ``run_multinode_ray``; one node, several processes: ``run_under_torchrun``; one process:
``epoch.run_epoch`` in this process).

One node: ``run_under_torchrun`` starts ``torchrun --standalone --nproc-per-node=P``.

Several nodes: one torchrun launcher per node, all meeting at a c10d rendezvous (``Rendezvous``:
the endpoint ``host:port`` on one of the nodes, a run id shared by the launchers):

    torchrun --nnodes=M --nproc-per-node=P --node-rank=r --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:PORT --rdzv-id=RUN -m dynamics_assets.core.train.epoch job.json metrics.json

(``node_command``). ``run_multinode_local`` starts the M launchers as local subprocesses (the
nodes are stand-ins on one machine: tests, a single big host); ``run_multinode_ray`` starts each
as a Ray task pinned to its own node (``NodeAffinitySchedulingStrategy``, hard), which is how a
Dagster step reaches the nodes of a Ray cluster. c10d assigns the global ranks (rank r of the run
trains plan share r whichever node it lands on, so the weights do not depend on the assignment);
``backend="static"`` uses ``--master-addr/--master-port`` and the node ranks as given instead.
When one launcher fails, the others are stopped (no rank waits for a peer that is gone).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from dynamics_assets.core.train.epoch import run_epoch
from dynamics_assets.core.train.job import EpochJob

ENTRY = ["-m", "dynamics_assets.core.train.epoch"]
DEFAULT_RDZV_PORT = 29400  # torchrun's default c10d port


class LaunchError(RuntimeError):
    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass(frozen=True)
class Rendezvous:
    """Where the launchers of one run meet: ``endpoint`` ``host:port`` (on one of the nodes, reachable
    from all), ``run_id`` (the same for every launcher of the run, new for every run)."""

    endpoint: str
    run_id: str
    backend: str = "c10d"  # or 'static': ranks from --node-rank, the store on the endpoint
    join_timeout_s: int = 300

    def __post_init__(self) -> None:
        host, _, port = self.endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"rendezvous endpoint must be host:port, got {self.endpoint!r}")
        if self.backend not in ("c10d", "static"):
            raise ValueError(f"rendezvous backend must be 'c10d' or 'static', got {self.backend!r}")


def new_rendezvous(endpoint: str, backend: str = "c10d") -> Rendezvous:
    return Rendezvous(endpoint, f"dynamics-{uuid.uuid4().hex[:12]}", backend)


def node_command(job_path: str | os.PathLike, metrics_path: str | os.PathLike, *, nproc_per_node: int,
                 nnodes: int = 1, node_rank: int = 0, rendezvous: Rendezvous | None = None,
                 is_host: bool | None = None, python: str = sys.executable) -> list[str]:
    """The torchrun command of one node (``--standalone`` for one node without a rendezvous).
    ``is_host``: whether this node serves the c10d store at the endpoint (None: torchrun decides by
    comparing the endpoint's host with this machine's names, which fails where they differ, e.g.
    behind NAT or with several interfaces)."""
    if nproc_per_node < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"need nproc_per_node >= 1, nnodes >= 1, 0 <= node_rank < nnodes "
                         f"(got {nproc_per_node}, {nnodes}, {node_rank})")
    run = [python, "-m", "torch.distributed.run"]
    if nnodes == 1 and rendezvous is None:
        run += ["--standalone", f"--nproc-per-node={nproc_per_node}"]
    else:
        if rendezvous is None:
            raise ValueError(f"{nnodes} nodes need a rendezvous endpoint")
        run += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}", f"--node-rank={node_rank}"]
        if rendezvous.backend == "static":
            host, _, port = rendezvous.endpoint.rpartition(":")
            run += [f"--master-addr={host}", f"--master-port={port}", f"--rdzv-id={rendezvous.run_id}"]
        else:
            conf = f"join_timeout={rendezvous.join_timeout_s}" + ("" if is_host is None else f",is_host={int(is_host)}")
            run += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rendezvous.endpoint}", f"--rdzv-id={rendezvous.run_id}",
                    f"--rdzv-conf={conf}"]
        run += ["--max-restarts=0"]
    return run + ENTRY + [str(job_path), str(metrics_path)]


def run_under_torchrun(job: EpochJob, nproc: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        job_path, metrics_path = Path(tmp) / "job.json", Path(tmp) / "metrics.json"
        job_path.write_text(json.dumps(asdict(job)))
        cmd = node_command(job_path, metrics_path, nproc_per_node=nproc)
        log("launching: " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LaunchError(f"torchrun exited with {proc.returncode}", proc.stderr[-4000:])
        return json.loads(metrics_path.read_text())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_multinode_local(job: EpochJob, nnodes: int, nproc_per_node: int, *, rendezvous: Rendezvous | None = None,
                        log: Callable[[str], None] = print, timeout_s: float | None = None,
                        env: dict[str, str] | None = None) -> dict[str, Any]:
    """The epoch on ``nnodes`` stand-in nodes on this machine: one torchrun launcher subprocess per
    node at a c10d rendezvous on 127.0.0.1 (a free port unless ``rendezvous`` is given); returns
    global rank 0's metrics."""
    rendezvous = rendezvous or new_rendezvous(f"127.0.0.1:{free_port()}")
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(asdict(job)))
        procs, metrics_paths, logs = [], [], []
        try:
            for r in range(nnodes):
                metrics_paths.append(Path(tmp) / f"metrics-{r}.json")
                cmd = node_command(job_path, metrics_paths[-1], nproc_per_node=nproc_per_node, nnodes=nnodes,
                                   node_rank=r, rendezvous=rendezvous)
                log(f"node {r}: " + " ".join(cmd))
                logs.append(open(Path(tmp) / f"node-{r}.log", "w+"))
                procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True,
                                              env=None if env is None else {**os.environ, **env}))
            codes = _wait_all(procs, timeout_s)
        finally:
            _stop(procs)
            texts = []
            for f in logs:
                f.seek(0)
                texts.append(f.read())
                f.close()
        if any(codes):
            failed = [r for r, c in enumerate(codes) if c]
            raise LaunchError(f"node launcher(s) {failed} failed with exit codes {[codes[r] for r in failed]}",
                              "\n".join(f"--- node {r} ---\n{texts[r][-3000:]}" for r in failed))
        return _rank0_metrics([p.read_text() if p.exists() else None for p in metrics_paths],
                              "\n".join(t[-2000:] for t in texts))


def _wait_all(procs: Sequence[subprocess.Popen], timeout_s: float | None) -> list[int]:
    """Every launcher's exit code; the first failure (or the timeout) stops the others."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes  # type: ignore[return-value]
        if any(c not in (None, 0) for c in codes):
            _stop(procs)
            return [p.wait() for p in procs]
        if deadline is not None and time.monotonic() > deadline:  # a launcher stopped here has failed
            running = [c is None for c in codes]
            _stop(procs)
            return [124 if was and p.returncode == 0 else p.returncode for p, was in zip(procs, running)]
        time.sleep(0.2)


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM each running launcher's process group (torchrun forwards it to its workers), then SIGKILL."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in running:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _rank0_metrics(found: Sequence[str | None], logs: str) -> dict[str, Any]:
    written = [m for m in found if m is not None]
    if len(written) != 1:
        raise LaunchError(f"expected global rank 0's metrics from exactly one node, got {len(written)}", logs)
    return json.loads(written[0])


# ------------------------------------------------------------------------------------------ Ray


def _node_launcher(job_json: str, cmd_args: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """Body of the Ray task on one node: run its torchrun launcher; return its exit code, the tail
    of its output and the metrics if global rank 0 ran here. The launcher dies with this task
    (PR_SET_PDEATHSIG), so a cancelled task leaves no process behind."""
    import ctypes

    def die_with_parent() -> None:
        os.setsid()
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    with tempfile.TemporaryDirectory() as tmp:
        job_path, metrics_path = Path(tmp) / "job.json", Path(tmp) / "metrics.json"
        job_path.write_text(job_json)
        cmd = node_command(job_path, metrics_path, **cmd_args)
        with open(Path(tmp) / "node.log", "w+") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
            codes = _wait_all([proc], timeout_s)
            out.seek(0)
            text = out.read()
        return {"node": socket.gethostname(), "returncode": codes[0], "log": text[-4000:], "command": cmd,
                "metrics": metrics_path.read_text() if metrics_path.exists() else None}


def ray_nodes(nnodes: int, *, allow_shared: bool = False, need_gpus: float = 0) -> list[dict[str, Any]]:
    """``nnodes`` alive Ray nodes (with ``need_gpus`` GPUs each), sorted by address then id; with
    ``allow_shared``, fewer nodes are reused round robin (a one-machine Ray for tests)."""
    import ray

    nodes = sorted((n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) >= need_gpus),
                   key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))
    if not nodes:
        raise LaunchError("no alive Ray node" + (f" with {need_gpus} GPUs" if need_gpus else ""), "")
    if len(nodes) < nnodes and not allow_shared:
        raise LaunchError(f"{nnodes} nodes asked for, the Ray cluster has {len(nodes)} suitable", "")
    return [nodes[i % len(nodes)] for i in range(nnodes)]


def run_multinode_ray(job: EpochJob, nnodes: int, nproc_per_node: int, *, address: str | None = None,
                      rdzv_endpoint: str | None = None, rdzv_port: int = DEFAULT_RDZV_PORT,
                      backend: str = "c10d", allow_shared_nodes: bool = False, timeout_s: float | None = None,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """The epoch on ``nnodes`` nodes of a Ray cluster: one Ray task per node, pinned to it (hard
    node affinity), each running that node's torchrun launcher; the rendezvous endpoint is
    ``rdzv_endpoint`` or the first node's address at ``rdzv_port`` (then that node serves the c10d
store). Connects to ``address`` (or
    RAY_ADDRESS, or starts a private local Ray on 127.0.0.1) unless Ray is already initialised. Each
    task asks Ray for
    ``nproc_per_node`` GPUs on a CUDA job, one CPU otherwise. Returns global rank 0's metrics."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = not ray.is_initialized()
    if started:
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:  # no cluster named: a private Ray on this machine, listening on loopback only
            from dynamics_assets.core.engine.ray import start_local_ray

            start_local_ray(log_to_driver=False, configure_logging=False)
    try:
        gpus = nproc_per_node if job.device.startswith("cuda") else 0
        nodes = ray_nodes(nnodes, allow_shared=allow_shared_nodes, need_gpus=gpus)
        endpoint = rdzv_endpoint or f"{nodes[0]['NodeManagerAddress']}:{rdzv_port}"  # node 0 serves it
        rendezvous = new_rendezvous(endpoint, backend)
        task = ray.remote(_node_launcher)
        refs = []
        for r, node in enumerate(nodes):
            args = {"nproc_per_node": nproc_per_node, "nnodes": nnodes, "node_rank": r, "rendezvous": rendezvous,
                    "is_host": None if rdzv_endpoint else r == 0}
            log(f"node {r} ({node['NodeManagerAddress']}): torchrun --nnodes={nnodes} --nproc-per-node={nproc_per_node} "
                f"--rdzv-backend={backend} --rdzv-endpoint={endpoint} --rdzv-id={rendezvous.run_id}")
            pinned = task.options(num_cpus=0 if gpus else 1, num_gpus=gpus, max_retries=0,
                                  scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            refs.append(pinned.remote(json.dumps(asdict(job)), args, timeout_s))
        results = _gather(ray, refs)
    finally:
        if started:
            ray.shutdown()
    failed = [r for r, res in enumerate(results) if res is None or res["returncode"] != 0]
    if failed:
        raise LaunchError(f"node launcher(s) {failed} failed",
                          "\n".join(f"--- node {r} ---\n" + ("(cancelled)" if results[r] is None else results[r]["log"][-3000:])
                                    for r in failed))
    return _rank0_metrics([res["metrics"] for res in results], "\n".join(res["log"][-2000:] for res in results))


def _gather(ray, refs: list) -> list[dict[str, Any] | None]:
    """Every task's result; after the first failed launcher, the others are cancelled (None)."""
    results: dict[Any, dict[str, Any] | None] = {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        result = ray.get(ready[0])
        results[ready[0]] = result
        if result["returncode"] != 0:
            for ref in pending:
                ray.cancel(ref, force=True)
                results[ref] = None
            break
    return [results[ref] for ref in refs]


# ------------------------------------------------------------------------------------ the launcher


@dataclass(frozen=True)
class Topology:
    """Where an epoch trains: ``num_nodes`` machines × ``num_processes`` processes each (one per
    GPU); with several nodes, the Ray cluster at ``ray_address`` (empty: RAY_ADDRESS or a private
    local Ray) and the c10d rendezvous at ``rdzv_endpoint`` (empty: node 0's address)."""

    num_nodes: int = 1
    num_processes: int = 1
    ray_address: str | None = None
    rdzv_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.num_processes < 1:
            raise ValueError(f"topology: need num_nodes ≥ 1 and num_processes ≥ 1 "
                             f"(got {self.num_nodes}, {self.num_processes})")

    @property
    def launcher(self) -> str:
        """'ray' (several nodes), 'torchrun' (one node, several processes) or 'inline' (one process)."""
        return "ray" if self.num_nodes > 1 else "torchrun" if self.num_processes > 1 else "inline"


def launch(job: EpochJob, topology: Topology = Topology(), *,
           on_step: Callable[[int, dict[str, float]], None] | None = None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``job``'s epoch on ``topology`` and return global rank 0's metrics: several nodes → one
    torchrun launcher per node as Ray tasks (``run_multinode_ray``); one node, several processes →
    ``torchrun --standalone`` (``run_under_torchrun``); one process → ``run_epoch`` here, with
    ``on_step`` called after each step (the launched processes report through their metrics file).
    A launcher that fails raises ``LaunchError`` (with its stderr); the inline epoch raises its own."""
    if topology.launcher == "ray":
        return run_multinode_ray(job, topology.num_nodes, topology.num_processes, address=topology.ray_address or None,
                                 rdzv_endpoint=topology.rdzv_endpoint or None, log=log)
    if topology.launcher == "torchrun":
        return run_under_torchrun(job, topology.num_processes, log)
    return run_epoch(job, on_step=on_step)
