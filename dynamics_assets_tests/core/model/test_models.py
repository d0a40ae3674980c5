"""Encoder specs, loading and open_clip checkpoints (models.py)."""
from __future__ import annotations

import open_clip
import pytest
import torch

from dynamics_assets.core.model.clip import EncoderSpec, create_model, load_encoder, read_checkpoint, save_checkpoint
from dynamics_assets.core.io.hashing import file_sha256

MODEL = "dynamics-tiny-32"


def _trained_a_little(model: torch.nn.Module) -> torch.optim.Optimizer:
    """One AdamW step so that weights differ from any fresh init and the optimizer has state."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    image_features, text_features, scale = model(torch.randn(4, 3, 32, 32), torch.randint(0, 49408, (4, 32)))
    open_clip.ClipLoss()(image_features, text_features, scale).backward()
    optimizer.step()
    return optimizer


def test_tiny_config_is_registered_with_open_clip():
    config = open_clip.get_model_config(MODEL)
    assert config["vision_cfg"]["image_size"] == 32 and config["vision_cfg"]["patch_size"] == 4
    assert config["text_cfg"]["context_length"] == 32
    assert open_clip.get_tokenizer(MODEL)(["a red circle"]).shape == (1, 32)


def test_checkpoint_round_trips_through_open_clip_and_weights_only_load(tmp_path):
    model, _, _ = create_model(MODEL, seed=7)
    optimizer = _trained_a_little(model)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, model_name=MODEL, epoch=2, step=10, samples_seen=40, optimizer=optimizer,
                    scheduler_state={"step": 10}, extra={"note": "test", "loss": 1.5})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["epoch"] == 2 and raw["name"] == MODEL and raw["step"] == 10 and raw["samples_seen"] == 40
    assert raw["extra"] == {"note": "test", "loss": 1.5}
    assert raw["optimizer"]["state"]  # AdamW moments survive a weights_only load
    save_checkpoint(tmp_path / "from_state.pt", model, model_name=MODEL, epoch=2, step=10, samples_seen=40,
                    optimizer=optimizer.state_dict())
    from_state = read_checkpoint(tmp_path / "from_state.pt")["optimizer"]
    assert torch.equal(from_state["state"][0]["exp_avg"], raw["optimizer"]["state"][0]["exp_avg"])

    loaded, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(path))
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert all(torch.equal(v, expected[k]) for k, v in read_checkpoint(path)["state_dict"].items())


def test_load_encoder_from_checkpoint_path(tmp_path):
    model, _, _ = create_model(MODEL, seed=3)
    _trained_a_little(model)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, model_name=MODEL, epoch=1, step=1, samples_seen=4)
    encoder = load_encoder(EncoderSpec(MODEL, pretrained=str(path)))
    assert not encoder.model.training
    assert encoder.identity == {"model_name": MODEL, "weights": f"sha256:{file_sha256(path)}", "precision": "fp32"}
    assert encoder.embed_dim == 128
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in encoder.model.state_dict().items())


def test_random_init_is_reproducible_and_cpu_runs_fp32():
    a = load_encoder(EncoderSpec(MODEL, precision="bf16"))
    b = load_encoder(EncoderSpec(MODEL))
    assert a.identity["weights"] == "init-seed:0" and a.precision == "fp32"
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError, match="ViT-B-32") as err:
        EncoderSpec("ViT-B-31")
    assert "unknown open_clip model 'ViT-B-31'" in str(err.value)
    with pytest.raises(ValueError, match="precision"):
        EncoderSpec(MODEL, precision="int8")


def test_pretrained_tag_is_forwarded_to_open_clip(monkeypatch):
    calls = []

    def fake_create(model_name, **kwargs):
        calls.append((model_name, kwargs))
        raise RuntimeError("stop: no download in tests")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(RuntimeError, match="no download"):
        load_encoder(EncoderSpec("ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert calls[0][0] == "ViT-B-32"
    assert calls[0][1]["pretrained"] == "laion2b_s34b_b79k" and calls[0][1]["weights_only"] is True


def test_unknown_pretrained_value_lists_the_models_tags(tmp_path):
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):
        load_encoder(EncoderSpec("ViT-B-32", pretrained="laion9b_nonexistent"))
    with pytest.raises(ValueError, match="nor an existing checkpoint file"):
        load_encoder(EncoderSpec(MODEL, pretrained=str(tmp_path / "missing.pt")))
