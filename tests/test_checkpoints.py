import contextlib
import dataclasses
import json
import math
import os
import subprocess

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fewshot import checkpoints, maml
from fewshot.checkpoints import (FORMAT, CheckpointError, checkpoint_metadata, inner_lr_of, load_checkpoint,
                                 load_training_state, record_accuracy, save_checkpoint, save_training_state)
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


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_layout_problems(raw: bytes) -> list[str]:
    """What keeps `raw` from being exactly a safetensors file, by its specification: an 8-byte little-endian
    header length, a JSON object header, then the tensors' data, each at its declared byte range, the ranges
    covering the data without gap or overlap, and nothing after them. Nothing to unpickle: neither a zip
    archive (torch.save) nor a pickle (its protocol opcode, 0x80, first). [] when it is one."""
    problems = [what for magic, what in ((b"PK\x03\x04", "zip magic"), (b"\x80", "pickle protocol opcode"))
                if raw.startswith(magic)]
    size = int.from_bytes(raw[:8], "little")
    if len(raw) < 8 or 8 + size > len(raw):
        return problems + [f"header length {size} exceeds the file's {len(raw)} bytes"]
    try:
        header = json.loads(raw[8:8 + size])
    except ValueError as error:
        return problems + [f"header is not JSON ({error})"]
    if not isinstance(header, dict):
        return problems + ["header is not a JSON object"]
    if not all(isinstance(v, str) for v in header.pop("__metadata__", {}).values()):
        problems.append("metadata values are not all strings")
    position = 0
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        begin, end = entry["data_offsets"]
        if begin != position:
            problems.append(f"{name} starts at {begin}, not at {position}")
        if end - begin != DTYPE_BYTES[entry["dtype"]] * math.prod(entry["shape"]):
            problems.append(f"{name} takes {end - begin} bytes, not those of {entry['dtype']} {entry['shape']}")
        position = end
    if 8 + size + position != len(raw):
        problems.append(f"file has {len(raw)} bytes, not 8 + {size} (header) + {position} (data)")
    return problems


def test_file_is_exactly_safetensors_with_nothing_to_unpickle(tmp_path):
    saved_model(tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    assert safetensors_layout_problems(raw) == []
    assert b"torch._utils" not in raw  # what a pickled tensor refers to
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["fewshot"])["ways"] == 5


@pytest.mark.parametrize("zip_archive, problem", [(True, "zip magic"), (False, "pickle protocol opcode")])
def test_the_safetensors_layout_check_refuses_torch_save_files(tmp_path, zip_archive, problem):
    """The check above is no formality: torch.save's files, a zip archive or a bare pickle, fail it."""
    path = tmp_path / "model.pt"
    torch.save(build_model("conv", 5, 8, 3).state_dict(), path, _use_new_zipfile_serialization=zip_archive)
    problems = safetensors_layout_problems(path.read_bytes())
    assert problem in problems and len(problems) >= 2, problems  # its "header length" fails too


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


def test_training_state_round_trip(tmp_path):
    """The weights and Adam's moments and steps come back, all of them, in a fresh model and optimizer."""
    torch.manual_seed(0)
    model = build_model("conv", 5, 8, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        model(torch.rand(4, 1, 28, 28)).sum().backward()
        optimizer.step()
    save_training_state(tmp_path / "state.safetensors", model.state_dict(), optimizer, iterations=7)
    fresh = build_model("conv", 5, 8, 2)
    restored = torch.optim.Adam(fresh.parameters(), lr=0.5)
    assert load_training_state(tmp_path / "state.safetensors", fresh, restored) == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    saved, loaded = optimizer.state_dict()["state"], restored.state_dict()["state"]
    assert len(loaded) == len(saved) == len(list(model.parameters()))
    for index, entries in saved.items():
        assert set(loaded[index]) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(entries[key], loaded[index][key]) for key in entries)
    assert restored.param_groups[0]["lr"] == 0.01


def test_a_training_state_for_another_model_is_refused(tmp_path):
    model = build_model("conv", 5, 8, 2)
    optimizer = torch.optim.Adam(model.parameters())
    save_training_state(tmp_path / "state.safetensors", model.state_dict(), optimizer, iterations=1)
    wider = build_model("conv", 5, 16, 2)
    with pytest.raises(CheckpointError, match="does not fit this run's model"):
        load_training_state(tmp_path / "state.safetensors", wider, torch.optim.Adam(wider.parameters()))


