"""What one server lets a class ask of it (fewshot/limits.py), runs.start refusing more, and the queue of runs
waiting for a place to train."""

import dataclasses
import os
import subprocess
import sys
import threading

import pytest

from fewshot import limits, runs
from fewshot.config import REPO_ROOT, Config
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


def test_memory_estimate_grows_with_every_size_of_what_is_adapted_at_once():
    meta_update = Config(val_tasks=1, test_tasks=0, tasks_at_once=8)  # no evaluation to speak of; the automatic
    # group would take fewer of the larger tasks (training.tasks_at_once)
    for change in (dict(channels=128), dict(blocks=6), dict(ways=10), dict(shots=2), dict(queries=10),
                   dict(inner_steps=2), dict(tasks_at_once=16), dict(val_tasks=32), dict(test_tasks=100)):
        assert limits.memory_gb(dataclasses.replace(meta_update, **change)) > limits.memory_gb(meta_update), change
    three_steps = dataclasses.replace(meta_update, inner_steps=3)  # MAML++'s loss: a query pass after every step
    assert limits.memory_gb(dataclasses.replace(three_steps, multi_step_loss=100)) > limits.memory_gb(three_steps)


def test_memory_estimate_is_that_of_one_group_of_tasks_adapted_at_once():
    """Meta-updates, validations and tests adapt a group of tasks at a time: more tasks cost time, not memory."""
    config = Config(val_tasks=1, test_tasks=0)
    for name, few, many in (("meta_batch", 32, 128), ("val_tasks", 32, 500), ("test_tasks", 32, 2000)):
        assert limits.memory_gb(dataclasses.replace(config, **{name: few})) == limits.memory_gb(
            dataclasses.replace(config, **{name: many})), name
    assert limits.memory_gb(dataclasses.replace(config, tasks_at_once=64)) == limits.memory_gb(
        dataclasses.replace(config, tasks_at_once=32))  # no more than the meta-batch's 32


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
        with pytest.raises(ValueError, match=f"^FEWSHOT_MAX_RUNS must be a whole number from 1 to 1,000,000,000, "
                                             f"got '{bad}'$"):
            limits.max_runs()
    assert limits.maximum("seed") is None  # no limit of this server


@pytest.mark.parametrize("variable, value, least", [
    ("FEWSHOT_MAX_WAYS", "1", 2),  # a task tells 2 classes apart at least: the form's field would take no value
    ("FEWSHOT_MAX_CHANNELS", "-3", 1), ("FEWSHOT_MAX_INNER_STEPS", "0", 1), ("FEWSHOT_MAX_ITERATIONS", "abc", 1),
    ("FEWSHOT_MAX_META_BATCH", str(10**20), 1),  # over 2**53 - 1, a form's number field raises
])
def test_a_limit_that_no_form_field_could_take_is_refused_naming_its_variable(monkeypatch, variable, value, least):
    name = variable.removeprefix("FEWSHOT_MAX_").lower()
    assert limits.FIELDS[name].metadata["at_least"] <= least
    monkeypatch.setenv(variable, value)
    message = f"{variable} must be a whole number from {least} to 1,000,000,000, got '{value}'"
    with pytest.raises(ValueError) as error:
        limits.maximum(name)
    assert str(error.value) == message
    assert limits.setting_problems() == [message]
    monkeypatch.setenv(variable, str(least))
    assert limits.maximum(name) == least and limits.setting_problems() == []


def test_every_bad_setting_is_one_line_of_setting_problems(monkeypatch):
    assert limits.setting_problems() == []
    for variable, value in (("FEWSHOT_MAX_WAYS", "1"), ("FEWSHOT_MAX_MEMORY_GB", "inf"), ("FEWSHOT_MAX_RUNS", "x")):
        monkeypatch.setenv(variable, value)
    assert limits.setting_problems() == [
        "FEWSHOT_MAX_WAYS must be a whole number from 2 to 1,000,000,000, got '1'",
        "FEWSHOT_MAX_MEMORY_GB must be a positive number, got 'inf'",
        "FEWSHOT_MAX_RUNS must be a whole number from 1 to 1,000,000,000, got 'x'"]
    for bad in ("nan", "0", "-2", "1e400"):
        monkeypatch.setenv("FEWSHOT_MAX_MEMORY_GB", bad)
        with pytest.raises(ValueError, match="^FEWSHOT_MAX_MEMORY_GB must be a positive number"):
            limits.max_memory_gb()


