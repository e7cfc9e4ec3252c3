import json

import pytest
import torch
from safetensors.torch import save_file

from fewshot.checkpoints import (CheckpointError, checkpoint_metadata, load_checkpoint, load_training_state,
                                 save_checkpoint, save_training_state)
from fewshot.config import Config
from fewshot.models import build_model

CONFIG = Config(data_root="unused", backbone="conv", channels=8, blocks=3, ways=5, shots=1)


def saved_model(path):
    torch.manual_seed(0)
    model = build_model("conv", 5, 8, 3)
    save_checkpoint(path, model, checkpoint_metadata(CONFIG, iterations=12, accuracy={"5w1s": {"accuracy": 0.9}}))
    return model


def test_round_trip(tmp_path):
    model = saved_model(tmp_path / "m.safetensors")
    loaded, metadata = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert metadata["iterations"] == 12 and metadata["backbone"] == "conv" and metadata["channels"] == 8
    assert metadata["accuracy"]["5w1s"]["accuracy"] == 0.9 and metadata["split"] == "lake"


def test_file_is_plain_safetensors_without_pickle(tmp_path):
    saved_model(tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["fewshot"])["ways"] == 5
    assert b"\x80\x04" not in raw[:2] and b"torch._utils" not in raw


def test_corrupt_file(tmp_path):
    saved_model(tmp_path / "m.safetensors")
    path = tmp_path / "m.safetensors"
    path.write_bytes(path.read_bytes()[:300])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_pickle_is_refused_not_loaded(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build_model("conv", 5).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_foreign_safetensors(tmp_path):
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a fewshot checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_weights_that_do_not_match_the_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    metadata = checkpoint_metadata(CONFIG, iterations=1)
    save_checkpoint(path, build_model("conv", 20, 8, 3), metadata)  # 20-way weights, 5-way metadata
    with pytest.raises(CheckpointError, match="classifier.weight has shape"):
        load_checkpoint(path)


def test_incomplete_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    metadata = checkpoint_metadata(CONFIG, iterations=1)
    del metadata["algorithm"]
    save_checkpoint(path, build_model("conv", 5, 8, 3), metadata)
    with pytest.raises(CheckpointError, match="lacks algorithm"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_optimizer_state_round_trip(tmp_path):
    model = build_model("conv", 5, 8, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    save_training_state(tmp_path / "opt.safetensors", optimizer, iterations=7)
    restored = torch.optim.Adam(model.parameters(), lr=0.5)
    assert load_training_state(tmp_path / "opt.safetensors", restored) == 7
    for a, b in zip(optimizer.state.values(), restored.state.values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and float(a["step"]) == float(b["step"])
    assert restored.param_groups[0]["lr"] == 0.01