def crafted(path, metadata_text: str, tensors: dict | None = None):
    """A file like a checkpoint, with `metadata_text` as its metadata and, unless given, the weights of the
    5-way model CONFIG describes."""
    tensors = build_model("conv", 5, 8, 3).state_dict() if tensors is None else tensors
    save_file(tensors, str(path), metadata={"format": FORMAT, "fewshot": metadata_text})
    return path


def metadata_with(**changes) -> str:
    return json.dumps(checkpoint_metadata(CONFIG, iterations=1) | changes)


def refusal(path) -> str:
    """The message load_checkpoint refuses `path` with: one line, naming the file (a line break in its name
    shown as a space)."""
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(path.name.replace("\n", " ")), message
    return message


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails a test that builds a model, even on the meta device."""
    def build_model(*args):
        raise AssertionError(f"a model was built: {args}")
    monkeypatch.setattr(checkpoints, "build_model", build_model)


def test_a_valid_checkpoint_of_too_many_ways_is_refused_by_the_bound_before_building(tmp_path, nothing_built):
    """A 20,000-way classifier is a few megabytes on disk, but gigabytes once the Draw page adapts it."""
    metadata = metadata_with(ways=20_000)
    path = crafted(tmp_path / "wide.safetensors", metadata, build_model("conv", 20_000, 8, 3).state_dict())
    assert "gives ways as 20000, which is not a whole number from 2 to 1000" in refusal(path)


@pytest.mark.parametrize("key, value, wanted", [
    ("ways", 10**7, "a whole number from 2 to 1000"),
    ("ways", 10**12, "a whole number from 2 to 1000"),
    ("ways", -5, "a whole number from 2 to 1000"),
    ("ways", 5.0, "a whole number from 2 to 1000"),
    ("blocks", 1_000_000, "a whole number from 1 to 8"),
    ("channels", True, "a whole number from 1 to 1024"),
    ("shots", "5", "a whole number from 1 to 19"),
    ("test_inner_steps", 10**6, "a whole number from 0 to 100"),
    ("iterations", None, "a whole number from 0 to 1000000000"),
    pytest.param("inner_lr", 10**400, "a number from 0 to 100", id="inner_lr-10**400"),  # float() overflows
    ("inner_lr", -0.1, "a number from 0 to 100"),
    ("inner_lr", "0.4", "a number from 0 to 100"),
    ("backbone", "resnet", "one of conv, fc"),
    ("split", ["lake"], "one of lake, maml-paper"),
    ("algorithm", {}, "one of maml, fomaml"),
    ("accuracy", 0.9, "a JSON object"),
    ("learned_inner_lr", "yes", "true or false"),
    ("inner_lrs", {"classifier.bias": [0.4]}, "allowed: learned inner learning rates are tensors of the file"),
])
def test_settings_of_the_wrong_type_or_out_of_bounds_are_refused_before_building(tmp_path, nothing_built, key,
                                                                                value, wanted):
    message = refusal(crafted(tmp_path / "odd.safetensors", metadata_with(**{key: value})))
    assert f"gives {key} as" in message and message.endswith(f"which is not {wanted}.")


@pytest.mark.parametrize("metadata_text, problem", [
    pytest.param("[" * 30_000 + "]" * 30_000, "not valid JSON (maximum recursion depth exceeded", id="deep"),
    pytest.param("[" * 100_000 + "]" * 100_000, "its metadata takes 200,000 characters, more than the 65,536",
                 id="long"),
    pytest.param('{"backbone": "conv", "ways": 5', "its metadata is not valid JSON (Expecting", id="cut-short"),
    pytest.param("5", "its metadata is not a JSON object", id="number"),
    pytest.param("null", "its metadata is not a JSON object", id="null"),
    pytest.param(metadata_with(inner_lr=float("nan")), "not valid JSON (NaN is not a number JSON allows", id="NaN"),
    pytest.param(metadata_with(ways=float("inf")), "not valid JSON (Infinity is not a number JSON allows",
                 id="Infinity"),
    pytest.param(metadata_with(inner_lr=0.4).replace("0.4", "1e400"), "gives inner_lr as inf, which is not a number",
                 id="1e400"),
    pytest.param(metadata_with(iterations=1).replace('"iterations": 1', '"iterations": ' + "9" * 5000),
                 "not valid JSON (Exceeds the limit (4300 digits)", id="5000-digits"),
])
def test_crafted_metadata_gives_a_checkpoint_error(tmp_path, metadata_text, problem):
    assert problem in refusal(crafted(tmp_path / "crafted.safetensors", metadata_text))


@pytest.mark.parametrize("metadata_text", [
    pytest.param("{}", id="empty"),
    pytest.param(json.dumps({key: value for key, value in checkpoint_metadata(CONFIG, iterations=1).items()
                             if key not in checkpoints.MODEL_KEYS}), id="settings-without-a-model"),
])
def test_metadata_that_describes_no_model_is_refused(tmp_path, nothing_built, metadata_text):
    """No backbone or sizes: nothing to build or check the weights against."""
    assert "its metadata lacks backbone, channels, blocks, ways" in refusal(
        crafted(tmp_path / "no-model.safetensors", metadata_text))


@pytest.mark.parametrize("change, problem", [
    pytest.param(lambda tensors: tensors | {"extra.weight": torch.zeros(3)}, "unexpected extra.weight", id="extra"),
    pytest.param(lambda tensors: {k: v for k, v in tensors.items() if k != "classifier.bias"},
                 "missing classifier.bias", id="missing"),
])
def test_weights_with_a_tensor_too_many_or_too_few_are_refused(tmp_path, change, problem):
    tensors = change(build_model("conv", 5, 8, 3).state_dict())
    message = refusal(crafted(tmp_path / "m.safetensors", metadata_with(), tensors))
    assert "the weights do not match the model its metadata describes" in message and problem in message


@pytest.mark.parametrize("weights, problem", [
    pytest.param(lambda t: t.long(), "holds I64, expected F32 (float32)", id="int64"),
    pytest.param(lambda t: t.double(), "holds F64, expected F32 (float32)", id="float64"),
    pytest.param(lambda t: t.clone().fill_(float("nan")), "hold NaN or infinite values", id="NaN"),
    pytest.param(lambda t: t.clone().fill_(float("inf")), "hold NaN or infinite values", id="inf"),
])
def test_weights_of_another_dtype_or_not_finite_are_refused(tmp_path, weights, problem):
    tensors = build_model("conv", 5, 8, 3).state_dict()
    tensors["classifier.weight"] = weights(tensors["classifier.weight"])
    message = refusal(crafted(tmp_path / "m.safetensors", metadata_with(), tensors))
    assert "classifier.weight" in message and problem in message


def test_every_message_is_one_line_even_for_an_odd_file_name(tmp_path):
    path = tmp_path / "two\nlines.safetensors"
    path.write_bytes(b"not a checkpoint")
    assert "not a readable safetensors file" in refusal(path)


LEARNED = dataclasses.replace(CONFIG, inner_steps=2, learned_inner_lr=True)


def learned_rates(model) -> dict:
    """Learned inner learning rates for LEARNED's 2 inner steps, a different one for each parameter and step."""
    return {name: torch.rand(2) for name, _ in model.named_parameters()}


