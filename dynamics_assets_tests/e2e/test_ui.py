"""The real Dagster UI, end to end, in Debian's headless Chromium driven by Playwright.

1. A fresh instance (``DAGSTER_HOME`` and ``DYNAMICS_DATA_DIR`` in tmp dirs, the project's
   dagster.yaml) gets the unpartitioned spine on a tiny pool: the ``curate_pool`` job, executed
   in process by a subprocess that has the instance's environment.
2. ``dagster dev -w workspace.yaml`` serves that instance on 127.0.0.1 and a free port, in its own
   process group, stopped as a group at the end (dagster dev ignores SIGTERM).
3. The browser checks that the lineage page shows every stage, then launches ONE partition of
   ``sample_plan`` from its asset page (Materialize → pick the partition → Launch 1 run) and waits
   until the run page says Success; the GraphQL API confirms the run, the partition's
   materialisation and its blocking plan check. A screenshot of the succeeded run goes to a tmp
   path, and to docs/ui-screenshot.png when ``UPDATE_SCREENSHOT=1``.
4. The daemon of that same ``dagster dev``: a shard dropped into the pool's folder is registered by
   ``raw_shard_sensor`` (ticking every 10 s here), ingested by an ``ingest_shard`` run and followed by
   a ``recurate_pool`` run, both succeeding.

Never downloads a browser: Playwright drives /usr/bin/chromium (``scripts/install_browser.sh``).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import dagster as dg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from dynamics_assets.defs.sample import assets as sampling
from dynamics_assets.defs.experiments import EXPERIMENTS
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LINEAGE = ("raw_shards", "raw_pairs", "reference_model", "pair_embeddings", "clusters", "cluster_stats",
           "sample_plan", "checkpoint", "eval_report")
EPOCH = "epoch-001"
UI_START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 240
LANDING_INTERVAL_S = 10  # the landing sensor's tick in this test (60 s by default)
SCREENSHOT = ROOT / "docs" / "ui-screenshot.png"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: run `bash scripts/install_browser.sh`"),
]

# Run by a subprocess with the test instance's environment: the spine, in process, into it.
SPINE_SCRIPT = """
import json, sys
import dagster as dg
from dynamics_assets.definitions import defs
job = defs.resolve_job_def("curate_pool")
result = job.execute_in_process(instance=dg.DagsterInstance.get(), run_config=json.loads(sys.argv[1]),
                                raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    """POST a query to the webserver's GraphQL API (no proxy: it is on loopback)."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
        answer = json.load(response)
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


def wait_until(probe: Callable[[], Any], timeout_s: float, what: str, log: Path | None = None,
               interval_s: float = 2.0) -> Any:
    """The first truthy value of ``probe()``; exceptions count as 'not yet'. On timeout the
    error quotes the end of ``log``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 — the server may not answer yet
            last_error = e
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s (last error: {last_error!r})"
                       + (f"\n--- {log}:\n{tail(log)}" if log else ""))


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process group: SIGINT (dagster dev shuts its children down on it; SIGTERM is
    ignored), then SIGKILL to whatever is left after ``timeout_s``."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout_s)


def partition_choice() -> dict[str, str]:
    """sample_plan's partition to launch, by dimension: epoch-001 (of the default recipe)."""
    if isinstance(sampling.sample_plan.partitions_def, dg.MultiPartitionsDefinition):
        return {"epoch": EPOCH, "recipe": EXPERIMENTS.default_keys[0]}
    return {"epoch": EPOCH}


def partition_key(choice: dict[str, str]) -> str:
    return str(dg.MultiPartitionKey(choice)) if len(choice) > 1 else choice["epoch"]


# ---------------------------------------------------------------------------------------------
# Fixtures: the instance with the spine, dagster dev over it, the browser
# ---------------------------------------------------------------------------------------------


def make_instance(tmp: Path) -> dict[str, str]:
    """A fresh DAGSTER_HOME (the project's dagster.yaml) and data root; the environment for them."""
    home, data = tmp / "dagster_home", tmp / "data"
    home.mkdir()
    data.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with open(home / "dagster.yaml", "a") as f:  # no "join the community" dialog over the pages
        f.write("\nnux:\n  enabled: false\n")
    return {**os.environ, "DAGSTER_HOME": str(home), "DYNAMICS_DATA_DIR": str(data), "DYNAMICS_DEVICE": "cpu",
            "DYNAMICS_LANDING_INTERVAL_S": str(LANDING_INTERVAL_S)}