def test_start_refuses_a_configuration_over_the_limits_and_starts_nothing(runs_folder):
    config = Config(channels=1024, ways=60)
    for start in (runs.start, runs.start_comparison):
        with pytest.raises(ValueError) as refusal:
            start(config, runs_folder)
        assert str(refusal.value).splitlines() == limits.check(config)
    assert not runs_folder.exists()


def test_runs_beyond_the_limit_wait_in_a_queue_and_start_in_order_as_places_free(runs_folder, long_config,
                                                                                 monkeypatch):
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "2")
    first = runs.start(long_config, runs_folder)
    pair = runs.start_comparison(long_config, runs_folder)  # needs two places, one is free: both wait
    last = runs.start(long_config, runs_folder)  # one place would be free, but the pair came first
    assert first.is_running() and [run.status() for run in pair + [last]] == [runs.QUEUED] * 3
    assert [runs.queue_place(run) for run in pair + [last]] == [0, 0, 2]
    assert runs.dispatch(runs_folder) == []  # still no room for the pair
    stop(first)
    assert sorted(runs.dispatch(runs_folder), key=pair.index) == pair  # together
    assert all(run.is_running() for run in pair) and last.status() == runs.QUEUED
    assert runs.queue_place(last) == 0
    runs.stop(last)  # leaves the queue, and never starts
    stop(pair[0])
    assert runs.dispatch(runs_folder) == [] and last.status() == runs.STOPPED
    assert sum(run.is_running() for run in runs.list_runs(runs_folder)) == 1
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    with pytest.raises(ValueError, match=r"^A comparison trains 2 runs at once; this server trains at most 1 "):
        runs.start_comparison(long_config, runs_folder)


def test_the_queue_is_bounded(runs_folder, long_config, monkeypatch):
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    monkeypatch.setattr(runs, "MAX_QUEUED", 2)
    monkeypatch.setattr(runs, "dispatch", lambda root=None: [])  # nothing starts: every run stays queued
    runs.start(long_config, runs_folder)
    runs.start(long_config, runs_folder)
    with pytest.raises(ValueError, match="^2 runs are waiting to train already, the most this server queues is 2"):
        runs.start(long_config, runs_folder)
    assert len(runs.list_runs(runs_folder)) == 2


def test_a_queued_run_is_started_by_another_process_after_a_restart(runs_folder, long_config, monkeypatch):
    """The queue is in the runs folder: a server started later (here, another process) starts what waits."""
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    monkeypatch.setattr(runs, "dispatch", lambda root=None: [])  # the server that queued it goes away
    run = runs.start(long_config, runs_folder)
    assert run.status() == runs.QUEUED
    monkeypatch.undo()
    subprocess.run([sys.executable, "-c", f"from fewshot import runs; runs.dispatch({str(runs_folder)!r})"],
                   check=True, cwd=REPO_ROOT, env=dict(os.environ, FEWSHOT_MAX_RUNS="1"))
    assert run.status() == runs.RUNNING and run.launch()["arguments"] == runs.config_arguments(long_config)


def test_two_starts_at_once_never_train_more_than_the_limit(runs_folder, long_config, monkeypatch):
    """Both sessions count the runs before either has started its own: only one may then start, the other
    waits in the queue."""
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    both_counting, list_runs = threading.Barrier(2, timeout=3), runs.list_runs

    def count_together(root=None):
        found = list_runs(root)
        try:
            both_counting.wait()  # with the queue's lock, the other session waits for the lock instead
        except threading.BrokenBarrierError:
            pass
        return found

    monkeypatch.setattr(runs, "list_runs", count_together)
    started = outcomes_at_once(lambda: runs.start(long_config, runs_folder))
    assert sorted(run.status() for run in started) == [runs.QUEUED, runs.RUNNING]