def test_learned_inner_lrs_are_tensors_of_the_checkpoint_and_survive_a_recorded_accuracy(tmp_path):
    path = tmp_path / "m.safetensors"
    model = build_model("conv", 5, 8, 3)
    rates = learned_rates(model)
    save_checkpoint(path, model, checkpoint_metadata(LEARNED, iterations=12, inner_lrs=rates))
    assert safetensors_layout_problems(path.read_bytes()) == []
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("inner_lr.blocks.0.layer.weight"), rates["blocks.0.layer.weight"])
        assert "inner_lrs" not in json.loads(f.metadata()["fewshot"])  # not JSON: tensors
    record_accuracy(path, {"ways": 5, "shots": 1, "accuracy": 0.9})
    loaded, metadata = load_checkpoint(path)
    assert metadata["learned_inner_lr"] is True and metadata["accuracy"]["5w1s"]["accuracy"] == 0.9
    assert metadata["inner_lrs"].keys() == rates.keys()
    assert all(torch.equal(metadata["inner_lrs"][name], rates[name]) for name in rates)
    assert inner_lr_of(metadata) is metadata["inner_lrs"]
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    saved_model(tmp_path / "plain.safetensors")
    _, plain = load_checkpoint(tmp_path / "plain.safetensors")
    assert "inner_lrs" not in plain and inner_lr_of(plain) == CONFIG.inner_lr