def materialise_spine(env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", SPINE_SCRIPT, json.dumps(TINY_RUN_CONFIG)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]


def start_dagster_dev(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """``dagster dev`` over workspace.yaml, in a new session (its own process group)."""
    with open(log, "w") as out:
        return subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1",
                                 "-p", str(port), "-w", "workspace.yaml"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def serves_code_location(url: str) -> bool:
    query = '{ assetNodeOrError(assetKey: {path: ["sample_plan"]}) { __typename } }'
    return graphql(url, query)["assetNodeOrError"]["__typename"] == "AssetNode"


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[dict]:
    """dagster dev on a free port over a fresh instance that holds the tiny spine."""
    tmp = tmp_path_factory.mktemp("ui")
    env, timings = make_instance(tmp), {}
    started = time.monotonic()
    materialise_spine(env)
    timings["spine_s"] = time.monotonic() - started
    port, log = free_port(), tmp / "dagster_dev.log"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = start_dagster_dev(env, port, log)
    try:
        wait_until(lambda: serves_code_location(url), UI_START_TIMEOUT_S, "dagster dev serving the code location", log)
        timings["ui_start_s"] = time.monotonic() - started
        yield {"url": url, "log": log, "timings": timings, "data": Path(env["DYNAMICS_DATA_DIR"]), "tmp": tmp}
    finally:
        started = time.monotonic()
        stop_group(proc)
        timings["ui_stop_s"] = time.monotonic() - started
        print("\ne2e timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(60_000)
    yield page
    page.close()


# ---------------------------------------------------------------------------------------------
# The pages
# ---------------------------------------------------------------------------------------------


def open_lineage(page: Page, url: str) -> None:
    """sample_plan's lineage tab with its nearest neighbours: the whole pipeline."""
    page.goto(f"{url}/assets/sample_plan?view=lineage&lineageScope=neighbors&lineageDepth=10",
              wait_until="networkidle")
    for name in LINEAGE:
        page.locator("svg").get_by_text(name, exact=True).first.wait_for(state="visible")


def choose_partition(page: Page, choice: dict[str, str]) -> None:
    """In the launch dialog: type the epoch (a time-window dimension takes typed keys) and tick
    the recipe in its drop-down list (a static dimension)."""
    dialog = page.get_by_role("dialog").first
    epoch = dialog.get_by_placeholder(re.compile(r"^ex: "))
    epoch.fill(choice["epoch"])
    epoch.press("Enter")
    if "recipe" in choice:
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_placeholder("Filter partitions").fill(choice["recipe"])
        exact = page.get_by_text(choice["recipe"], exact=True)  # not semdedup-<recipe> too
        page.get_by_role("menuitem").filter(has=exact).first.click()
        dialog.get_by_text("Launch runs to materialize").click()  # closes the drop-down
    dialog.get_by_text("1 partition", exact=True).wait_for()


def runs(url: str, **runs_filter: Any) -> list[dict]:
    """Runs matching a GraphQL RunsFilter, e.g. ``runIds=[...]`` or ``tags=[{key, value}]``."""
    query = """query($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs {
        results { runId status jobName tags { key value } } } } }"""
    return graphql(url, query, {"filter": runs_filter})["runsOrError"]["results"]


def plan_evidence(url: str) -> tuple[list[dict], list[dict]]:
    """sample_plan's latest materialisations and its checks' latest executions."""
    query = """{ assetOrError(assetKey: {path: ["sample_plan"]}) { ... on Asset {
          assetMaterializations(limit: 5) { partition runId } } }
        assetNodeOrError(assetKey: {path: ["sample_plan"]}) { ... on AssetNode {
          assetChecksOrError { ... on AssetChecks { checks { name blocking
            executionForLatestMaterialization { status runId evaluation { success partition } } } } } } } }"""
    data = graphql(url, query)
    return (data["assetOrError"]["assetMaterializations"],
            data["assetNodeOrError"]["assetChecksOrError"]["checks"])


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_lineage_page_shows_every_stage(ui, page):
    open_lineage(page, ui["url"])
    groups = [g for g in ("ingest", "embed", "cluster", "sample", "train", "evaluate", "export")
              if page.locator("svg").get_by_text(g, exact=True).count()]
    assert len(groups) == 7, f"asset groups drawn: {groups}"


def test_materialize_one_partition_of_sample_plan_from_the_ui(ui, page, tmp_path):
    url, choice = ui["url"], partition_choice()
    expected_key = partition_key(choice)
    page.goto(f"{url}/assets/sample_plan", wait_until="networkidle")
    page.get_by_role("button", name="Materialize…").first.click()
    choose_partition(page, choice)
    started = time.monotonic()
    page.get_by_role("dialog").first.get_by_role("button", name="Launch 1 run").click()
    page.get_by_text(re.compile(r"^Launched run ")).wait_for()

    from_ui = [{"key": "dagster/from_ui", "value": "true"}]
    [run] = wait_until(lambda: runs(url, tags=from_ui), 60, "the launched run in the run list")
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/partition"] == expected_key

    def finished() -> dict | None:
        [current] = runs(url, runIds=[run["runId"]])
        return current if current["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    done = wait_until(finished, RUN_TIMEOUT_S, f"run {run['runId']} finishing", ui["log"])
    ui["timings"]["ui_run_s"] = time.monotonic() - started
    assert done["status"] == "SUCCESS", f"run {done['runId']}: {done['status']}\n{tail(ui['log'])}"

    page.goto(f"{url}/runs/{run['runId']}", wait_until="networkidle")
    page.get_by_text("Success", exact=True).first.wait_for()
    page.get_by_text("plan_is_valid", exact=False).first.wait_for()
    page.wait_for_timeout(2000)  # the event log finishes rendering
    shot = tmp_path / "ui-screenshot.png"
    page.screenshot(path=str(shot))
    print(f"\nscreenshot of the succeeded run: {shot}")
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT)

    materialisations, plan_checks = plan_evidence(url)
    assert {"partition": expected_key, "runId": run["runId"]} in materialisations
    [plan_check] = [c for c in plan_checks if c["name"] == "plan_is_valid"]
    execution = plan_check["executionForLatestMaterialization"]
    assert plan_check["blocking"] and execution["status"] == "SUCCEEDED" and execution["runId"] == run["runId"]
    assert execution["evaluation"] == {"success": True, "partition": expected_key}


def test_daemon_ingests_a_landed_shard_then_recurates(ui):
    """The real daemon: a shard landing in the pool's folder is registered by raw_shard_sensor,
    ingested by one ingest_shard run, followed by one recurate_pool run."""
    from dynamics_assets.core.ingest.synthetic import generate

    url = ui["url"]
    other = generate(ui["tmp"] / "other", pairs=480, seed=11, samples_per_shard=160, eval_per_concept=1)
    target = ui["data"] / "raw" / "shards" / "shard-00099.tar"
    partial = target.with_name(".shard-00099.tar")  # a writer's temporary name: ignored
    shutil.copy(other.shards[0], partial)
    os.replace(partial, target)
    started = time.monotonic()

    def succeeded(job: str) -> list[dict] | None:
        found = runs(url, pipelineName=job)
        bad = [r for r in found if r["status"] in ("FAILURE", "CANCELED")]
        assert not bad, f"{job} runs failed: {bad}\n{tail(ui['log'])}"
        return found if found and all(r["status"] == "SUCCESS" for r in found) else None

    [ingest] = wait_until(lambda: succeeded("ingest_shard"), 6 * RUN_TIMEOUT_S, "the landed shard ingested", ui["log"])
    assert {t["key"]: t["value"] for t in ingest["tags"]}["dagster/partition"] == target.name
    [recurate] = wait_until(lambda: succeeded("recurate_pool"), 3 * RUN_TIMEOUT_S, "the re-curation", ui["log"])
    assert {t["key"]: t["value"] for t in recurate["tags"]}["dynamics/trigger"] == "new_shards"
    ui["timings"]["landing_to_recuration_s"] = time.monotonic() - started
    # The redraw of the coming epochs that follows (replan_after_recuration) is tested against a
    # real instance in test_recuration.py; waiting for its runs here would add ~2 min on 2 cores.
