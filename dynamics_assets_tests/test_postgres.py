"""The Postgres instance (deploy/dagster.postgres.yaml) on a real, throwaway PostgreSQL server, and
the run queue's rules (one `gpu` slot, one run per partition key) through a real daemon.

The server comes from Debian's binaries (`initdb` + `pg_ctl`; scripts/install_postgres.sh installs
them, scripts/test.sh calls it): a fresh cluster in a temporary folder, password auth over TCP on
127.0.0.1, stopped and removed at teardown. Missing binaries FAIL the test (never a silent skip).

This module is also the code location the daemon loads (`defs` below): a few trivial assets that
sleep and write their (start, end) times, so the test reads what really ran at the same time.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_YAML = ROOT / "deploy" / "dagster.postgres.yaml"
OUT_ENV = "DYNAMICS_PGTEST_OUT"  # where the assets below write their (start, end) records
GPU_SECONDS = 1.5
PART_SECONDS = 2.0
POOL_RUNS = 2


# --- the tiny code location the daemon runs -------------------------------------------------------

def _record(kind: str, context, start: float, end: float) -> None:
    out = Path(os.environ[OUT_ENV])
    rec = {"kind": kind, "run_id": context.run_id, "start": start, "end": end,
           "partition": context.partition_key if context.has_partition_key else None}
    (out / f"{kind}-{context.run_id}.json").write_text(json.dumps(rec))


@dg.asset
def rendezvous(context) -> None:
    """Waits until every pool_job run has reached this step: proves the runs are in progress
    together (otherwise the no-overlap check of `gpu_step` below would prove nothing)."""
    out = Path(os.environ[OUT_ENV])
    start = time.time()
    (out / f"arrived-{context.run_id}").touch()
    while len(list(out.glob("arrived-*"))) < POOL_RUNS:
        if time.time() - start > 90:
            raise dg.Failure("the other pool_job run never came: runs were not concurrent")
        time.sleep(0.1)
    _record("rendezvous", context, start, time.time())


@dg.asset(deps=[rendezvous], pool="gpu")
def gpu_step(context) -> None:
    start = time.time()
    time.sleep(GPU_SECONDS)
    _record("gpu", context, start, time.time())


PARTS = dg.StaticPartitionsDefinition(["p1", "p2"])


@dg.asset(partitions_def=PARTS)
def part_step(context) -> None:
    start = time.time()
    time.sleep(PART_SECONDS)
    _record("part", context, start, time.time())


defs = dg.Definitions(
    assets=[rendezvous, gpu_step, part_step],
    jobs=[
        dg.define_asset_job("pool_job", selection=[rendezvous, gpu_step]),
        dg.define_asset_job("part_job", selection=[part_step]),
    ],
    executor=dg.in_process_executor,  # one process per run: cheap on a 2-core machine
)


# --- a throwaway PostgreSQL server ------------------------------------------------------------

def _pg_bindir() -> Path:
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "pg_ctl").exists():
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: run "
                "`bash scripts/install_postgres.sh` (Debian's `postgresql` package); "
                "scripts/test.sh does it before pytest", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_server():
    """A fresh cluster: superuser `dagster` with a random password (scram over TCP), yields
    connection parameters; `pg_ctl stop` (or SIGKILL of the postmaster) and removal at teardown."""
    bindir = _pg_bindir()
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="dynamics-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as Debian's `postgres` user
        import pwd
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and no `postgres` user to run PostgreSQL as "
                        "(`bash scripts/install_postgres.sh` creates it)", pytrace=False)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
        owner = (pw.pw_uid, pw.pw_gid)
    else:
        owner = None
    password = secrets.token_hex(12)
    sock, pwfile, data, log = base / "sock", base / "pwfile", base / "data", base / "server.log"
    sock.mkdir()
    pwfile.write_text(password + "\n")
    if owner:
        for p in (sock, pwfile):
            os.chown(p, *owner)
    port = _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            tail = log.read_text()[-3000:] if log.exists() else ""
            pytest.fail(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}\n"
                        f"{proc.stderr}\n{tail}", pytrace=False)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "dagster", "--pwfile", str(pwfile),
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8",
            "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-k {sock} -p {port} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off", "start")
        yield {"host": "127.0.0.1", "port": port, "user": "dagster", "password": password}
    finally:
        stop = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m",
                               "immediate", "-w", "-t", "30", "stop"], capture_output=True)
        pidfile = data / "postmaster.pid"
        if stop.returncode != 0 and pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_home(postgres_server, tmp_path, monkeypatch):
    """A fresh database and a DAGSTER_HOME holding deploy/dagster.postgres.yaml as-is, with the
    DAGSTER_PG_* variables it reads set; the records folder of the assets above."""
    import psycopg2

    db = f"dagster_{secrets.token_hex(4)}"
    conn = psycopg2.connect(dbname="postgres", **postgres_server)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    conn.close()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PG_YAML, home / "dagster.yaml")
    out = tmp_path / "records"
    out.mkdir()
    env = {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": postgres_server["host"],
           "DAGSTER_PG_PORT": str(postgres_server["port"]), "DAGSTER_PG_USER": "dagster",
           "DAGSTER_PG_PASSWORD": postgres_server["password"], "DAGSTER_PG_DB": db,
           OUT_ENV: str(out)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {"home": home, "out": out, "db": db, "server": postgres_server}


def _sql(pg_home, query: str, *params):
    import psycopg2

    conn = psycopg2.connect(dbname=pg_home["db"], **pg_home["server"])
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


# --- the tests --------------------------------------------------------------------------------

def test_postgres_instance_stores_runs_and_events(pg_home, record):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password"):  # the env password matters
        psycopg2.connect(dbname=pg_home["db"], **{**pg_home["server"], "password": "wrong"})

    @dg.asset(partitions_def=PARTS)
    def hello() -> int:
        return 1

    with dg.DagsterInstance.get() as instance:  # from $DAGSTER_HOME/dagster.yaml
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        result = dg.materialize([hello], partition_key="p2", instance=instance)
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("hello"))
        assert event is not None and event.run_id == result.run_id
        assert event.asset_materialization.partition == "p2"

    # Read back from Postgres itself, not through Dagster's storage classes.
    assert _sql(pg_home, "SELECT status FROM runs WHERE run_id = %s", result.run_id) == [("SUCCESS",)]
    (n_events,), = _sql(pg_home, "SELECT count(*) FROM event_logs WHERE run_id = %s", result.run_id)
    assert n_events > 5
    (n_mat,), = _sql(pg_home, "SELECT count(*) FROM event_logs WHERE run_id = %s AND "
                              "dagster_event_type = 'ASSET_MATERIALIZATION'", result.run_id)
    assert n_mat == 1
    record("runs and event logs stored in a real PostgreSQL, read back with SQL; a wrong password refused")


def _submit(instance, workspace_file: Path, jobs_and_tags):
    """Queues runs the way `dagster job launch` does (instance.submit_run -> QueuedRunCoordinator),
    all from one code server. Private CLI helpers of the pinned dagster 1.13.27."""
    from dagster import __version__
    from dagster._cli.job import _create_run
    from dagster._cli.workspace.cli_target import (
        WorkspaceOpts,
        get_code_location_from_workspace,
        get_remote_job_from_remote_repo,
        get_remote_repository_from_code_location,
        get_workspace_from_cli_opts,
    )

    run_ids = []
    with get_workspace_from_cli_opts(instance, __version__,
                                     WorkspaceOpts(workspace=[str(workspace_file)])) as workspace:
        location = get_code_location_from_workspace(workspace, "pgtest")
        repo = get_remote_repository_from_code_location(location, None)
        for job_name, tags in jobs_and_tags:
            run = _create_run(instance=instance, code_location=location, remote_repo=repo,
                              remote_job=get_remote_job_from_remote_repo(repo, job_name),
                              run_config={}, tags=tags, op_selection=None, run_id=None)
            submitted = instance.submit_run(run.run_id, workspace)
            assert submitted.status == dg.DagsterRunStatus.QUEUED
            run_ids.append(run.run_id)
    return run_ids


@contextlib.contextmanager
def _daemon(cwd: Path, workspace_file: Path):
    """`dagster-daemon run` in its own process group (its code server and run workers too);
    the whole group is terminated, then killed, on exit."""
    log = cwd / "daemon.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run",
                                 "-w", str(workspace_file)], cwd=cwd, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group
            os.killpg(proc.pid, signal.SIGKILL)


def _no_overlap(intervals) -> bool:
    intervals = sorted(intervals)
    return all(a_end <= b_start for (_, a_end), (b_start, _) in zip(intervals, intervals[1:]))


def test_run_queue_serialises_gpu_pool_and_same_partition(pg_home, record):
    """Five runs queued at once, then one real daemon dequeues them (max 4 in progress):
    two pool_job runs meet at `rendezvous` (so they are in progress together) and their
    `gpu_step`s take turns on the 1-slot `gpu` pool; part_job p1 twice and p2 once: the second p1
    run stays queued until the first has finished, while p2 is launched at once."""
    home, out = pg_home["home"], pg_home["out"]
    with open(home / "dagster.yaml", "a") as f:  # test speed only: the queue is polled every 1 s
        f.write("\nrun_queue:\n  dequeue_interval_seconds: 1\n")
    workspace_file = home / "workspace.yaml"
    workspace_file.write_text(
        "load_from:\n  - python_file:\n"
        f"      relative_path: {Path(__file__).resolve()}\n      attribute: defs\n"
        f"      location_name: pgtest\n      working_directory: {ROOT}\n")
    t0 = time.time()
    with dg.DagsterInstance.get() as instance:
        # The deployment step of docs/deployment.md (`dagster instance concurrency set gpu 1`):
        # without it, two runs reaching their first `gpu` step together on a fresh Postgres
        # instance may both insert the pool's default-limit row and one run crashes
        # (UniqueViolation, then InFailedSqlTransaction: dagster-io/dagster#33552, seen here).
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        pool_a, pool_b, p1_a, p1_b, p2 = _submit(instance, workspace_file, [
            ("pool_job", {}), ("pool_job", {}),
            ("part_job", {"dagster/partition": "p1"}), ("part_job", {"dagster/partition": "p1"}),
            ("part_job", {"dagster/partition": "p2"}),
        ])
        ids = [pool_a, pool_b, p1_a, p1_b, p2]
        with _daemon(home, workspace_file) as log:
            deadline = time.time() + 150
            while True:
                records = {r.dagster_run.run_id: r for r in
                           instance.get_run_records(dg.RunsFilter(run_ids=ids))}
                if all(r.dagster_run.is_finished for r in records.values()):
                    break
                if time.time() > deadline:
                    status = {k[:8]: r.dagster_run.status.value for k, r in records.items()}
                    pytest.fail(f"runs not finished after 150 s: {status}\n"
                                f"{log.read_text(errors='replace')[-4000:]}")
                time.sleep(0.5)
        failed = {k: r for k, r in records.items()
                  if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS}
        why = [f"{k[:8]} {e.dagster_event.event_type_value}: {e.message}\n"
               f"{e.dagster_event.event_specific_data.error if e.dagster_event.is_failure else ''}"
               for k in failed for e in instance.all_logs(k)
               if e.dagster_event and (e.dagster_event.is_failure or e.dagster_event.is_run_failure)]
        assert not failed, "\n".join(why) + log.read_text(errors="replace")[-3000:]
    elapsed = time.time() - t0

    recs = [json.loads(p.read_text()) for p in out.glob("*.json")]
    by = lambda kind: {r["run_id"]: (r["start"], r["end"]) for r in recs if r["kind"] == kind}
    rendezvous_iv, gpu_iv, part_iv = by("rendezvous"), by("gpu"), by("part")
    assert set(gpu_iv) == {pool_a, pool_b} and set(part_iv) == {p1_a, p1_b, p2}
    # the two pool_job runs were in progress together (each waited at rendezvous for the other) ...
    (a_start, a_end), (b_start, b_end) = rendezvous_iv[pool_a], rendezvous_iv[pool_b]
    assert a_start < b_end and b_start < a_end
    # ... yet their gpu steps never overlapped: the `gpu` pool has one slot
    assert _no_overlap(gpu_iv.values()), gpu_iv
    # same partition: the second p1 run started only after the first one had ended
    first, second = sorted([records[p1_a], records[p1_b]], key=lambda r: r.start_time)
    assert second.start_time >= first.end_time, (first.start_time, first.end_time,
                                                  second.start_time)
    assert _no_overlap([part_iv[p1_a], part_iv[p1_b]]), part_iv
    # another partition is not held back until p1's runs are done: p2 (queued after both p1 runs)
    # started before the second p1 run ended (the dequeue order between p2 and that run depends on
    # when the first p1 run ends, so only this much is certain)
    assert records[p2].start_time < second.end_time
    record("two runs in flight, their gpu steps never overlapped; the second run of one partition queued "
           "until the first ended; another partition not held back")
    print(f"run queue test: {elapsed:.1f} s; gpu {sorted(gpu_iv.values())}; "
          f"p1 runs {[(first.start_time, first.end_time), (second.start_time, second.end_time)]}")