@pytest.mark.parametrize("change, problem", [
    pytest.param(lambda tensors: {k: v for k, v in tensors.items() if k != "inner_lr.classifier.bias"},
                 "missing inner_lr.classifier.bias", id="missing"),
    pytest.param(lambda tensors: tensors | {"inner_lr.classifier.bias": torch.rand(3)},
                 "inner_lr.classifier.bias has shape (3,), expected (2,)", id="3-steps"),
    pytest.param(lambda tensors: tensors | {"inner_lr.classifier.bias": torch.full((2,), float("nan"))},
                 "inner_lr.classifier.bias hold NaN or infinite values", id="NaN"),
])
def test_learned_inner_lrs_that_do_not_match_the_metadata_are_refused(tmp_path, change, problem):
    model = build_model("conv", 5, 8, 3)
    tensors = model.state_dict() | {"inner_lr." + name: rates for name, rates in learned_rates(model).items()}
    metadata = metadata_with(inner_steps=2, learned_inner_lr=True)
    assert problem in refusal(crafted(tmp_path / "m.safetensors", metadata, change(tensors)))
    assert "unexpected inner_lr." in refusal(crafted(tmp_path / "m.safetensors", metadata_with(inner_steps=2), tensors))


def test_learned_inner_lrs_for_no_inner_step_are_refused_before_building(tmp_path, nothing_built):
    metadata = metadata_with(inner_steps=0, learned_inner_lr=True)
    assert "learned inner learning rates for 0 inner steps" in refusal(crafted(tmp_path / "m.safetensors", metadata))


def test_a_training_state_keeps_the_learned_inner_lrs_and_their_moments_and_fits_only_a_run_that_learns_them(
        tmp_path):
    torch.manual_seed(0)
    model = build_model("conv", 5, 8, 2)
    rates = maml.learned_inner_lrs(model, 0.4, 2)
    optimizer = torch.optim.Adam([*model.parameters(), *rates.values()], lr=0.01)
    for _ in range(2):
        x = torch.rand(4, 1, 28, 28)
        (model(x).sum() + sum(r.square().sum() for r in rates.values())).backward()
        optimizer.step()
    path = tmp_path / "state.safetensors"
    save_training_state(path, model.state_dict(), optimizer, iterations=7, inner_lrs=rates)
    fresh = build_model("conv", 5, 8, 2)
    fresh_rates = maml.learned_inner_lrs(fresh, 0.4, 2)
    restored = torch.optim.Adam([*fresh.parameters(), *fresh_rates.values()], lr=0.5)
    assert load_training_state(path, fresh, restored, fresh_rates) == 7
    assert all(torch.equal(rates[name], fresh_rates[name]) for name in rates)
    assert not torch.equal(rates["classifier.bias"], torch.full((2,), 0.4))  # learned, so a real test
    saved, loaded = optimizer.state_dict()["state"], restored.state_dict()["state"]
    assert len(loaded) == len(saved) == len(list(model.parameters())) + len(rates)
    assert all(torch.equal(saved[i][key], loaded[i][key]) for i in saved for key in saved[i])
    plain = torch.optim.Adam(fresh.parameters())
    with pytest.raises(CheckpointError, match="does not fit this run's model: it has learned inner learning rates"):
        load_training_state(path, fresh, plain)
    save_training_state(path, model.state_dict(), torch.optim.Adam(model.parameters()), iterations=1)
    with pytest.raises(CheckpointError, match="does not fit this run's model: it has no learned inner learning rates"):
        load_training_state(path, fresh, restored, fresh_rates)


PER_STEP_BN = dataclasses.replace(CONFIG, inner_steps=3, per_step_bn=True)


