"""Probes over a run's inputs: each gives the main command (or raw_shards, as a run launched from
the Dagster UI does) one bad input and asserts that it is refused before any work, with a message
naming the input and the fault; the outcome records the measured time to the refusal.

Before these checks each of these inputs failed only after curation or training (a wrong eval set
at eval_report, a wrong recipe or epoch after curate_pool), and an eval set with an empty class or
a single class ran to the end with a NaN tail."""
from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from dynamics_assets.defs.ingest.assets import raw_shards
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets_tests.test_cli import eval_folder, run_command

REFUSAL_SECONDS = 30  # a refusal comes within seconds (interpreter start-up and imports included)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def refused(tmp_path: Path, args: list[str], *expected: str) -> str:
    """Run the command with ``args``; assert exit 2, each expected text in its message, no run
    started and the time. The outcome for the table (temporary paths shortened to …)."""
    proc, seconds = run_command(args, tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(("refused before any work: ", "python -m dynamics_assets.pipeline: error: ")))
    message = " ".join(line.strip() for line in lines[start:])
    for text in expected:
        assert text in message, message
    assert "curate_pool" not in proc.stdout and not (tmp_path / "data").exists()
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["dagster.yaml"]
    assert seconds < REFUSAL_SECONDS, seconds
    message = message.removeprefix("refused before any work: ").removeprefix("python -m dynamics_assets.pipeline: error: ")
    return f"refused in {seconds:.1f} s, exit 2, no run started: {message.replace(str(tmp_path), '…')}"


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    return folder


def test_missing_eval_set(tmp_path, source, record):
    """--eval names a folder that does not exist"""
    record(refused(tmp_path, ["--source", str(source), "--eval", str(tmp_path / "no-such-set")],
                   f"--eval: eval set {tmp_path / 'no-such-set'} does not exist"))


def test_clip_benchmark_set_without_classnames(tmp_path, source, record):
    """--eval: a clip_benchmark webdataset folder without classnames.txt"""
    root = tmp_path / "wds_set"
    _tar(root / "test" / "0.tar", [("k0.png", _png()), ("k0.cls", b"0"), ("k1.png", _png()), ("k1.cls", b"1")])
    record(refused(tmp_path, ["--source", str(source), "--eval", str(root)],
                   f"--eval: eval set {root}: classnames.txt is missing — a clip_benchmark webdataset folder"))


def test_image_folder_with_a_file_that_is_not_an_image(tmp_path, source, record):
    """--eval: an ImageFolder with a .jpg that is an HTML error page"""
    root = eval_folder(tmp_path / "set")
    (root / "dog" / "broken.jpg").write_text("<html>403 Forbidden</html>")
    record(refused(tmp_path, ["--source", str(source), "--eval", str(root)],
                   f"--eval: eval set {root}: 1 image(s) whose header does not decode:",
                   f"{root / 'dog' / 'broken.jpg'}: not an image PIL can read"))


def test_clip_benchmark_sample_that_is_not_an_image(tmp_path, source, record):
    """--eval: a clip_benchmark shard whose sample's .jpg is not an image"""
    root = tmp_path / "wds_set"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("cat\ndog\n")
    _tar(root / "test" / "0.tar", [("k0.png", _png()), ("k0.cls", b"0"), ("k1.jpg", b"caption text"), ("k1.cls", b"1")])
    record(refused(tmp_path, ["--source", str(source), "--eval", str(root)],
                   f"--eval: eval set {root}: 1 problem(s) in its shards:",
                   f"{root / 'test' / '0.tar'}: sample k1.jpg: not an image PIL can read"))


def test_image_folder_with_an_empty_class(tmp_path, source, record):
    """--eval: an ImageFolder with an empty class folder (ran before, tail accuracy NaN)"""
    root = eval_folder(tmp_path / "set")
    (root / "zebra").mkdir()
    record(refused(tmp_path, ["--source", str(source), "--eval", str(root)],
                   f"--eval: eval set {root}: 1 empty class(es) (its accuracy would be undefined: NaN in the report):",
                   f"class folder {root / 'zebra'} holds no image"))


def test_image_folder_with_a_single_class(tmp_path, source, record):
    """--eval: an ImageFolder with a single class (ran before, every answer right)"""
    root = eval_folder(tmp_path / "set", classes=("cat",))
    record(refused(tmp_path, ["--source", str(source), "--eval", str(root)],
                   f"--eval: eval set {root}: one class folder ('cat'); an ImageFolder needs one folder per class "
                   "and at least two classes"))


def test_unknown_recipe(tmp_path, record):
    """--recipe names no recipe of data/experiments.yaml (a typo: dynamics-5O)"""
    outcome = refused(tmp_path, ["--recipe", "dynamics-5O"], "--recipes 'dynamics-5O': unknown recipe;")
    record(outcome.split(": ['")[0] + ": […]")


@pytest.mark.parametrize("value", ["-1", "abc", "0"])
def test_bad_epochs(tmp_path, record, value):
    """--epochs is not a number of epochs ≥ 1 nor an epoch key"""
    record(refused(tmp_path, ["--epochs", value], f"argument --epochs: '{value}'"))


def test_missing_source_folder(tmp_path, record):
    """--source names a local folder that does not exist"""
    record(refused(tmp_path, ["--source", str(tmp_path / "no-such-pool")],
                   f"--source: the folder {tmp_path / 'no-such-pool'} does not exist"))


def test_raw_shards_from_the_ui_refuses_a_bad_eval_set_first(tmp_path, record):
    """raw_shards launched from the Dagster UI with an eval set holding an empty class"""
    root = eval_folder(tmp_path / "set")
    (root / "zebra").mkdir()
    data = tmp_path / "data"
    resources = {"storage": StorageResource(root=str(data)), "gpu": GpuResource(device="cpu"), "compute": ComputeResource()}
    config = {"ops": {"raw_shards": {"config": {"eval": str(root), "pairs": 480, "samples_per_shard": 160,
                                                "eval_per_concept": 1}}}}
    started = time.perf_counter()
    with dg.instance_for_test() as instance:
        result = dg.materialize([raw_shards], resources=resources, run_config=config, instance=instance,
                                raise_on_error=False)
    seconds = time.perf_counter() - started
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.error)
    assert f"EvalSetError: eval set {root}: 1 empty class(es)" in message, message
    assert f"class folder {root / 'zebra'} holds no image" in message
    assert not (data / "raw").exists()  # the synthetic pool was not generated: refused before any work
    assert seconds < REFUSAL_SECONDS
    record(f"step failed in {seconds:.1f} s before generating or reading any shard: EvalSetError: eval set …/set: "
           "1 empty class(es) … class folder …/set/zebra holds no image")
