import dataclasses
import errno
import os
from pathlib import Path

import pytest

from fewshot.config import KEPT_ON_RESUME, Config, changes_refused_on_resume

NAN, INF = float("nan"), float("inf")


def test_every_bad_field_is_named_in_one_message():
    with pytest.raises(ValueError) as error:
        Config(data_root="x", ways=1, inner_lr=NAN)
    assert str(error.value) == "ways must be at least 2, got 1; inner_lr must be a finite number, got nan"


@pytest.mark.parametrize("values, message", [
    ({"inner_lr": INF}, "inner_lr must be a finite number, got inf"),
    ({"inner_lr": -INF}, "inner_lr must be a finite number, got -inf"),
    ({"inner_lr": -1.0}, "inner_lr must be at least 0, got -1.0"),
    ({"outer_lr": NAN}, "outer_lr must be a finite number, got nan"),
    ({"outer_lr": 0.0}, "outer_lr must be greater than 0, got 0.0"),
    ({"outer_lr": -0.001}, "outer_lr must be greater than 0, got -0.001"),
    ({"outer_lr": 1e38}, "outer_lr must be at most 100, got 1e+38"),  # Adam's step: a traceback, not a run
    ({"ways": 0}, "ways must be at least 2, got 0"),
    ({"inner_steps": -1}, "inner_steps must be at least 0, got -1"),
    ({"seed": 2**64}, f"seed must be at most {2**32 - 1}, got {2**64}"),
    ({"shots": 15, "queries": 10}, "shots + queries must be at most 20 (Omniglot has 20 drawings per character), "
                                   "got 15 + 10"),
    ({"algorithm": "reptile"}, "algorithm must be one of maml, fomaml, got 'reptile'"),
    ({"test_tasks": 1}, "test_tasks must be 0 (no test) or at least 2, for a confidence interval"),
    ({"multi_step_loss": 100, "engine": "learn2learn"}, "the multi-step loss and learned inner learning rates need "
                                                       "engine fewshot; the notebook's learn2learn loop has neither"),
    ({"learned_inner_lr": True, "inner_steps": 0}, "learned_inner_lr learns one rate per inner step: it needs "
                                                   "inner_steps of 1 or more"),
    ({"multi_step_loss": 100, "inner_steps": 0}, "multi_step_loss sums the query loss after every inner step: it "
                                                 "needs inner_steps of 1 or more"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(ValueError) as error:
        Config(data_root="x", **values)
    assert str(error.value) == message


def test_the_edges_of_what_is_allowed_are_allowed():
    config = Config(data_root="x", ways=2, inner_lr=0.0, inner_steps=0, test_tasks=0, shots=19, queries=1,
                    outer_lr=100)
    assert (config.ways, config.inner_lr, config.outer_lr) == (2, 0.0, 100)


@pytest.mark.parametrize("values, message", [
    ({"ways": "x"}, "ways must be a whole number, got 'x'"),
    ({"ways": 1.5}, "ways must be a whole number, got 1.5"),
    ({"ways": True}, "ways must be a whole number, got True"),
    ({"ways": None}, "ways must be a whole number, got None"),
    ({"inner_lr": "0.4"}, "inner_lr must be a number, got '0.4'"),
    ({"split": ["lake"]}, "split must be one of lake, maml-paper, got ['lake']"),
    ({"data_root": 3}, "data_root must be text, got 3"),
    ({"cosine_annealing": 1}, "cosine_annealing must be true or false, got 1"),
    ({"learned_inner_lr": "yes"}, "learned_inner_lr must be true or false, got 'yes'"),
    ({"ways": "x", "outer_lr": -1}, "ways must be a whole number, got 'x'; outer_lr must be greater than 0, got -1"),
    ({"colour": "red"}, "unknown configuration keys: colour"),
])
def test_a_garbage_dict_is_a_value_error_naming_the_field(values, message):
    with pytest.raises(ValueError) as error:
        Config.from_dict(values)
    assert str(error.value) == message


@pytest.mark.parametrize("text", ["true", "[5]", "5", "{not json", "\udcff", "[" * 100_000])
def test_a_config_file_that_is_no_configuration_is_a_value_error(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_bytes(text.encode(errors="surrogateescape"))
    with pytest.raises(ValueError):
        Config.load(path)


def test_json_numbers_round_trip(tmp_path):
    config = Config(data_root="x", inner_lr=1, outer_lr=0.003, seed=7)  # JSON may hold a learning rate of 1
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == config


def test_a_failed_save_keeps_the_saved_configuration(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    Config(data_root="x", ways=5).save(path)

    def write_half_then_fill_the_disk(self, text, *args, **kwargs):
        with open(self, "w") as file:
            file.write(text[:len(text) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", write_half_then_fill_the_disk)
    with pytest.raises(OSError):
        Config(data_root="x", ways=20).save(path)
    monkeypatch.undo()
    assert Config.load(path).ways == 5


def test_resume_refuses_the_model_shape_and_the_tasks_but_nothing_else():
    saved = Config(data_root="x")
    other = {"backbone": "fc", "channels": 32, "blocks": 3, "ways": 20, "shots": 5, "split": "maml-paper",
             "learned_inner_lr": True, "per_step_bn": True}
    assert set(other) == set(KEPT_ON_RESUME)
    for name, value in other.items():
        assert changes_refused_on_resume(saved, dataclasses.replace(saved, **{name: value})) == [name]
    assert changes_refused_on_resume(saved, dataclasses.replace(saved, ways=20, split="maml-paper")) == [
        "ways", "split"]
    # the shipped model card's recipe resumes with another outer learning rate and other queries
    allowed = dict(algorithm="fomaml", queries=10, augment="affine", data_root="y", inner_steps=2, inner_lr=0.1,
                   outer_lr=0.0005, meta_batch=16, iterations=5000, engine="learn2learn", device="cpu", seed=1,
                   init_from="m.safetensors", val_every=50, val_tasks=32, checkpoint_every=10, test_tasks=0,
                   test_inner_steps=5, probe_every=5, cosine_annealing=True, second_order_from=10, tasks_at_once=4)
    with_engine_fewshot = dict(multi_step_loss=100)
    assert set(allowed) | set(with_engine_fewshot) | set(other) == {f.name for f in dataclasses.fields(Config)}
    assert changes_refused_on_resume(saved, dataclasses.replace(saved, **allowed)) == []
    assert changes_refused_on_resume(saved, dataclasses.replace(saved, **with_engine_fewshot)) == []
    learned = dataclasses.replace(saved, learned_inner_lr=True)  # one rate per inner step: the steps are kept too
    assert changes_refused_on_resume(learned, dataclasses.replace(learned, inner_steps=2)) == ["inner_steps"]
    per_step = dataclasses.replace(saved, per_step_bn=True)  # one batch norm row per inner step: the steps are kept
    assert changes_refused_on_resume(per_step, dataclasses.replace(per_step, inner_steps=2)) == ["inner_steps"]