def test_per_step_batch_norm_round_trips_with_its_rows_and_survives_a_recorded_accuracy(tmp_path):
    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    model = build_model("conv", 5, 8, 3, norm_steps=3)
    with torch.no_grad():  # rows that differ, so that a row mixed up with another shows
        for name, p in model.named_parameters():
            if ".norm." in name:
                p.uniform_(0.5, 1.5)
    save_checkpoint(path, model, checkpoint_metadata(PER_STEP_BN, iterations=12))
    assert safetensors_layout_problems(path.read_bytes()) == []
    record_accuracy(path, {"ways": 5, "shots": 1, "accuracy": 0.9})
    loaded, metadata = load_checkpoint(path)
    assert metadata["per_step_bn"] is True and metadata["accuracy"]["5w1s"]["accuracy"] == 0.9
    assert loaded.get_parameter("blocks.2.norm.bias").shape == (3, 8)
    x = torch.rand(6, 1, 28, 28)
    for step in range(4):
        assert torch.equal(model(x, step=step), loaded(x, step=step))
    assert "per_step_bn" not in checkpoint_metadata(CONFIG, iterations=1)  # a plain model's metadata is unchanged


def test_per_step_batch_norm_that_does_not_match_the_metadata_is_refused(tmp_path):
    per_step = build_model("conv", 5, 8, 3, norm_steps=3).state_dict()
    assert "blocks.0.norm.weight has shape (3, 8), expected (8,)" in refusal(
        crafted(tmp_path / "m.safetensors", metadata_with(inner_steps=3), per_step))
    assert "blocks.0.norm.weight has shape (3, 8), expected (2, 8)" in refusal(
        crafted(tmp_path / "m.safetensors", metadata_with(inner_steps=2, per_step_bn=True), per_step))
    assert "blocks.0.norm.weight has shape (8,), expected (3, 8)" in refusal(
        crafted(tmp_path / "m.safetensors", metadata_with(inner_steps=3, per_step_bn=True)))
    assert "gives per_step_bn as 'yes', which is not true or false" in refusal(
        crafted(tmp_path / "m.safetensors", metadata_with(inner_steps=3, per_step_bn="yes"), per_step))


def test_per_step_batch_norm_for_no_inner_step_is_refused_before_building(tmp_path, nothing_built):
    metadata = metadata_with(inner_steps=0, per_step_bn=True)
    assert "per-step batch norm for 0 inner steps" in refusal(crafted(tmp_path / "m.safetensors", metadata))


@pytest.mark.parametrize("padding", [
    pytest.param(lambda tensors: ({"padding": "x" * 2_000_000}, tensors), id="metadata"),
    pytest.param(lambda tensors: ({}, tensors | {f"empty{i}": torch.zeros(0) for i in range(30_000)}),
                 id="tensor-entries"),
])
def test_a_header_over_the_bound_is_refused_before_it_is_parsed(tmp_path, monkeypatch, padding):
    """safetensors parses headers of up to 100 MB: for a 16 MB upload that took a second and 220 MB at every
    rerun of the page, for a file in runs/ 9 s and 1.1 GB. A trained model's header takes a few kilobytes."""
    metadata, tensors = padding(build_model("conv", 5, 8, 3).state_dict())
    path = tmp_path / "padded.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "fewshot": metadata_with(), **metadata})
    monkeypatch.setattr(checkpoints, "safe_open", lambda *args, **kwargs: pytest.fail("the header was parsed"))
    message = refusal(path)
    assert "its safetensors header takes" in message and f"more than the {checkpoints.MAX_HEADER_BYTES:,}" in message


@contextlib.contextmanager
def writer_after(fifo, seconds=5):
    """A process that opens `fifo` for writing after `seconds`: a read that waits for a writer then ends (reading
    nothing), rather than the test hanging. (The wait holds Python's lock: no thread of the test could end it.)"""
    process = subprocess.Popen(["sh", "-c", 'sleep "$1"; exec 3> "$0"', str(fifo), str(seconds)])
    try:
        yield
    finally:
        process.kill()
        process.wait()


