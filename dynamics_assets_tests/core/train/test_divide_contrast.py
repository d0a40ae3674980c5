"""Divide and Contrast: base (epoch 1), K experts on super-clusters (epoch 2), distilled student (epoch 3)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch

from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets.core.model.clip import read_checkpoint
from dynamics_assets.core.sample import ClusterPool, UniformSampler, write_plan
from dynamics_assets.core.train.divide_contrast import EXPERT_NAME, SUPER_CLUSTERS_NAME, distillation_loss, super_clusters
from dynamics_assets.core.train.epoch import EpochJob, checkpoint_file, run_epoch
from dynamics_assets.core.train.settings import TrainSettings

K = 3


@pytest.fixture(scope="module")
def dnc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dnc")
    ds = generate(tmp / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=7)
    summary = build_manifest(ds.shards, tmp / "manifest")
    ids = np.zeros(summary.ok, dtype=np.int32)
    plans = {e: write_plan(tmp / f"plan-{e}", UniformSampler(1.0).draw(ClusterPool.from_array(ids, 1), epoch=e, seed=0),
                           pool_version="test-pool")
             for e in (1, 2, 3)}

    def job(epoch, name="dnc", **kw):
        previous = str(tmp / name / f"epoch-{epoch - 1}") if epoch > 1 else None
        return EpochJob(plan_dir=str(plans[epoch]), manifest_dir=str(tmp / "manifest"), shards_dir=str(ds.out_dir / "shards"),
                        out_checkpoint=str(tmp / name / f"epoch-{epoch}"), epoch=epoch, n_epochs=3, batch_size=32,
                        buffer_size=64, checkpoint_every_steps=0, device="cpu", previous_checkpoint=previous,
                        **{"dnc_experts": K, "pool_version": "test-pool", **kw})

    metrics = {e: run_epoch(job(e)) for e in (1, 2, 3)}
    return tmp, plans, job, metrics


def test_settings_validate_dnc():
    with pytest.raises(ValueError, match="dnc_experts"):
        TrainSettings(dnc_experts=1)
    with pytest.raises(ValueError, match="cannot be combined"):
        TrainSettings(dnc_experts=3, selection="jest")
    assert TrainSettings(dnc_experts=3).dnc_weight == 1.0


def test_super_clusters_are_kmeans_and_deterministic():
    rng = np.random.default_rng(0)
    centres = np.eye(4, dtype=np.float32)[:3] * 5
    x = np.concatenate([c + rng.normal(0, 0.1, (50, 4)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a1, c1 = super_clusters(x, 3, seed=1)
    a2, _ = super_clusters(x, 3, seed=1)
    assert np.array_equal(a1, a2)
    assert all(len(set(a1[i * 50:(i + 1) * 50].tolist())) == 1 for i in range(3)), "each blob is one super-cluster"
    assert np.allclose(np.linalg.norm(c1, axis=1), 1, atol=1e-5)


def test_distillation_loss_is_zero_on_the_teacher_and_positive_elsewhere():
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    assert distillation_loss((x, y), [(2 * x, y), (x, 3 * y)]).abs().item() < 1e-6
    assert distillation_loss((x, y), [(-x, y)]).item() == pytest.approx(1.0, abs=1e-5)


def test_epoch2_trains_one_expert_per_super_cluster_on_its_samples(dnc):
    tmp, plans, job, metrics = dnc
    m1, m2 = metrics[1], metrics[2]
    version = checkpoint_file(tmp / "dnc" / "epoch-2").parent
    sc = np.load(version / SUPER_CLUSTERS_NAME)
    plan_idx = np.load(plans[2] / "indices.npy")
    assert np.array_equal(sc["indices"], plan_idx.astype(np.int64)), "every plan sample embedded once"
    sizes = np.bincount(sc["super_cluster"], minlength=K)
    assert (sizes > 0).all() and sizes.sum() == len(plan_idx)
    for k in range(K):
        expert = read_checkpoint(version / EXPERT_NAME.format(k=k))
        assert expert["samples_seen"] == sizes[k], "expert k trains on its super-cluster only"
        assert expert["step"] == m1["global_step"] + -(-sizes[k] // 32), "continues the base's schedule"
    assert m2["dnc_expert_samples"] == sizes.tolist()
    # checkpoint.pt of epoch 2 = the base, unchanged; every expert sample counted
    base1, base2 = read_checkpoint(m1["checkpoint"]), read_checkpoint(m2["checkpoint"])
    assert all(torch.equal(v, base2["state_dict"][k]) for k, v in base1["state_dict"].items())
    assert m2["samples_seen"] == m1["samples_seen"] + len(plan_idx)
    assert m2["global_step"] == m1["global_step"] + m1["steps"], "the schedule advances by one epoch"
    assert m2["scoring_flops"] > 0 and m2["scoring_flops"] % len(plan_idx) == 0, "the embedding pass is counted"
    e0 = read_checkpoint(version / EXPERT_NAME.format(k=0))["state_dict"]
    assert any(not torch.equal(v, e0[k]) for k, v in base1["state_dict"].items()), "experts trained"


def test_epoch3_distils_a_student_and_counts_the_teachers(dnc):
    tmp, plans, job, metrics = dnc
    m2, m3 = metrics[2], metrics[3]
    plan_size = int(np.load(plans[3] / "multiplicity.npy").sum())
    assert m3["epoch_samples"] == plan_size and m3["samples_seen"] == m2["samples_seen"] + plan_size
    assert sum(m3["dnc_samples_per_expert"]) == plan_size
    # a normal open_clip checkpoint (weights_only), differing from the base
    student = read_checkpoint(m3["checkpoint"])
    base = read_checkpoint(m2["checkpoint"])
    assert any(not torch.equal(v, base["state_dict"][k]) for k, v in student["state_dict"].items())
    model, _, _ = open_clip.create_model_and_transforms("dynamics-tiny-32", pretrained=m3["checkpoint"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in student["state_dict"].items())
    # teachers' forwards: base + expert, image + text → 2 pair forwards per sample, more than the embedding
    assert m3["scoring_flops"] > 0 and m3["scoring_flops"] % plan_size == 0
    assert m3["scoring_flops"] / plan_size > m2["scoring_flops"] / m2["dnc_samples_embedded"]
    assert m3["scoring_flops_total"] == m2["scoring_flops"] + m3["scoring_flops"]
    assert np.isfinite(m3["final_loss"])


def test_plain_recipe_is_untouched_by_dnc(dnc):
    tmp, plans, job, metrics = dnc
    plain = run_epoch(replace(job(2, name="plain", dnc_experts=0), previous_checkpoint=str(tmp / "dnc" / "epoch-1")))
    assert "dnc_phase" not in plain and plain.get("scoring_flops", 0) == 0
    assert plain["epoch_samples"] == metrics[2]["epoch_samples"], "same training samples per epoch"
    assert metrics[2]["scoring_flops"] > 0, "DnC's epoch 2 costs more: the embedding pass"
