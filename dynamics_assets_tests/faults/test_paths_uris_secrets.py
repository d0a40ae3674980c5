"""Probes over paths, URIs and secrets: a data root whose path holds an apostrophe, spaces and
non-ASCII letters; ``file:`` URIs parsed as URLs; credentials in a source URI kept out of the
event log, the instance's files and the data root; the redaction of a password holding ``@``;
the private local Ray listening on loopback only."""
from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import ipaddress
import os
import re
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from dynamics_assets.core.ingest.sources import SourceError, local_path, redact, resolve_source, scrub
from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

ODD_DIR = "it's a ünïcode dir"


# ---------------------------------------------------------------------------------------------
# a data root with an apostrophe, spaces and non-ASCII letters: the whole lineage
# ---------------------------------------------------------------------------------------------


def test_data_root_with_apostrophe_spaces_and_non_ascii_runs_the_whole_lineage(tmp_path, monkeypatch, record):
    """A data root named "it's a ünïcode dir" (DYNAMICS_DATA_DIR), the whole lineage on a tiny pool"""
    from dynamics_assets.defs.cluster import assets as clustering, checks as cluster_checks
    from dynamics_assets.defs.embed import assets as embedding, checks as embed_checks
    from dynamics_assets.defs.evaluate import assets as evaluation, checks as evaluate_checks
    from dynamics_assets.defs.export import assets as export
    from dynamics_assets.defs.ingest import assets as ingest
    from dynamics_assets.defs.jobs import jobs
    from dynamics_assets.defs.resources import default_resources
    from dynamics_assets.defs.sample import assets as sampling, checks as sample_checks
    from dynamics_assets.defs.train import assets as training, checks as train_checks

    root = tmp_path / ODD_DIR / "data"
    monkeypatch.setenv("DYNAMICS_DATA_DIR", str(root))
    monkeypatch.setenv("DYNAMICS_DEVICE", "cpu")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the code location as the main command builds it, its resources read from the environment now
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([ingest, embedding, clustering, sampling, export, training, evaluation]),
        asset_checks=dg.load_asset_checks_from_modules([embed_checks, cluster_checks, sample_checks,
                                                        train_checks, evaluate_checks]),
        resources=default_resources(), jobs=jobs)
    home = tmp_path / ODD_DIR / "dagster home"
    home.mkdir(parents=True)
    key = dg.MultiPartitionKey({"recipe": "dynamics-50.s0", "epoch": "epoch-001"})
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        curate = defs.resolve_job_def("curate_pool").execute_in_process(
            run_config=TINY_RUN_CONFIG, instance=instance, raise_on_error=False)
        assert curate.success, _failures(curate)
        epoch = defs.resolve_job_def("train_epoch").execute_in_process(
            run_config={"ops": {"checkpoint": {"config": {"batch_size": 32, "checkpoint_every_steps": 2}}}},
            partition_key=key, instance=instance, raise_on_error=False)
        assert epoch.success, _failures(epoch)
        report = defs.resolve_job_def("report_recipes").execute_in_process(instance=instance, raise_on_error=False)
        assert report.success, _failures(report)
        stats = curate.output_for_node("cluster_stats")
        checks = [e for r in (curate, epoch, report) for e in r.get_asset_check_evaluations()]
    assert Path(stats.stats_path).is_relative_to(root) and ODD_DIR in stats.stats_path
    import pyarrow.parquet as pq

    words = [w for w in pq.read_table(stats.stats_path).column("top_words").to_pylist() if w]
    assert words, "the top caption words were computed (the manifest joined in DuckDB)"
    assert checks and all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    steps = sorted({e.step_key for r in (curate, epoch, report) for e in r.all_events
                    if e.event_type_value == "STEP_SUCCESS"})
    record(f"every step of curate_pool, train_epoch and report_recipes succeeds ({len(steps)} steps, "
           f"{len(checks)} checks passed); paths and values reach DuckDB as parameters")


