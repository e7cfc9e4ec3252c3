import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewshot import maml, metrics, runs, training
from fewshot.adaptation import adapt_and_classify, adaptation_settings
from fewshot.checkpoints import load_checkpoint
from fewshot.cli import add_config_options, config_from_args, main
from fewshot.config import Config, changes_refused_on_resume
from fewshot.evaluation import TEST_SEED, evaluate
from fewshot.omniglot import split_characters
from fewshot.tasks import TaskSampler
from fewshot.training import RunInUse, initial_model, task_seed, train, training_device, warm_start

TIMING = ("seconds", "tasks_per_second", "peak_memory_mb", "training_memory_mb")  # differ from run to run


def losses(records):
    return [r["train_loss"] for r in records]


def measured(records):
    """Every metric of every record but the timing: what a resumed run must reproduce exactly."""
    return [{key: value for key, value in record.items() if key not in TIMING} for record in records]


def records_in(run_dir):
    return metrics.read(run_dir / "metrics.jsonl")[0]


def weights_in(run_dir) -> dict:
    return load_checkpoint(run_dir / "checkpoint.safetensors")[0].state_dict()


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_a_run_writes_its_directory(tiny_config, omniglot, tmp_path):
    records = train(tiny_config, tmp_path, progress=False)
    assert [r["iteration"] for r in records_in(tmp_path)] == list(range(1, 7))
    assert records_in(tmp_path) == json.loads(json.dumps(records))
    assert [r["iteration"] for r in records if "val_accuracy" in r] == [3, 6]
    assert all(r["seconds"] > 0 and r["tasks_per_second"] > 0 for r in records)
    assert Config.load(tmp_path / "config.json") == tiny_config
    model, metadata = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert metadata["iterations"] == 6 and metadata["algorithm"] == "fomaml"
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    test_tasks = TaskSampler(omniglot.ink, split_characters(omniglot, "lake")["test"], 5, 1, 5)
    expected = evaluate(model, test_tasks, tiny_config.inner_lr, tiny_config.test_inner_steps, tasks=10)
    assert evaluation == {"split": "lake/test", **expected.to_dict()}  # measured on the test characters' tasks
    assert metadata["accuracy"]["5w1s"]["accuracy"] == evaluation["accuracy"]


def test_same_seed_same_curve(tiny_config, tmp_path):
    first = train(tiny_config, tmp_path / "a", progress=False)
    second = train(tiny_config, tmp_path / "b", progress=False)
    other = train(dataclasses.replace(tiny_config, seed=1), tmp_path / "c", progress=False)
    assert losses(first) == losses(second)
    assert losses(first) != losses(other)


def test_stop_then_resume_gives_the_uninterrupted_run(tiny_config, tmp_path):
    """Stopped after iteration 4, between the checkpoints of 3 and 6, so the stop saves it itself. Resumed, the
    run records what an uninterrupted one does, validation included, and ends with the same weights."""
    full, run = tmp_path / "full", tmp_path / "run"
    train(tiny_config, full, progress=False)
    stopped = train(tiny_config, run, progress=False, should_stop=lambda: len(records_in(run)) >= 4)
    assert len(stopped) == 4 and 4 % tiny_config.checkpoint_every != 0
    assert load_checkpoint(run / "checkpoint.safetensors")[1]["iterations"] == 4
    assert not (run / "evaluation.json").exists()  # not finished, not tested
    train(tiny_config, run, resume=True, progress=False)
    assert measured(records_in(run)) == measured(records_in(full))
    assert "val_accuracy" in records_in(run)[-1]  # validation after the resume is compared too
    assert_same_weights(weights_in(run), weights_in(full))
    assert (run / "evaluation.json").read_text() == (full / "evaluation.json").read_text()


def test_resume_with_another_outer_learning_rate_uses_it(tiny_config, tmp_path):
    """A learning-rate drop: the first 3 iterations as a run of 6, the last 3 as a run resumed at a lower rate."""
    high, low = tiny_config.outer_lr, tiny_config.outer_lr / 10
    train(dataclasses.replace(tiny_config, iterations=3), tmp_path / "drop", progress=False)
    train(dataclasses.replace(tiny_config, outer_lr=low), tmp_path / "drop", resume=True, progress=False)
    train(dataclasses.replace(tiny_config, iterations=3), tmp_path / "same", progress=False)
    train(dataclasses.replace(tiny_config, outer_lr=high), tmp_path / "same", resume=True, progress=False)
    dropped, same = losses(records_in(tmp_path / "drop")), losses(records_in(tmp_path / "same"))
    assert dropped[:4] == same[:4] and dropped[4:] != same[4:]  # iteration 4 is the first at the new rate
    assert Config.load(tmp_path / "drop" / "config.json").outer_lr == low


