"""Pools that ship their embeddings (DataComp CommonPool and LAION / clip-retrieval layouts) run
through the Dagster lineage: manifest + embeddings, clusters, statistics, plans — without images."""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dynamics_assets_tests.fixtures.minipools import write_datacomp_pool, write_laion_pool
from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets.defs.export.assets import datacomp_subset, laion_metadata
from dynamics_assets.defs.sample.assets import sample_plan

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]


@pytest.mark.parametrize("layout", ["datacomp", "laion"])
def test_a_pool_of_embeddings_is_curated_and_planned(tmp_path, layout):
    pool = (write_datacomp_pool if layout == "datacomp" else write_laion_pool)(tmp_path / "pool")
    resources = {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    config = {"ops": {"raw_shards": {"config": {"source": f"{layout}:{tmp_path / 'pool'}"}},
                      "clusters": {"config": {"k": 4, "sample_size": 400}}}}
    with dg.instance_for_test() as instance:
        spine = dg.materialize(SPINE, resources=resources, run_config=config, instance=instance)
        assert spine.success
        pairs = spine.output_for_node("raw_pairs")
        assert not pairs.has_images and pairs.n_ok + sum(pairs.by_reason.values()) == pairs.n_total
        assert pairs.n_total == pool.total if hasattr(pool, "total") else True
        assert spine.output_for_node("reference_model").checkpoint is None, "nothing to train a model on"
        clusters = spine.output_for_node("clusters")
        assert clusters.n == pairs.n_ok and not clusters.has_images
        key = dg.MultiPartitionKey({"recipe": "dynamics-50.s0", "epoch": "epoch-001"})
        plan = dg.materialize([*SPINE, sample_plan, datacomp_subset, laion_metadata],
                              selection=[sample_plan, datacomp_subset, laion_metadata],
                              partition_key=key, resources=resources, instance=instance)
        assert plan.success
        assert plan.output_for_node("sample_plan").realised == round(0.5 * pairs.n_ok)
    # the metadata parquet of exactly the plan, which img2dataset downloads (LAION: the only usable export)
    import pyarrow.parquet as pq

    from dynamics_assets.core.sample import read_plan

    meta = plan.output_for_node("laion_metadata")
    drawn = read_plan(plan.output_for_node("sample_plan").plan_dir)
    table = pq.read_table(meta.metadata_path)
    assert table.num_rows == meta.rows == len(drawn.indices) and meta.samples == drawn.size
    assert table["sample_id"].to_pylist() == [pool.ok_ids[i] for i in drawn.indices.tolist()]
    assert meta.caption_col == ("text" if layout == "datacomp" else "caption") and meta.url_col == "url"
    assert f"--url_list {meta.metadata_path} --input_format parquet" in meta.command
    from dynamics_assets.core.export.datacomp import read_subset

    subset = read_subset(plan.output_for_node("datacomp_subset").subset_path)
    assert len(subset) == round(0.5 * pairs.n_ok) and subset.dtype == np.dtype("u8,u8")
    assert (np.diff(subset["f0"].astype(np.float64)) >= 0).all(), "sorted by the uid's high half first"


def test_shards_given_with_a_pool_of_embeddings_are_joined_by_uid(tmp_path):
    """Images for a DataComp pool: a shard holding two of its uids (and one stranger) is joined,
    and the uids without an image are reported in raw_pairs' metadata."""
    import io
    import json
    import tarfile

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    write_datacomp_pool(tmp_path / "pool")
    meta = sorted((tmp_path / "pool" / "metadata").glob("*.parquet"))[0]
    uids = pq.read_table(meta, columns=["uid"]).column("uid").to_pylist()[:2] + ["f" * 32]
    (tmp_path / "images").mkdir()
    with tarfile.open(tmp_path / "images" / "00000.tar", "w") as tar:
        for i, uid in enumerate(uids):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, "PNG")
            for ext, data in (("png", buf.getvalue()), ("txt", b"a caption"), ("json", json.dumps({"uid": uid}).encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    resources = {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu"), "compute": ComputeResource()}
    config = {"ops": {"raw_shards": {"config": {"source": f"datacomp:{tmp_path / 'pool'}",
                                                "images": str(tmp_path / "images")}}}}
    result = dg.materialize_to_memory([raw_data.raw_shards, raw_data.raw_pairs], resources=resources, run_config=config)
    meta = result.asset_materializations_for_node("raw_pairs")[0].metadata
    pairs = result.output_for_node("raw_pairs")
    from dynamics_assets.core.ingest.manifest import manifest_files

    ok_ids = {i for _, f in manifest_files(pairs.manifest_dir)
              for i, s in zip(*pq.read_table(f, columns=["sample_id", "status"]).to_pydict().values()) if s == "ok"}
    expected = len([u for u in uids[:2] if u in ok_ids])
    assert expected >= 1 and meta["uids_with_image"].value == expected
    assert meta["shard_samples_not_in_pool"].value == 1, "the stranger's uid is not in the pool"
    assert meta["uids_with_image"].value + meta["uids_without_image"].value == pairs.n_ok


def test_a_broken_clip_retrieval_pool_fails_raw_shards_naming_the_parts(tmp_path):
    """Given without a layout prefix, a LAION pool whose folders list different parts is not taken
    for some other source (nor quarantined part by part): raw_shards fails naming the parts."""
    pool = write_laion_pool(tmp_path / "pool", parts=3, rows_per_part=12)
    (pool.root / "text_emb" / "text_emb_1.npy").unlink()
    resources = {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu"), "compute": ComputeResource()}
    config = {"ops": {"raw_shards": {"config": {"source": str(pool.root)}}}}
    result = dg.materialize_to_memory([raw_data.raw_shards], resources=resources, run_config=config,
                                      raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.error)
    assert "must list the same parts: text_emb lacks part 1" in message, message


def test_the_main_command_plans_and_exports_the_metadata_parquet():
    """plan_epoch (what the main command runs per recipe × epoch for a pool without images) writes
    the subset file and the metadata parquet: a LAION pool's only usable export is in it."""
    from dynamics_assets.definitions import defs

    selected = defs.resolve_job_def("plan_epoch").asset_layer.selected_asset_keys
    assert {dg.AssetKey("sample_plan"), dg.AssetKey("datacomp_subset"), dg.AssetKey("laion_metadata")} <= selected


@pytest.mark.parametrize("layout", ["datacomp", "laion"])
def test_the_main_command_on_a_pool_of_embeddings_says_what_each_step_did_and_where_the_exports_are(
        tmp_path, layout):
    """Issue 18: for a pool that ships embeddings, the lines of raw_shards, reference_model and
    pair_embeddings were empty, the summary gave only the subset file, and k-means warned about
    sample_size=100000 on a pool of a few hundred rows."""
    import re

    from dynamics_assets_tests.test_cli import run_command

    pool = (write_datacomp_pool if layout == "datacomp" else write_laion_pool)(tmp_path / "pool")
    proc, _ = run_command(["--source", f"{layout}:{pool.root}", "--epochs", "1"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+)\s+[\d.]+ (?:s|min \d+ s)\s+(.*)$",
                                                           proc.stdout, re.MULTILINE)}
    name, parts = ("DataComp pool", 3) if layout == "datacomp" else ("LAION / clip-retrieval pool", 2)
    assert lines["raw_shards"] == f"{name}, {parts} parts"
    ok = int(re.search(r"([\d,]+) pairs kept", lines["raw_pairs"]).group(1).replace(",", ""))
    assert lines["reference_model"] == "not trained: the pool ships its embeddings " + \
        ("(b32)" if layout == "datacomp" else "(512-d)")
    assert lines["pair_embeddings"].startswith(f"{ok:,} embeddings shipped by the pool (")
    assert lines["laion_metadata"] == f"metadata {round(ok / 2):,} rows, {round(ok / 2):,} samples"
    summary = proc.stdout.split("\nDone in ", 1)[1]
    subset = re.search(r"^  subset:\s+(\S+subset\.npy) \(DataComp's resharder: --subset-file\)$", summary, re.M)
    metadata = re.search(r"^  metadata:\s+(\S+metadata\.parquet) ", summary, re.M)
    assert subset and metadata, summary
    assert Path(subset.group(1)).is_file() and Path(metadata.group(1)).is_file()
    assert re.search(rf"^  download it: img2dataset --url_list {re.escape(metadata.group(1))} --input_format parquet",
                     summary, re.M), summary
    assert "sample_size" not in proc.stderr, proc.stderr


def test_datacomp_baselines_and_dfn_run_on_a_pool_of_embeddings(tmp_path, monkeypatch):
    """Issue 21 item 4: DataComp's baselines and DFN on a pool that ships embeddings and scores,
    through the main command: basic filtering from the metadata's sizes, LAION-2B filtering on the
    shipped B/32 score (0.28 as is), dfn-30 on the shipped score standing in for a curated model;
    each planned and exported as a subset file. text_filter without class names says what it needs."""
    import re

    import pyarrow.parquet as pq

    from dynamics_assets_tests.test_cli import run_command

    pool = write_datacomp_pool(tmp_path / "pool")
    monkeypatch.setenv("DYNAMICS_EXPERIMENTS", str(Path(__file__).resolve().parents[3] / "data" / "comparison.yaml"))
    proc, _ = run_command(["--source", f"datacomp:{pool.root}", "--epochs", "1", "--recipes", "dfn-30",
                           "basic-filter", "laion2b-filter"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = re.findall(r"^  sample_plan\s+[\d.]+ s\s+plan ([\d,]+) pairs, [\d,]+ distinct, (\w+)$", proc.stdout, re.M)
    kept = {strategy: int(n.replace(",", "")) for n, strategy in plans}
    assert set(kept) == {"dfn", "basic_filter", "laion2b_filter"}, proc.stdout
    ok = int(re.search(r"([\d,]+) pairs kept", proc.stdout).group(1).replace(",", ""))
    assert kept["dfn"] == round(0.3 * ok)
    # LAION-2B filtering on the shipped score: exactly the rows at or above 0.28 that are English
    scores = np.concatenate([pq.read_table(p, columns=["clip_b32_similarity_score"]).column(0).to_numpy()
                             for p in sorted((pool.root / "metadata").glob("*.parquet"))])
    assert 0 < kept["laion2b_filter"] <= int((scores >= 0.28).sum())
    assert 0 < kept["basic_filter"] < ok
    assert len(re.findall(r"^  datacomp_subset\s", proc.stdout, re.M)) == 3
    proc, _ = run_command(["--source", f"datacomp:{pool.root}", "--epochs", "1", "--recipes", "text-filter"],
                          tmp_path, timeout=300)
    assert proc.returncode != 0 and "text_filter.classnames is not set and the lineage has none" in proc.stdout