def _failures(result) -> str:
    return "; ".join(f"{e.step_key}: {e.step_failure_data.error.message.strip()[:400]}"
                     for e in result.all_events if e.event_type_value == "STEP_FAILURE")


# ---------------------------------------------------------------------------------------------
# file: URIs parsed by a URL parser
# ---------------------------------------------------------------------------------------------


def test_file_uri_is_percent_decoded(tmp_path, record):
    """A file:/// URI with %20 for a space in the folder name"""
    folder = tmp_path / "with space"
    folder.mkdir()
    uri = f"file://{(tmp_path / 'with%20space').as_posix()}"
    assert local_path(uri) == folder.resolve()
    assert resolve_source(uri, tmp_path / "cache") == folder.resolve()
    record("read as the folder 'with space' (percent-decoded)")


def test_file_localhost_uri_is_absolute(tmp_path, monkeypatch, record):
    """file://localhost/<absolute path>, from a working directory holding a same-named relative folder"""
    target = tmp_path / "pool"
    target.mkdir()
    cwd = tmp_path / "cwd"
    (cwd / "localhost" / target.relative_to("/")).mkdir(parents=True)  # where a relative reading would land
    monkeypatch.chdir(cwd)
    uri = f"file://localhost{target.as_posix()}"
    assert local_path(uri) == target.resolve()
    assert resolve_source(uri, tmp_path / "cache") == target.resolve()
    record(f"read as {target.name}'s absolute path, not relative to the working directory")


@pytest.mark.parametrize("uri, message", [
    ("file://fileserver/share/pool", r"file://fileserver/share/pool: file:// URI names host 'fileserver'; only this "
                                     r"machine's files can be read"),
    ("file://data/pool", r"file://data/pool: file:// URI names host 'data'"),
    ("file://alice:Sekr3t-Zq9@localhost/pool", r"file://localhost/pool: a file:// URI carries no user or password"),
    ("file:///pool?version=2", r"a file:// URI with a query or fragment"),
], ids=["other host", "relative-looking host", "credentials", "query"])
def test_file_uri_that_is_not_a_local_path_is_refused(uri, message, tmp_path, record):
    """A file:// URI naming another host, credentials or a query"""
    with pytest.raises(ValueError, match=message) as err:
        resolve_source(uri, tmp_path / "cache")
    assert "Sekr3t" not in str(err.value)
    record(f"refused: ValueError '{str(err.value)[:70]}…'")


# ---------------------------------------------------------------------------------------------
# redaction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, shown, secret", [
    ("https://user:p@ss-word@host.example/pool", "https://host.example/pool", "p@ss-word"),
    ("s3://AKIAEXAMPLE:ab/cd+ss-word@bucket/pool/", "s3://bucket/pool/", "ab/cd+ss-word"),
    ("https://host.example/pool/?X-Amz-Signature=ss-word#frag", "https://host.example/pool/", "ss-word"),
], ids=["@ in the password", "/ in the password", "signed URL"])
def test_redact_splits_the_userinfo_at_the_last_at(uri, shown, secret, record):
    """A source URI whose password holds '@' or '/' (or a signed query string), redacted"""
    assert redact(uri) == shown
    scrubbed = scrub(f"cannot list {uri}: 403 (credentials {secret!r})", uri)
    assert "ss-word" not in scrubbed and shown in scrubbed
    record(f"redacted to {shown}; the secret scrubbed from an error text")


# ---------------------------------------------------------------------------------------------
# credentials in a source URI never reach logs, event records, instance files or the data root
# ---------------------------------------------------------------------------------------------