def test_auto_device_is_the_gpu_when_there_is_one_and_cuda_without_one_is_refused():
    assert training_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert training_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            training_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="sees no Apple GPU"):
            training_device("mps")


def test_auto_device_picks_an_apple_gpu_where_torch_has_one_and_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert training_device("auto") == torch.device("mps")


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs an Apple GPU (mps)")
def test_a_tiny_run_trains_on_an_apple_gpu_as_on_the_cpu(tiny_config, tmp_path):
    cpu = losses(train(dataclasses.replace(tiny_config, device="cpu"), tmp_path / "cpu", progress=False))
    mps = losses(train(dataclasses.replace(tiny_config, device="mps"), tmp_path / "mps", progress=False))
    assert mps == pytest.approx(cpu, rel=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_run_resumed_on_the_gpu_continues_its_curve(tiny_config, tmp_path):
    """Weights and Adam's moments move to the GPU on --resume; float32 there (no TF32) follows the CPU's curve."""
    cpu = dataclasses.replace(tiny_config, device="cpu")
    uninterrupted = losses(train(cpu, tmp_path / "cpu", progress=False))
    train(dataclasses.replace(cpu, iterations=3), tmp_path / "moved", progress=False)
    train(dataclasses.replace(cpu, device="cuda"), tmp_path / "moved", resume=True, progress=False)
    assert losses(records_in(tmp_path / "moved")) == pytest.approx(uninterrupted, rel=1e-4)
    _, metadata = load_checkpoint(tmp_path / "moved" / "checkpoint.safetensors")
    assert metadata["iterations"] == 6


def test_tasks_at_once_is_the_configured_number_else_a_cpu_group_of_about_240_drawings_and_the_meta_batch_on_a_gpu():
    config = Config(meta_batch=32)  # 5-way 1-shot, 5 queries per class: 30 drawings a task's query pass
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert training.tasks_at_once(config, cpu) == 8 and training.tasks_at_once(config, gpu) == 32
    assert training.tasks_at_once(dataclasses.replace(config, shots=5), cpu) == 4  # 50 drawings
    assert training.tasks_at_once(dataclasses.replace(config, ways=20), cpu) == 2  # 120 drawings
    assert training.tasks_at_once(dataclasses.replace(config, channels=128), cpu) == 4  # twice the outputs a drawing
    assert training.tasks_at_once(dataclasses.replace(config, channels=32, queries=3), cpu) == 24
    assert training.tasks_at_once(dataclasses.replace(config, ways=50, shots=19, queries=1), cpu) == 1
    assert training.tasks_at_once(dataclasses.replace(config, backbone="fc", ways=20), cpu) == 8
    assert training.tasks_at_once(dataclasses.replace(config, tasks_at_once=4), gpu) == 4


def test_training_adapts_the_meta_batch_and_the_validation_tasks_a_group_at_a_time(tiny_config, tmp_path,
                                                                                 monkeypatch):
    adapted = []  # the number of tasks of each call of the engine, and whether it kept a graph for a meta-gradient
    task_losses = maml.task_losses
    monkeypatch.setattr(maml, "task_losses", lambda model, batch, *args, **kwargs: (
        adapted.append((len(batch), torch.is_grad_enabled())), task_losses(model, batch, *args, **kwargs))[1])
    config = dataclasses.replace(tiny_config, meta_batch=5, tasks_at_once=2, iterations=1, val_every=1,
                                 val_tasks=20, test_tasks=0)
    train(config, tmp_path, progress=False)
    assert adapted == [(2, True), (2, True), (1, True), (16, False), (4, False)]


def test_learn2learn_engine_gives_the_same_curve(tiny_config, tmp_path):
    ours = train(tiny_config, tmp_path / "fewshot", progress=False)
    notebook = train(dataclasses.replace(tiny_config, engine="learn2learn"), tmp_path / "l2l", progress=False)
    assert losses(notebook) == pytest.approx(losses(ours), rel=1e-3)


def test_ctrl_c_stops_cleanly_and_saves(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fewshot", "train", "--run-dir", str(run_dir), "--data-root",
               tiny_config.data_root, "--algorithm", "fomaml", "--channels", "8", "--blocks", "2",
               "--meta-batch", "2", "--iterations", "100000", "--val-every", "1000", "--test-tasks", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while len(records_in(run_dir)) < 3 and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Traceback" not in output
    saved = load_checkpoint(run_dir / "checkpoint.safetensors")[1]["iterations"]
    assert saved == len(records_in(run_dir)) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, bound", [("fomaml", 0.60), ("maml", 0.65)])
def test_meta_training_learns_on_real_omniglot(data_root, tmp_path, algorithm, bound):
    """150 iterations, 5-way 1-shot, first or second order: validation accuracy far above a net that does not
    meta-learn.

    Measured on a 2-core CPU, validation on 100 tasks (500 queries: a standard error of 2 points at most): the
    untrained net scores 30-39 % (seeds 0-2); FOMAML reaches 68 % (seeds 1 and 2: 66 %, 69 %), MAML 72 % (seeds
    1 and 2: 72 %, 77 %). Meta-trained with no inner step (inner_lr 0 in training only: a pretrained net, not a
    meta-learned one), both end at 35 % (FOMAML peaks at 45 % on the way). Each bound is at least 5 points (2.5
    standard errors) under every run measured, and 25 above that break.
    """
    config = Config(data_root=data_root, algorithm=algorithm, channels=32, meta_batch=16, outer_lr=0.003,
                    iterations=150, val_every=150, val_tasks=100, test_tasks=0)
    records = train(config, tmp_path, progress=False)
    assert records[-1]["val_accuracy"] > bound, records[-1]


def test_init_from_keeps_a_trained_body_and_gives_new_ways_a_fresh_classifier(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "five", progress=False)
    trained, _ = load_checkpoint(tmp_path / "five" / "checkpoint.safetensors")
    three_way = dataclasses.replace(tiny_config, ways=3, init_from=str(tmp_path / "five" / "checkpoint.safetensors"))
    model = initial_model(three_way)
    random_classifier = model.classifier.weight.clone()
    warm_start(model, three_way.init_from)
    for name, weight in trained.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(model.state_dict()[name], weight), name
    assert torch.equal(model.classifier.weight, random_classifier)  # 3 ways: not the 5-way classifier
    train(dataclasses.replace(three_way, iterations=2, test_tasks=0), tmp_path / "three", progress=False)
    assert load_checkpoint(tmp_path / "three" / "checkpoint.safetensors")[1]["ways"] == 3


def test_init_from_refuses_another_network(tiny_config, tmp_path):
    train(dataclasses.replace(tiny_config, iterations=1, test_tasks=0), tmp_path / "small", progress=False)
    wider = dataclasses.replace(tiny_config, channels=16, init_from=str(tmp_path / "small" / "checkpoint.safetensors"))
    with pytest.raises(ValueError, match="same backbone, channels and blocks"):
        train(wider, tmp_path / "wide", progress=False)


def test_a_second_trainer_of_the_same_run_is_refused(tiny_config, tmp_path):
    first = train(dataclasses.replace(tiny_config, iterations=2, test_tasks=0), tmp_path, progress=False)
    refused = []

    def try_second_trainer():  # called by the first trainer, while it holds the run
        with pytest.raises(RunInUse, match="being trained by another process"):
            train(tiny_config, tmp_path, resume=True, progress=False)
        refused.append(True)
        return True

    train(tiny_config, tmp_path, resume=True, progress=False, should_stop=try_second_trainer)
    assert refused and [r["iteration"] for r in records_in(tmp_path)] == [r["iteration"] for r in first]
    train(dataclasses.replace(tiny_config, iterations=3, test_tasks=0), tmp_path, resume=True, progress=False)
    assert [r["iteration"] for r in records_in(tmp_path)] == [1, 2, 3]  # released once the first returned


class Died(BaseException):
    """A process dying where the test says: nothing after it runs, as with kill -9."""


def test_a_death_between_the_training_state_and_the_checkpoint_leaves_a_resumable_run(tiny_config, tmp_path,
                                                                                    monkeypatch):
    uninterrupted = losses(train(tiny_config, tmp_path / "full", progress=False))
    saves = []

    def save_then_die(path, model, metadata):
        saves.append(metadata["iterations"])
        raise Died  # after the training state of iteration 3 was written, before its checkpoint

    monkeypatch.setattr("fewshot.training.save_checkpoint", save_then_die)
    with pytest.raises(Died):
        train(tiny_config, tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert saves == [3] and not (tmp_path / "run" / "checkpoint.safetensors").exists()
    train(tiny_config, tmp_path / "run", resume=True, progress=False)
    assert losses(records_in(tmp_path / "run")) == uninterrupted
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")[1]["iterations"] == 6


@pytest.mark.parametrize("death, saved", [(2, 0), (5, 3)])  # before the first save; two records after it
def test_a_run_that_died_resumes_from_its_last_save_and_records_each_iteration_once(tiny_config, tmp_path,
                                                                                    death, saved):
    """The records after its last save, and a half-written last line, are dropped: no iteration appears twice,
    and the resumed run records what an uninterrupted one does."""
    full, run = tmp_path / "full", tmp_path / "run"
    train(tiny_config, full, progress=False)

    def die(record):
        if record["iteration"] == death:
            raise Died

    with pytest.raises(Died):
        train(tiny_config, run, progress=False, on_record=die)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(f'{{"iteration": {death + 1}, "train_lo')  # killed while writing a record
    assert [r["iteration"] for r in records_in(run)] == list(range(1, death + 1))
    assert (run / "checkpoint.safetensors").exists() == (saved > 0)
    assert not saved or load_checkpoint(run / "checkpoint.safetensors")[1]["iterations"] == saved
    train(tiny_config, run, resume=True, progress=False)
    assert [r["iteration"] for r in records_in(run)] == list(range(1, 7))
    assert measured(records_in(run)) == measured(records_in(full))


def test_ctrl_c_during_the_final_save_still_saves_and_the_run_resumes(tiny_config, tmp_path, monkeypatch):
    from fewshot import training
    real_save = training.save_checkpoint

    def save_with_a_ctrl_c(path, model, metadata):
        if metadata["iterations"] == tiny_config.iterations:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the last iteration is being saved
        real_save(path, model, metadata)

    monkeypatch.setattr(training, "save_checkpoint", save_with_a_ctrl_c)
    train(tiny_config, tmp_path, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["iterations"] == 6
    assert not (tmp_path / "evaluation.json").exists()  # stopped: the test evaluation is left for later
    train(tiny_config, tmp_path, resume=True, progress=False)
    assert json.loads((tmp_path / "evaluation.json").read_text())["tasks"] == tiny_config.test_tasks
    assert [r["iteration"] for r in records_in(tmp_path)] == list(range(1, 7))


def test_each_part_of_a_run_draws_its_tasks_from_its_own_characters(tiny_config, omniglot, tmp_path,
                                                                   monkeypatch):
    """Meta-training draws from the train characters, augmented; validation from the validation characters and
    the final evaluation from the test characters, neither augmented. Each sampler records every draw."""
    split = split_characters(omniglot, "lake")
    name_of = {tuple(characters): name for name, characters in split.items()}
    draws = []  # (the characters' set, augment, seed) of every sample() call

    class RecordingSampler(TaskSampler):
        def sample(self, tasks, seed):
            draws.append((name_of.get(tuple(self.characters.tolist()), "other characters"), self.augment, seed))
            return super().sample(tasks, seed)

    monkeypatch.setattr(training, "TaskSampler", RecordingSampler)
    config = dataclasses.replace(tiny_config, iterations=2, augment="affine")
    train(config, tmp_path, progress=False)
    assert sorted(draws, key=lambda draw: draw[2]) == [  # by seed: validation's, iteration 1's and 2's, test's
        ("val", "none", task_seed(config.seed, 0)),
        ("train", "affine", task_seed(config.seed, 1)),
        ("train", "affine", task_seed(config.seed, 2)),
        ("test", "none", TEST_SEED)]


def training_arguments(run_dir, data_root, *options) -> list:
    """`python -m fewshot`'s arguments for a tiny FOMAML run in `run_dir`, with `options` added."""
    return ["train", "--run-dir", str(run_dir), "--data-root", data_root, "--algorithm", "fomaml", "--channels", "8",
            "--blocks", "2", "--meta-batch", "2", "--val-every", "1000", "--test-tasks", "0", *options]


def start_training(run_dir, data_root, *options):
    command = [sys.executable, "-m", "fewshot", *training_arguments(run_dir, data_root, *options)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def seconds_to_exit(process, timeout=60) -> float:
    tick = time.time()
    process.communicate(timeout=timeout)
    return time.time() - tick


def test_a_stop_ends_a_run_within_seconds_while_it_loads_or_in_a_long_iteration(data_root, tmp_path):
    from fewshot.training import STOP_GRACE
    for delay in (0.3, 1.5):  # importing torch, loading Omniglot: no iteration yet
        loading = start_training(tmp_path / f"loading-{delay}", data_root, "--iterations", "10000")
        time.sleep(delay)
        loading.send_signal(signal.SIGINT)
        assert seconds_to_exit(loading) < STOP_GRACE + 2

    slow = start_training(tmp_path / "slow", data_root, "--iterations", "100", "--meta-batch", "1280",
                          "--inner-steps", "100")  # over 10 s an iteration
    deadline = time.time() + 600  # a busy machine takes minutes
    while not records_in(tmp_path / "slow") and time.time() < deadline:
        time.sleep(0.1)
    assert records_in(tmp_path / "slow"), "no iteration done in 10 minutes"
    slow.send_signal(signal.SIGINT)  # early in iteration 2
    assert seconds_to_exit(slow) < STOP_GRACE + 2 and slow.returncode == 0
    saved = load_checkpoint(tmp_path / "slow" / "checkpoint.safetensors")[1]["iterations"]
    assert saved == 1 and [r["iteration"] for r in records_in(tmp_path / "slow")] == [1]
    main(training_arguments(tmp_path / "slow", data_root, "--iterations", "1", "--resume"))  # here: torch is loaded
    assert [r["iteration"] for r in records_in(tmp_path / "slow")] == [1]


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_curve(data_root):
    """A short round of scripts/kill_loop.py: six kills at random moments, each run resumed to its end."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "kill_loop.py"
    result = subprocess.run([sys.executable, str(script), "--kills", "6", "--seed", "3", "--data-root", data_root],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"failures": []' in result.stdout and "finished: consistent with the uninterrupted run" in result.stdout


def test_multi_step_loss_weights_go_from_equal_to_the_last_step_alone():
    """MAML++'s schedule: step j of N weighs (1 - t) / N, and the last one t more, t = iteration / multi_step_loss."""
    config = Config(data_root="x", inner_steps=4, multi_step_loss=100)
    assert training.multi_step_weights(config, 50) == pytest.approx([1 / 8, 1 / 8, 1 / 8, 1 / 8 + 1 / 2])
    assert training.multi_step_weights(config, 1) == pytest.approx([0.25] * 4, abs=0.01)
    schedule = [training.multi_step_weights(config, iteration) for iteration in range(1, 100)]
    assert all(sum(weights) == pytest.approx(1) for weights in schedule)
    assert all(later[-1] > earlier[-1] and later[0] < earlier[0] for earlier, later in zip(schedule, schedule[1:]))
    assert training.multi_step_weights(config, 100) is None and training.multi_step_weights(config, 101) is None
    assert training.multi_step_weights(dataclasses.replace(config, multi_step_loss=0), 1) is None  # off


def test_a_multi_step_loss_run_trains_on_plain_mamls_loss_once_its_weights_are_annealed(tiny_config, tmp_path):
    """multi_step_loss 3: the multi-step loss at iterations 1 and 2, plain MAML's loss from 3 on, bit for bit what a
    run that stops after 2 and resumes with the option off computes."""
    msl = dataclasses.replace(tiny_config, inner_steps=2, multi_step_loss=3, test_tasks=0)
    annealed = train(msl, tmp_path / "msl", progress=False)
    train(dataclasses.replace(msl, iterations=2), tmp_path / "off", progress=False)
    train(dataclasses.replace(msl, multi_step_loss=0), tmp_path / "off", resume=True, progress=False)
    assert losses(records_in(tmp_path / "off")) == losses(annealed)  # (it validated at 2 as well)
    assert_same_weights(weights_in(tmp_path / "off"), weights_in(tmp_path / "msl"))
    plain = train(dataclasses.replace(msl, multi_step_loss=0), tmp_path / "plain", progress=False)
    assert losses(annealed)[0] != losses(plain)[0]  # the weighted loss of both steps, not the last step's
    assert losses(annealed)[2:] != losses(plain)[2:]  # its first two updates differ from plain MAML's


def test_cosine_annealing_takes_the_outer_learning_rate_down_a_cosine_and_a_resumed_run_follows_it(
        tiny_config, tmp_path, monkeypatch):
    """Adam's learning rate at each update, across a stop and a resume: outer_lr * (0.01 + 0.99 * (1 + cos(pi *
    (i - 1) / iterations)) / 2) at iteration i, from outer_lr at the first down towards outer_lr / 100."""
    used, step = [], torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    cosine = dataclasses.replace(tiny_config, cosine_annealing=True, test_tasks=0)
    train(cosine, tmp_path / "run", progress=False, should_stop=lambda: len(records_in(tmp_path / "run")) >= 4)
    train(cosine, tmp_path / "run", resume=True, progress=False)
    beta, n = cosine.outer_lr, cosine.iterations
    assert used == pytest.approx([beta * (0.01 + 0.99 * (1 + math.cos(math.pi * (i - 1) / n)) / 2)
                                  for i in range(1, n + 1)], rel=1e-12)
    assert used[0] == beta and used[-1] < beta / 10
    used.clear()
    train(dataclasses.replace(cosine, cosine_annealing=False), tmp_path / "constant", progress=False)
    assert used == [beta] * n  # off: outer_lr throughout


def test_second_order_from_gives_fomamls_meta_gradient_before_it_and_mamls_from_it_on():
    """On one batch, in float64: the meta-gradient of an iteration before second_order_from is FOMAML's, bit for bit,
    and from it on MAML's."""
    torch.manual_seed(0)
    model = initial_model(Config(data_root="x", channels=8, blocks=2)).double()
    batch = TaskSampler(torch.rand(30, 20, 28, 28), list(range(30)), 5, 1, 2).sample(3, seed=1).to(torch.float64)

    def meta_gradient(first_order):
        model.zero_grad()
        maml.meta_backward(model, batch, 0.4, 2, first_order)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    fomaml, second_order = meta_gradient(True), meta_gradient(False)
    assert (fomaml - second_order).abs().max() > 1e-4 * second_order.abs().max()
    config = Config(data_root="x", algorithm="maml", second_order_from=10)
    for iteration, expected in ((1, fomaml), (9, fomaml), (10, second_order), (11, second_order)):
        assert torch.equal(meta_gradient(training.first_order_at(config, iteration)), expected), iteration
    assert not training.first_order_at(dataclasses.replace(config, second_order_from=0), 1)  # 0: maml throughout
    assert training.first_order_at(dataclasses.replace(config, algorithm="fomaml", second_order_from=0), 10**6)


def test_a_run_switched_to_second_order_at_an_iteration_is_a_fomaml_run_resumed_there_as_maml(tiny_config, tmp_path):
    """second_order_from 3: FOMAML's updates at iterations 1 and 2, MAML's from 3 on, as a FOMAML run of 2
    iterations resumed as MAML; the first- against second-order probe measures second-order iterations only."""
    switched = dataclasses.replace(tiny_config, algorithm="maml", second_order_from=3, test_tasks=0, probe_every=1)
    records = train(switched, tmp_path / "switched", progress=False)
    resumed = dataclasses.replace(switched, second_order_from=0, probe_every=25)
    train(dataclasses.replace(resumed, algorithm="fomaml", iterations=2), tmp_path / "resumed", progress=False)
    train(resumed, tmp_path / "resumed", resume=True, progress=False)
    assert losses(records) == losses(records_in(tmp_path / "resumed"))
    assert_same_weights(weights_in(tmp_path / "switched"), weights_in(tmp_path / "resumed"))
    second_order = train(dataclasses.replace(resumed, iterations=3), tmp_path / "maml", progress=False)
    assert losses(second_order)[2] != losses(records)[2]  # the first two updates differ from MAML's
    assert [record["iteration"] for record in records if "probe" in record] == [3, 4, 5, 6]


def test_learned_inner_lrs_are_learned_saved_resumed_and_used_by_validation_and_test_time(tiny_config, omniglot,
                                                                                         tmp_path, capsys):
    """A stopped and resumed run learns the rates an uninterrupted one does; validation adapts with them, and so
    do the final evaluation, `evaluate` and the Draw page, their third test-time step with the second step's
    rates."""
    learned = dataclasses.replace(tiny_config, inner_steps=2, learned_inner_lr=True, test_inner_steps=3)
    full, run = tmp_path / "full", tmp_path / "run"
    records = train(learned, full, progress=False)
    train(learned, run, progress=False, should_stop=lambda: len(records_in(run)) >= 4)
    train(learned, run, resume=True, progress=False)
    assert measured(records_in(run)) == measured(records)
    model, metadata = load_checkpoint(full / "checkpoint.safetensors")
    rates = metadata["inner_lrs"]
    assert rates.keys() == dict(model.named_parameters()).keys() and all(r.shape == (2,) for r in rates.values())
    moved = {name for name, r in rates.items() if (r != learned.inner_lr).all()}  # learned: both steps' rates
    assert moved == {name for name in rates if not name.endswith("layer.bias")}  # batch norm cancels those biases
    resumed = load_checkpoint(run / "checkpoint.safetensors")[1]["inner_lrs"]
    assert all(torch.equal(rates[name], resumed[name]) for name in rates)

    split = split_characters(omniglot, "lake")
    val_batch = TaskSampler(omniglot.ink, split["val"], 5, 1, 5).sample(learned.val_tasks, seed=task_seed(0, 0))
    with torch.no_grad():
        val_loss = maml.task_losses(model, val_batch, rates, 2, first_order=True)[0].mean().item()
    assert records[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    test_tasks = TaskSampler(omniglot.ink, split["test"], 5, 1, 5)
    with_rates = evaluate(model, test_tasks, rates, 3, tasks=10)
    assert json.loads((full / "evaluation.json").read_text()) == {"split": "lake/test", **with_rates.to_dict()}
    assert with_rates.loss != evaluate(model, test_tasks, learned.inner_lr, 3, tasks=10).loss
    main(["evaluate", str(full / "checkpoint.safetensors"), "--tasks", "10", "--data-root", learned.data_root])
    assert str(with_rates) in capsys.readouterr().out

    settings = adaptation_settings(metadata)  # the Draw page's
    assert settings["inner_lr"] is rates and settings["steps"] == 3
    model = model.double()
    support_x, support_y = val_batch.support_x[0].double(), val_batch.support_y[0]
    adaptation = adapt_and_classify(model, support_x, support_y, settings["inner_lr"], settings["steps"])
    two_rates = maml.adapt(model, dict(model.named_parameters()), support_x, support_y, rates, 3, first_order=True)
    for name, weight in two_rates.items():
        torch.testing.assert_close(adaptation.params[name], weight, rtol=0, atol=1e-10)


def test_a_run_that_learns_its_inner_lrs_keeps_them_and_its_inner_steps_when_it_resumes(tiny_config, tmp_path):
    learned = dataclasses.replace(tiny_config, learned_inner_lr=True, iterations=1, test_tasks=0)
    train(learned, tmp_path, progress=False)
    for change in ({"learned_inner_lr": False}, {"inner_steps": 2}):
        with pytest.raises(ValueError, match=f"--resume cannot change {next(iter(change))} "):
            train(dataclasses.replace(learned, iterations=2, **change), tmp_path, resume=True, progress=False)
    assert changes_refused_on_resume(tiny_config, dataclasses.replace(tiny_config, inner_steps=2)) == []


def test_the_maml_plus_plus_options_reach_a_run_through_the_command_line_that_the_app_writes():
    """The app starts a run as `python -m fewshot train --name value ...` (runs.config_arguments): a true-or-false
    option then reads True or False; typed by hand, --option alone turns it on."""
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    for config in (Config(data_root="x"), Config(data_root="x", inner_steps=2, multi_step_loss=50,
                                                 cosine_annealing=True, second_order_from=20, learned_inner_lr=True)):
        assert config_from_args(parser.parse_args(runs.config_arguments(config))) == config
    typed = config_from_args(parser.parse_args(["--cosine-annealing", "--learned-inner-lr", "--iterations", "3"]))
    assert typed.cosine_annealing and typed.learned_inner_lr and typed.iterations == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--cosine-annealing", "maybe"])
