"""Online batch selection (JEST, ActiveCLIP) on constructed super-batches, and inside ``run_epoch``."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from dynamics_assets.core.train.epoch import EpochJob, checkpoint_file, run_epoch
from dynamics_assets.core.model.flops import forward_flops_per_pair
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.model.clip import create_model, read_checkpoint, save_checkpoint
from dynamics_assets.core.train.online_selection import Features, activeclip_scores, check_same_inputs, chunk_sizes, conditional_scores, gumbel_top_k, jest_sample, jest_scores, load_reference_model, pairwise_sigmoid_losses, per_example_softmax_losses, scoring_flops_per_pair, seeded_generator, select, select_from_features, subbatch_learnability, super_batch_size
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
from dynamics_assets.core.ingest.synthetic import generate

MODEL = "dynamics-tiny-32"

# ----------------------------------------------------------------------------- a constructed super-batch
# 20 candidates with orthogonal captions y_i = e_i. The reference matches every pair (x_i = e_i); the
# learner matches all but LEARNABLE (x_i = −e_i: high learner loss, low reference loss). NOISY pairs
# are mismatched for both models: the highest learner loss, but nothing to learn.
N, DIM, SCALE = 20, 32, 20.0
LEARNABLE = [3, 7, 11, 15]
NOISY = [0, 5, 10]


def _features(flipped: list[int]) -> Features:
    basis = torch.eye(DIM)[:N]
    sign = torch.ones(N, 1)
    sign[flipped] = -1
    return Features(sign * basis, basis.clone(), torch.tensor(SCALE))


LEARNER, REFERENCE = _features(LEARNABLE + NOISY), _features(NOISY)


def test_learnable_pairs_are_the_ones_with_high_learner_and_low_reference_loss():
    learner_loss = per_example_softmax_losses(LEARNER)
    assert learner_loss[NOISY].min() >= learner_loss[LEARNABLE].max() - 1e-4, "hard-example mining would take NOISY"
    s = activeclip_scores(LEARNER, REFERENCE)
    others = [i for i in range(N) if i not in LEARNABLE]
    assert s[LEARNABLE].min() > 20 and s[others].abs().max() < 1e-4
    S = jest_scores(LEARNER, REFERENCE)
    assert S.diagonal()[LEARNABLE].min() > 20
    off = ~torch.eye(N, dtype=torch.bool)
    assert S[off].abs().max() < 1e-6, "orthogonal negatives: the same loss under both models"


@pytest.mark.parametrize("method", ["jest", "activeclip"])
def test_both_methods_pick_the_learnable_pairs(method):
    batch = len(LEARNABLE)
    assert super_batch_size(batch, 0.8) == N
    for seed in range(5):
        chosen = select_from_features(method, LEARNER, REFERENCE, batch, seeded_generator(seed))
        assert chosen.dtype == torch.int64 and len(chosen) == batch
        assert sorted(chosen.tolist()) == LEARNABLE


@pytest.mark.parametrize("method", ["jest", "activeclip"])
def test_selection_is_seeded_unique_and_of_the_right_size(method):
    g = torch.Generator().manual_seed(0)
    learner = Features(*(torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1) for _ in "xy"),
                       torch.tensor(10.0))
    reference = Features(learner.image, learner.image.clone(), torch.tensor(10.0), torch.tensor(-5.0))
    draws = [select_from_features(method, learner, reference, 12, seeded_generator(s), n_chunks=5)
             for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    for chosen in draws:
        assert len(chosen) == 12 == len(set(chosen.tolist())) and 0 <= chosen.min() and chosen.max() < 40


def test_losses_match_a_hand_computation_and_open_clip():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    f = Features(x, y, torch.tensor(10.0))
    dots = [[0.6, 0.0], [0.8, 1.0]]  # x_i · y_j
    b = -math.log(2)  # a CLIP model: no bias of its own
    hand = [[math.log1p(math.exp(-(1 if i == j else -1) * (10 * dots[i][j] + b))) for j in range(2)] for i in range(2)]
    assert torch.allclose(pairwise_sigmoid_losses(f), torch.tensor(hand), atol=1e-5)
    with_bias = Features(x, y, torch.tensor(10.0), torch.tensor(-3.0))
    assert math.isclose(float(pairwise_sigmoid_losses(with_bias)[0, 1]), math.log1p(math.exp(10 * 0.0 - 3)),
                        rel_tol=1e-5)
    row0 = -math.log(math.exp(6) / (math.exp(6) + math.exp(0)))  # image 0 against texts 0, 1
    col0 = -math.log(math.exp(6) / (math.exp(6) + math.exp(8)))  # text 0 against images 0, 1
    losses = per_example_softmax_losses(f)
    assert math.isclose(float(losses[0]), (row0 + col0) / 2, rel_tol=1e-5)
    assert torch.isclose(losses.mean(), open_clip.ClipLoss()(x, y, torch.tensor(10.0)))


# ----------------------------------------------------------------------------- JEST on a 4 × 4 case
S4 = torch.tensor([[1.0, 2.0, 0.0, -1.0],
                   [0.0, 3.0, 1.0, 0.0],
                   [2.0, 0.0, -2.0, 1.0],
                   [0.0, 1.0, 0.0, 0.5]])


def test_conditional_scores_match_a_hand_computation():
    assert conditional_scores(S4, torch.tensor([], dtype=torch.long)).tolist() == [1.0, 3.0, -2.0, 0.5]
    # C = {1}: S_kk + S_k1 + S_1k
    assert conditional_scores(S4, torch.tensor([1])).tolist() == [1 + 2 + 0, 3 + 3 + 3, -2 + 0 + 1, 0.5 + 1 + 0]
    # C = {1, 3}: S_kk + S_k1 + S_k3 + S_1k + S_3k
    gain = conditional_scores(S4, torch.tensor([1, 3]))
    assert gain[0] == 1 + (2 - 1) + (0 + 0) and gain[2] == -2 + (0 + 1) + (1 + 0)
    assert subbatch_learnability(S4, torch.tensor([0, 1])) == 1 + 2 + 0 + 3
    for k in (0, 2):  # the gain is s(C ∪ {k}) − s(C)
        assert gain[k] == subbatch_learnability(S4, torch.tensor([1, 3, k])) - subbatch_learnability(
            S4, torch.tensor([1, 3]))


def test_jest_draws_the_first_chunk_and_the_next_from_the_conditional_softmax():
    draws = torch.stack([jest_sample(S4, 2, seeded_generator(7, i), n_chunks=2) for i in range(4000)])
    first = torch.bincount(draws[:, 0], minlength=4) / len(draws)
    assert torch.allclose(first, S4.diagonal().softmax(0), atol=0.03)
    after_1 = draws[draws[:, 0] == 1, 1]
    second = torch.bincount(after_1, minlength=4)[[0, 2, 3]] / len(after_1)
    assert torch.allclose(second, torch.tensor([3.0, -1.0, 1.5]).softmax(0), atol=0.03)


def test_jest_selects_jointly_learnable_pairs():
    # a is learnable on its own; b only together with a (the learner confuses a and b, the reference does not)
    a, b = 2, 9
    S = torch.zeros(N, N)
    S[a, a] = S[a, b] = S[b, a] = 12.0
    for seed in range(5):
        assert sorted(jest_sample(S, 2, seeded_generator(seed), n_chunks=2).tolist()) == [a, b]


def test_chunk_sizes_and_super_batch():
    assert chunk_sizes(32, 16) == [2] * 16
    assert chunk_sizes(20, 16) == [2] * 4 + [1] * 12
    assert chunk_sizes(4, 16) == [1] * 4
    assert super_batch_size(256) == 1280 and super_batch_size(8, 0.0) == 8
    with pytest.raises(ValueError, match="filter_ratio"):
        super_batch_size(8, 1.0)
    with pytest.raises(ValueError, match="cannot draw"):
        gumbel_top_k(torch.zeros(3), 4, seeded_generator(0))
    with pytest.raises(ValueError, match="unknown selection"):
        select_from_features("topk", LEARNER, REFERENCE, 4, seeded_generator(0))


# ----------------------------------------------------------------------------- select() on models


class FixedFeatures(torch.nn.Module):
    """A stand-in model whose features are fixed tensors; records how it was called."""

    def __init__(self, features: Features) -> None:
        super().__init__()
        self.features = features
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(float(features.logit_scale))))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        assert len(images) == len(tokens) == len(self.features.image)
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.features.image, self.features.text, self.logit_scale.exp()


@pytest.mark.parametrize("method", ["jest", "activeclip"])
def test_select_scores_both_models_without_grad_and_counts_compute(method):
    learner, reference = FixedFeatures(LEARNER).train(), FixedFeatures(REFERENCE).eval()
    images, tokens = torch.zeros(N, 3, 2, 2), torch.zeros(N, 4, dtype=torch.long)
    chosen = select(method, learner, reference, images, tokens, 4, seeded_generator(0), flops_per_pair=7)
    assert sorted(chosen.indices.tolist()) == LEARNABLE
    assert chosen.samples_scored == N and chosen.scoring_flops == 7 * N
    assert learner.calls == reference.calls == [(False, False)], "eval mode, no grad"
    assert learner.training and not reference.training, "modes restored"


def test_select_on_open_clip_models_measures_the_scoring_flops(tmp_path):
    learner, reference = create_model(MODEL, seed=1)[0], create_model(MODEL, seed=2)[0]
    check_same_inputs(learner, reference)
    per_pair = scoring_flops_per_pair(learner, reference)
    assert per_pair == 2 * forward_flops_per_pair(learner, 32, 32) > 0
    reference.eval()  # eval mode's fused attention must not hide FLOPs
    assert scoring_flops_per_pair(learner, reference) == per_pair and not reference.training
    images, tokens = torch.randn(10, 3, 32, 32), torch.randint(0, 1000, (10, 32))
    chosen = select("jest", learner, reference, images, tokens, 3, seeded_generator(0))
    assert len(set(chosen.indices.tolist())) == 3 and chosen.scoring_flops == 10 * per_pair

    reference.visual.preprocess_cfg = {**open_clip.get_model_preprocess_cfg(reference), "size": (64, 64)}
    with pytest.raises(ValueError, match="preprocessing"):
        check_same_inputs(learner, reference)


def test_load_reference_model(tmp_path):
    model = create_model(MODEL, seed=3)[0]
    save_checkpoint(tmp_path / "ref.pt", model, model_name=MODEL, epoch=1, step=1, samples_seen=1)
    loaded = load_reference_model(tmp_path / "ref.pt")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    torch.save({"state_dict": model.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt"):
        load_reference_model(tmp_path / "bare.pt")


# ----------------------------------------------------------------------------- run_epoch with selection

BATCH = 4
SUPER = super_batch_size(BATCH)  # 20


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selection")
    ds = generate(tmp / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=5)
    summary = build_manifest(ds.shards, tmp / "manifest")
    ids = np.random.default_rng(0).integers(0, 6, summary.ok).astype(np.int32)
    plans = {epoch: write_plan(tmp / f"plan-{epoch}", DynamicsSampler(0.3, alpha=0.2, mode="upsample").draw(
        ClusterPool.from_array(ids, 6), epoch=epoch, seed=0), pool_version="test-pool") for epoch in (1, 2)}
    reference = tmp / "reference.pt"
    save_checkpoint(reference, create_model(MODEL, seed=7)[0], model_name=MODEL, epoch=1, step=0, samples_seen=0)
    return tmp, ds, plans, reference


def _job(pool, epoch=1, name="ck", **kw) -> EpochJob:
    tmp, ds, plans, reference = pool
    return EpochJob(plan_dir=str(plans[epoch]), manifest_dir=str(tmp / "manifest"),
                    shards_dir=str(ds.out_dir / "shards"), out_checkpoint=str(tmp / name / f"epoch-{epoch}"),
                    epoch=epoch, n_epochs=2, batch_size=BATCH, buffer_size=64, checkpoint_every_steps=2,
                    device="cpu", pool_version="test-pool", **{"selection": "jest", "reference_checkpoint": str(reference), **kw})


def test_epoch_job_validates_selection(pool):
    with pytest.raises(ValueError, match="selection must be one of"):
        _job(pool, selection="random")
    with pytest.raises(ValueError, match="reference_checkpoint"):
        _job(pool, reference_checkpoint=None)
    assert _job(pool).loader_batch_size == SUPER and replace(_job(pool), selection=None).loader_batch_size == BATCH


@pytest.fixture(scope="module")
def jest_epoch(pool) -> dict:
    """Epoch 1 with JEST, run straight through (checkpoint version under the root ``ck/epoch-1``)."""
    return run_epoch(_job(pool))


def test_run_epoch_with_jest_trains_on_selected_batches_and_counts_scoring(pool, jest_epoch):
    tmp, _, plans, _ = pool
    m1 = jest_epoch
    plan_size = int(np.load(plans[1] / "multiplicity.npy").sum())
    assert m1["steps"] == plan_size // SUPER >= 3
    assert m1["samples_seen"] == m1["steps"] * BATCH
    assert m1["samples_scored"] == m1["steps"] * SUPER
    per_pair = 2 * forward_flops_per_pair(create_model(MODEL)[0], 32, 32)
    assert m1["scoring_flops"] == m1["samples_scored"] * per_pair > 0
    assert np.isfinite(m1["final_loss"])
    extra = read_checkpoint(checkpoint_file(tmp / "ck" / "epoch-1"))["extra"]
    assert extra["samples_scored"] == m1["samples_scored"] and extra["scoring_flops"] == m1["scoring_flops"]
    m2 = run_epoch(_job(pool, 2, previous_checkpoint=str(tmp / "ck" / "epoch-1"), selection="activeclip"))
    assert m2["samples_scored_total"] == m1["samples_scored"] + m2["samples_scored"]
    assert m2["scoring_flops_total"] == m1["scoring_flops"] + m2["scoring_flops"]


def test_run_epoch_with_selection_resumes_to_the_same_weights(pool, jest_epoch):
    tmp = pool[0]

    class Crash(Exception):
        pass

    def crash_at_2(step, _):
        if step == 2:
            raise Crash

    interrupted = _job(pool, name="resumed")
    with pytest.raises(Crash):
        run_epoch(interrupted, on_step=crash_at_2)
    assert list((Path(interrupted.out_checkpoint) / ".staging").glob("*/step.pt"))  # not visible to readers
    assert run_epoch(interrupted)["resumed_at_step"] == 2
    a = read_checkpoint(checkpoint_file(tmp / "ck" / "epoch-1"))["state_dict"]
    b = read_checkpoint(checkpoint_file(tmp / "resumed" / "epoch-1"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
