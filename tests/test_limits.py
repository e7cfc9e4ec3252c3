"""What one server lets a class ask of it (fewshot/limits.py), and runs.start refusing more."""

import dataclasses
import threading

import pytest

from fewshot import limits, runs
from fewshot.config import Config
from fewshot.presets import PRESETS, preset
from waiting import outcomes_at_once, wait_for

NOTEBOOK = dict(backbone="conv", channels=128, blocks=3, ways=5, shots=5, meta_batch=32)  # the original notebook's


@pytest.fixture
def runs_folder(tmp_path):
    """A runs folder; every run a test started there is stopped at its end."""
    yield tmp_path / "runs"
    for run in runs.list_runs(tmp_path / "runs"):
        stop(run)


def stop(run: runs.Run) -> None:
    """Stops the run once it trains (a signal while it imports torch can be lost) and waits for its end."""
    wait_for(lambda: run.metrics() or not run.is_running(), "the run to train")
    runs.stop(run)
    wait_for(lambda: not run.is_running(), "the run to stop")


@pytest.fixture
def long_config(tiny_config) -> Config:
    """A tiny run that trains until it is stopped."""
    return dataclasses.replace(tiny_config, iterations=100_000)


def test_the_defaults_the_presets_and_the_notebooks_settings_are_within_the_limits():
    for config in [Config(), Config(**NOTEBOOK), *(preset(name) for name in PRESETS)]:
        assert limits.check(config) == [], config


def test_check_names_every_problem_on_a_line_of_its_own():
    config = Config(channels=1024, blocks=7, meta_batch=1000, iterations=10**6)
    problems = limits.check(config)
    assert problems[:4] == [
        "channels must be at most 256 here, got 1024 (FEWSHOT_MAX_CHANNELS sets this limit)",
        "blocks must be at most 6 here, got 7 (FEWSHOT_MAX_BLOCKS sets this limit)",
        "meta_batch must be at most 128 here, got 1000 (FEWSHOT_MAX_META_BATCH sets this limit)",
        "iterations must be at most 100000 here, got 1000000 (FEWSHOT_MAX_ITERATIONS sets this limit)"]
    [memory] = problems[4:]
    assert memory.startswith("this run would need about ") and "over the 8 GB a run may use here" in memory
    assert all("\n" not in problem for problem in problems)


def test_sizes_each_within_its_maximum_can_still_ask_too_much_memory_together():
    config = Config(ways=50, shots=10, queries=10, meta_batch=128)
    [problem] = limits.check(config)
    assert problem.startswith(f"this run would need about {limits.memory_gb(config):.1f} GB of memory")
    assert limits.memory_gb(config) > 8 > limits.memory_gb(Config(**NOTEBOOK))


def test_memory_estimate_grows_with_every_size_and_is_that_of_the_largest_phase():
    meta_update = Config(val_tasks=1, test_tasks=0)  # no evaluation to speak of
    for change in (dict(channels=128), dict(blocks=6), dict(ways=10), dict(shots=2), dict(queries=10),
                   dict(meta_batch=64), dict(inner_steps=2), dict(val_tasks=500), dict(test_tasks=100)):
        assert limits.memory_gb(dataclasses.replace(meta_update, **change)) > limits.memory_gb(meta_update), change
    testing = [limits.memory_gb(dataclasses.replace(meta_update, test_tasks=tasks)) for tasks in (100, 600)]
    assert testing[0] == testing[1]  # tested 100 tasks at a time


def test_the_instructor_changes_the_limits_with_environment_variables(monkeypatch):
    config = Config(channels=512, meta_batch=4, val_tasks=4, test_tasks=4)
    assert limits.check(config) == ["channels must be at most 256 here, got 512 "
                                    "(FEWSHOT_MAX_CHANNELS sets this limit)"]
    monkeypatch.setenv("FEWSHOT_MAX_CHANNELS", "512")
    assert limits.maximum("channels") == 512 and limits.check(config) == []
    monkeypatch.setenv("FEWSHOT_MAX_MEMORY_GB", "0.5")
    assert limits.max_memory_gb() == 0.5 and len(limits.check(Config())) == 1
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "7")
    assert limits.max_runs() == 7
    for bad in ("many", "0", "-1", "1.5", "nan"):
        monkeypatch.setenv("FEWSHOT_MAX_RUNS", bad)
        with pytest.raises(ValueError, match=f"FEWSHOT_MAX_RUNS must be a positive whole number, got '{bad}'"):
            limits.max_runs()
    assert limits.maximum("seed") is None  # no limit of this server


def test_start_refuses_a_configuration_over_the_limits_and_starts_nothing(runs_folder):
    config = Config(channels=1024, ways=60)
    for start in (runs.start, runs.start_comparison):
        with pytest.raises(ValueError) as refusal:
            start(config, runs_folder)
        assert str(refusal.value).splitlines() == limits.check(config)
    assert not runs_folder.exists()


def test_start_refuses_more_runs_than_the_limit_naming_those_training(runs_folder, long_config, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "2")
    first = runs.start(long_config, runs_folder)
    with pytest.raises(ValueError) as refusal:
        runs.start_comparison(long_config, runs_folder)  # both, or neither
    assert str(refusal.value) == (f"1 run is training (limit 2), and a comparison starts 2 at once: {first.name}. "
                                  "Stop one, or wait.")
    second = runs.start(long_config, runs_folder)
    with pytest.raises(ValueError) as refusal:
        runs.start(long_config, runs_folder)
    assert str(refusal.value) == f"2 runs are training (limit 2): {second.name}, {first.name}. Stop one, or wait."
    assert runs.list_runs(runs_folder) == [second, first]
    stop(first)
    runs.start(long_config, runs_folder)  # a place is free again
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    with pytest.raises(ValueError, match=r"^A comparison trains 2 runs at once; this server trains at most 1 "):
        runs.start_comparison(long_config, runs_folder)


def test_two_starts_at_once_cannot_both_pass_the_limit(runs_folder, long_config, monkeypatch):
    """Both sessions count the runs before either has started its own: only one may then start."""
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    both_counting, list_runs = threading.Barrier(2, timeout=3), runs.list_runs

    def count_together(root=None):
        found = list_runs(root)
        try:
            both_counting.wait()  # with the start lock, the other session waits for the lock instead
        except threading.BrokenBarrierError:
            pass
        return found

    monkeypatch.setattr(runs, "list_runs", count_together)
    outcomes = outcomes_at_once(lambda: runs.start(long_config, runs_folder))
    started = [outcome for outcome in outcomes if isinstance(outcome, runs.Run)]
    refused = [str(outcome) for outcome in outcomes if isinstance(outcome, ValueError)]
    assert len(started) == 1 and refused == [f"1 run is training (limit 1): {started[0].name}. Stop one, or wait."]