def test_the_file_read_is_the_file_checked_even_if_a_fifo_takes_its_name_meanwhile(tmp_path, monkeypatch):
    """Opening a FIFO waits for a writer: Draw's menu of checkpoints would wait forever. The file is opened once,
    then checked and read as opened: a FIFO that takes its name between the check and the read changes nothing."""
    path = tmp_path / "m.safetensors"
    model = saved_model(path)
    os.mkfifo(tmp_path / "fifo")
    read = checkpoints.safe_open

    def fifo_takes_the_name_then_read(*args, **kwargs):
        os.replace(tmp_path / "fifo", path)
        return read(*args, **kwargs)
    monkeypatch.setattr(checkpoints, "safe_open", fifo_takes_the_name_then_read)
    with writer_after(path):
        loaded, _ = load_checkpoint(path)
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))


def test_a_link_to_a_device_is_refused_as_no_regular_file(tmp_path):
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    assert "zero.safetensors is not a regular file" in refusal(tmp_path / "zero.safetensors")


@pytest.mark.parametrize("damage", [
    pytest.param(lambda tensors, header: (tensors, {k: v for k, v in header.items() if k != "iterations"}),
                 id="no-iterations"),
    pytest.param(lambda tensors, header: (tensors, header | {"iterations": "many"}), id="iterations-text"),
    pytest.param(lambda tensors, header: (tensors | {"weights": torch.zeros(1)}, header), id="name-without-a-dot"),
    pytest.param(lambda tensors, header: (tensors | {"optimizer.first.step": torch.zeros(1)}, header),
                 id="index-no-number"),
    pytest.param(lambda tensors, header: (tensors | {"optimizer.0.step": torch.zeros(2)}, header), id="two-steps"),
    pytest.param(lambda tensors, header: (tensors, header | {"param_groups": "5"}), id="param_groups-number"),
])
def test_a_damaged_training_state_gives_a_checkpoint_error(tmp_path, damage):
    """What a resumed run's process reports in one line, where a KeyError, TypeError or RuntimeError would be a
    traceback in its log."""
    model = build_model("conv", 5, 8, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    path = tmp_path / "state.safetensors"
    save_training_state(path, model.state_dict(), optimizer, iterations=3)
    with safe_open(str(path), framework="pt") as f:
        tensors, header = damage({name: f.get_tensor(name) for name in f.keys()}, f.metadata())
    save_file(tensors, str(path), metadata=header)
    fresh = build_model("conv", 5, 8, 2)
    with pytest.raises(CheckpointError, match="state.safetensors does not fit this run's model: "):
        load_training_state(path, fresh, torch.optim.Adam(fresh.parameters()))


def test_a_conv_model_larger_than_the_callers_bound_is_refused_before_its_weights_are_read(tmp_path, monkeypatch):
    """The app's pages load with the largest sizes the Train form allows (adaptation.load_adaptable): a file of a
    command-line run with 512 channels takes 5 times the compute of the largest it trains, every session waiting.
    Its metadata alone refuses it: here the weights are a smaller model's, which checking them would refuse."""
    path = crafted(tmp_path / "wide.safetensors", metadata_with(channels=64, blocks=4))
    assert "the weights do not match" in refusal(path)  # what checking the weights says, without a bound
    monkeypatch.setattr(checkpoints, "build_model", lambda *args: pytest.fail(f"a model was built: {args}"))  # not
    # even on the meta device, for the weights' shapes
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path, largest={"channels": 32, "blocks": 4})
    assert str(refused.value) == "wide.safetensors: its model is larger than this server adapts: channels 64 (at most 32)."


def test_the_size_bound_lets_models_within_it_and_the_fc_net_through(tmp_path):
    """The fc net has fixed sizes: the channels and blocks in its metadata build nothing."""
    path = tmp_path / "fc.safetensors"
    fc = dataclasses.replace(CONFIG, backbone="fc", channels=512)
    save_checkpoint(path, build_model("fc", 5, 512, 3), checkpoint_metadata(fc, iterations=1))
    assert load_checkpoint(path, largest={"channels": 32, "blocks": 3})[1]["channels"] == 512
    saved_model(tmp_path / "m.safetensors")  # 8 channels, 3 blocks: at the bound
    assert load_checkpoint(tmp_path / "m.safetensors", largest={"channels": 8, "blocks": 3})[1]["blocks"] == 3