USER, PASSWORD = "alice", "Sekr3t@pw-Zq9"  # the '@' travels percent-encoded in the URI
QUOTED = PASSWORD.replace("@", "%40")
NEEDLES = [PASSWORD, QUOTED, "pw-Zq9", base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    """A web server that lists and serves a folder to one user (HTTP basic authentication)."""

    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authorised: list[bool] = []

    def _allowed(self) -> bool:
        ok = self.headers.get("Authorization") == self.expected
        self.authorised.append(ok)
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="pool"')
            self.end_headers()
        return ok

    def do_GET(self):
        if self._allowed():
            super().do_GET()

    def do_HEAD(self):
        if self._allowed():
            super().do_HEAD()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web_pool(tmp_path_factory):
    """A tiny synthetic pool served over HTTP on 127.0.0.1 with basic authentication."""
    ds = generate(tmp_path_factory.mktemp("web") / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=4)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_AuthHandler, directory=str(ds.out_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{USER}:{QUOTED}@127.0.0.1:{server.server_address[1]}", ds
    server.shutdown()
    server.server_close()


def _hits(home: Path, root: Path, instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Where any form of the password shows: event log records, files of the instance, data root."""
    found = []
    for entry in instance.all_logs(run_id):
        text = repr(entry) + (entry.user_message or "")
        found += [f"event {entry.dagster_event_type or 'log'}: {n}" for n in NEEDLES if n in text]
    for folder in (home, root):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{path}: {n}" for n in NEEDLES if n.encode() in data]
    return found


@contextlib.contextmanager
def _raw_shards_run(tmp_path, monkeypatch, source: str):
    """raw_shards materialised through Dagster in a temporary instance, its source given as a user
    passes a secret (an environment variable named in the run config); yields the result, the
    password's hits and the data root."""
    from dynamics_assets.defs.ingest import assets as ingest
    from dynamics_assets.defs.resources import StorageResource

    monkeypatch.setenv("DYNAMICS_TEST_POOL_URI", source)
    home, root = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize([ingest.raw_shards], instance=instance, raise_on_error=False,
                                resources={"storage": StorageResource(root=str(root))},
                                run_config={"ops": {"raw_shards": {"config": {"source": {"env": "DYNAMICS_TEST_POOL_URI"}}}}})
        yield result, _hits(home, root, instance, result.run_id)


def test_source_credentials_stay_out_of_records_when_the_run_fails(web_pool, tmp_path, monkeypatch, record):
    """An http:// source with user:password (from an environment variable) whose folder is missing"""
    base, _ = web_pool
    _AuthHandler.authorised.clear()
    with _raw_shards_run(tmp_path, monkeypatch, f"{base}/no-such-folder/?token=pw-Zq9") as (result, hits):
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.step_failure_data.error.message
    assert "raw_shards source 'http://127.0.0.1:" in message and "/no-such-folder/'" in message, message
    assert _AuthHandler.authorised and all(_AuthHandler.authorised), "the server was asked with the credentials"
    assert hits == [], hits
    record("fails naming http://127.0.0.1:PORT/no-such-folder/; 0 hits of the password in the event log, "
           "the instance's files and the data root")


def test_source_credentials_stay_out_of_records_when_the_run_succeeds(web_pool, tmp_path, monkeypatch, record):
    """An http:// source with user:password (from an environment variable), staged"""
    base, ds = web_pool
    _AuthHandler.authorised.clear()
    with _raw_shards_run(tmp_path, monkeypatch, f"{base}/shards/") as (result, hits):
        assert result.success
        shards = result.output_for_node("raw_shards")
    staged = Path(shards.shards_dir)
    assert sorted(shards.shards) == sorted(Path(s).name for s in ds.shards)
    assert all((staged / s).read_bytes() == (ds.out_dir / "shards" / s).read_bytes() for s in shards.shards)
    assert (staged / "SOURCE").read_text().startswith("http://127.0.0.1:") and shards.source.startswith("http://127.0.0.1:")
    assert _AuthHandler.authorised and all(_AuthHandler.authorised), "the server was asked with the credentials"
    assert hits == [], hits
    record(f"{len(shards.shards)} shards staged with the credentials; SOURCE and the record hold the redacted URI; "
           f"0 hits of the password in the event log, the instance's files and the data root")


@pytest.mark.parametrize("case", ["missing folder", "wrong password"])
def test_source_error_message_is_scrubbed(web_pool, tmp_path, case, record):
    """A remote source that cannot be listed, called through the core (no Dagster)"""
    base, _ = web_pool
    uri = f"{base}/missing/" if case == "missing folder" else base.replace("Zq9@", "Zq8@") + "/shards/"
    with pytest.raises(SourceError) as err:
        resolve_source(uri, tmp_path / "cache")
    text = str(err.value)
    assert not [n for n in [*NEEDLES, "pw-Zq8"] if n in text] and "source http://127.0.0.1:" in text, text
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
    shown = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    record(f"SourceError '{shown[:90]}…': the URI redacted, no library error chained")


# ---------------------------------------------------------------------------------------------
# the private local Ray listens on loopback only
# ---------------------------------------------------------------------------------------------


def _descendants(root_pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    v6 = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(v6.ipv4_mapped or v6)


def listening_sockets(pids: set[int]) -> set[tuple[str, str, int]]:
    """``(process name, address, port)`` of every listening TCP socket (v4 and v6) of ``pids``,
    from /proc (each process's socket inodes, matched in /proc/net/tcp and tcp6)."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[int(link[8:-1])] = pid
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and inode in owner:  # 0A: LISTEN
                host, port = local.split(":")
                try:
                    name = Path(f"/proc/{owner[inode]}/comm").read_text().strip()
                except OSError:
                    name = "?"
                found.add((name, _address(host), int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")
def test_private_local_ray_listens_on_loopback_only(tmp_path, record):
    """The private local Ray (engine: ray, no address) during a manifest step: its listening sockets"""
    pytest.importorskip("ray")
    import ray

    from dynamics_assets.core.engine.ray import RayEngine
    from dynamics_assets.core.ingest.manifest import build_manifest

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    ds = generate(tmp_path / "raw", pairs=360, samples_per_shard=90, eval_per_concept=1, seed=6)
    seen: set[tuple[str, str, int]] = set()
    commands: set[str] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            pids = _descendants(os.getpid())
            seen.update(listening_sockets(pids))
            for pid in pids:
                with contextlib.suppress(OSError):
                    commands.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(0.1)

    engine = RayEngine(num_cpus=2)
    try:
        engine.start()
        node = ray.util.get_node_ip_address()
        nodes = [n["NodeManagerAddress"] for n in ray.nodes()]
        gcs = ray.get_runtime_context().gcs_address
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        summary = build_manifest(ds.shards, tmp_path / "manifest", engine=engine)
        stop.set()
        watcher.join()
    finally:
        stop.set()
        engine.close()
    assert summary.total == 360 and len(summary.read_shards) == 4
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, f"Ray's servers were seen listening: {sorted(names)}"
    wide = sorted(s for s in seen if not ipaddress.ip_address(s[1]).is_loopback)
    assert wide == [], f"listening beyond loopback: {wide}"
    assert ipaddress.ip_address(node).is_loopback and all(ipaddress.ip_address(n).is_loopback for n in nodes)
    assert gcs.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]", "::1"), gcs
    # include_dashboard=False: Ray still starts its API server, without the dashboard (no frontend,
    # only the usage-stats module), on 127.0.0.1
    heads = [c for c in commands if "dashboard/dashboard.py" in c]
    assert all("--disable-frontend" in c and "--host=127.0.0.1" in c for c in heads), heads
    record(f"every listening socket of Ray's processes during the step (gcs_server, raylet, workers, agents) on "
           f"{'127.0.0.1' if all(a == '127.0.0.1' for _, a, _ in seen) else 'loopback'}; node and GCS address "
           f"{node}; no dashboard frontend")
