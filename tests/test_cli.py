import errno
import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from fewshot import cli, files, metrics
from fewshot.checkpoints import checkpoint_metadata, load_checkpoint, save_checkpoint
from fewshot.config import Config
from fewshot.evaluation import TEST_SEED, evaluate
from fewshot.models import build_model
from fewshot.omniglot import ALPHABETS, split_characters
from fewshot.tasks import TaskSampler

TINY_RUN = ("--algorithm", "fomaml", "--channels", 8, "--blocks", 2, "--meta-batch", 2, "--iterations", 2,
            "--val-every", 2, "--val-tasks", 2, "--test-tasks", 0, "--device", "cpu")


def fewshot(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "fewshot", *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def error_of(*args) -> str:
    """The message with which `python -m fewshot args` exits, run in this process: one line, "error: ..."."""
    with pytest.raises(SystemExit) as exit:
        cli.main([str(arg) for arg in args])
    message = exit.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def printed(capsys, *args) -> str:
    """What `python -m fewshot args` prints, run in this process: a process of its own imports torch again, 3 to 4 s
    on 2 busy cores. The program itself runs in the tests of --help, of a junk checkpoint, of train and of bench."""
    cli.main([str(arg) for arg in args])
    return capsys.readouterr().out


def test_help_lists_the_commands_and_options(capsys):
    assert all(c in fewshot("--help").stdout for c in ("train", "evaluate", "bench"))
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--help"])
    assert exit.value.code == 0 and "--inner-lr" in capsys.readouterr().out


def evaluated_here(omniglot, checkpoint, shots: int, characters="test", seed=TEST_SEED, transductive=False,
                   within_alphabet=False) -> str:
    """evaluate's printed result for 20 tasks of `checkpoint`, computed in this process from the given options;
    within one alphabet, upright characters (no rotations)."""
    model, metadata = load_checkpoint(checkpoint)
    chosen = split_characters(omniglot, "lake")[characters]
    alphabets = [omniglot.alphabet(c) for c in chosen] if within_alphabet else None
    sampler = TaskSampler(omniglot.ink, chosen, metadata["ways"], shots, 5, rotations=not within_alphabet,
                          alphabets=alphabets)
    return str(evaluate(model, sampler, metadata["inner_lr"], metadata["test_inner_steps"], 20, seed=seed,
                        transductive=transductive))


def assert_prints_the_result_of(output: str, omniglot, checkpoint, shots: int, **option) -> None:
    """`output` holds the result computed here with `option` (characters, seed, transductive, within_alphabet); and that
    result's numbers differ from those without the option, so a CLI that ignored it would fail."""
    with_option, without = (evaluated_here(omniglot, checkpoint, shots, **option),
                            evaluated_here(omniglot, checkpoint, shots))
    assert with_option in output
    assert with_option.split(" (")[0] != without.split(" (")[0]  # "accuracy 31.20 % +- 4.10 %" of each


def test_train_then_evaluate(data_root, omniglot, tmp_path, capsys):
    """Every result printed is the one computed here with the same options: on the val characters, another
    seed, transductive batch norm."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoint.safetensors"
    fewshot("train", "--run-dir", run, "--data-root", data_root, "--algorithm", "fomaml", "--channels", 8,
            "--blocks", 2, "--meta-batch", 2, "--iterations", 3, "--val-every", 3, "--test-tasks", 0)
    output = printed(capsys, "evaluate", checkpoint, "--data-root", data_root, "--tasks", 20, "--shots", 2, "--record")
    assert "5-way 2-shot on lake/test: accuracy" in output and "20 tasks" in output
    assert evaluated_here(omniglot, checkpoint, 2) in output
    recorded = load_checkpoint(checkpoint)[1]["accuracy"]["5w2s"]
    assert recorded["tasks"] == 20 and recorded["queries"] == 5 and f"{100 * recorded['accuracy']:.2f} %" in output
    transductive = printed(capsys, "evaluate", checkpoint, "--data-root", data_root, "--tasks", 20, "--shots", 2,
                           "--transductive")
    assert "5-way 2-shot on lake/test: accuracy" in transductive and "transductive batch norm" in transductive
    assert_prints_the_result_of(transductive, omniglot, checkpoint, 2, transductive=True)
    assert "drop --transductive" in error_of("evaluate", checkpoint, "--transductive", "--record")
    held_out = printed(capsys, "evaluate", checkpoint, "--data-root", data_root, "--tasks", 20, "--characters", "val")
    assert "5-way 1-shot on lake/val: accuracy" in held_out
    assert_prints_the_result_of(held_out, omniglot, checkpoint, 1, characters="val")
    assert "drop --characters val" in error_of("evaluate", checkpoint, "--characters", "val", "--record")
    other_tasks = printed(capsys, "evaluate", checkpoint, "--data-root", data_root, "--tasks", 20, "--shots", 2,
                          "--seed", 123)
    assert "5-way 2-shot on lake/test, seed 123: accuracy" in other_tasks
    assert_prints_the_result_of(other_tasks, omniglot, checkpoint, 2, seed=123)
    assert "drop --seed" in error_of("evaluate", checkpoint, "--seed", 123, "--record")
    assert load_checkpoint(checkpoint)[1]["accuracy"] == {"5w2s": recorded}
    assert "--resume" in error_of("train", "--run-dir", run, "--data-root", data_root)


def test_train_resume_continues_a_run_with_its_saved_options_and_a_new_learning_rate(data_root, tmp_path):
    """The model card's recipe: `train --run-dir X --resume --iterations M`, here with a lower --outer-lr. The
    run keeps its records and options, and trains the iterations after the ones it has, each once."""
    run = tmp_path / "run"
    fewshot("train", "--run-dir", run, "--data-root", data_root, *TINY_RUN)  # 2 iterations
    first_two = metrics.read(run / "metrics.jsonl")[0]
    cli.main(["train", "--run-dir", str(run), "--resume", "--iterations", "4", "--outer-lr", "0.0002"])
    records = metrics.read(run / "metrics.jsonl")[0]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4] and records[:2] == first_two  # not trained again
    config = Config.load(run / "config.json")
    assert (config.iterations, config.outer_lr, config.channels, config.meta_batch) == (4, 0.0002, 8, 2)
    assert load_checkpoint(run / "checkpoint.safetensors")[1]["iterations"] == 4


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    result = fewshot("evaluate", tmp_path / "junk.safetensors", check=False)
    assert result.returncode != 0 and "not a readable safetensors file" in result.stderr
    assert "Traceback" not in result.stderr
    assert "shots + queries must be at most 20" in error_of("train", "--shots", 15, "--queries", 10,
                                                            "--run-dir", tmp_path / "r")


def untrained_checkpoint(folder: Path, ways: int = 5) -> Path:
    """A conv 8x2 checkpoint of random weights (seed 0), for `ways` classes: evaluate reads it in no time."""
    torch.manual_seed(0)
    path = folder / f"untrained-{ways}way.safetensors"
    save_checkpoint(path, build_model("conv", ways, 8, 2),
                    checkpoint_metadata(Config(data_root="x", ways=ways, channels=8, blocks=2), iterations=1))
    return path


def test_missing_dataset_is_explained(tmp_path):
    message = error_of("evaluate", untrained_checkpoint(tmp_path), "--data-root", tmp_path / "nothing")
    assert "omniglot-py/images_background" in message


@pytest.mark.slow
def test_bench_times_the_notebook_loop_and_the_engine_all_at_once_and_by_groups_for_every_setting(data_root):
    output = fewshot("bench", "--data-root", data_root, "--channels", 4, "--blocks", 2, "--queries", 1,
                     "--repeats", 1).stdout
    rows = [line.split() for line in output.splitlines() if line.startswith(("maml ", "fomaml "))]
    assert [row[:3] for row in rows] == [[algorithm, task, steps] for algorithm in ("maml", "fomaml")
                                         for task, steps in (("5w1s", "1"), ("5w5s", "1"), ("20w1s", "1"),
                                                             ("5w1s", "5"))]
    for row in rows:
        notebook, all_at_once, ours = map(float, row[3:6])
        for printed, slower in ((row[6], notebook), (row[7], all_at_once)):  # within the seconds' rounding
            assert (slower - 5e-4) / (ours + 5e-4) - 5e-3 <= float(printed.rstrip("x")) <= (
                (slower + 5e-4) / (ours - 5e-4) + 5e-3), row
        assert float(row[8]) > 0  # GFLOP/s
        notebook_mb, all_at_once_mb, ours_mb, ratio = map(float, row[9:12] + [row[12].rstrip("x")])
        assert notebook_mb > 0 and all_at_once_mb > 0 and ours_mb > 0  # peak memory, to a tenth of a MB
        low, high = (ours_mb - 0.05) / max(notebook_mb + 0.05, 1), (ours_mb + 0.05) / max(notebook_mb - 0.05, 1)
        assert low - 5e-3 <= ratio <= high + 5e-3, row  # over the notebook's MB, at least 1 (bench.memory_ratio)
    assert re.search(r"matrix product: [\d.]+ GFLOP/s", output)


def test_train_names_every_bad_option_at_once(tmp_path):
    message = error_of("train", "--run-dir", tmp_path / "run", *TINY_RUN, "--ways", 1, "--inner-lr", "nan")
    assert message == "error: ways must be at least 2, got 1; inner_lr must be a finite number, got nan"
    message = error_of("train", "--run-dir", tmp_path / "run", *TINY_RUN, "--inner-lr", -1, "--outer-lr", "inf")
    assert message == "error: inner_lr must be at least 0, got -1.0; outer_lr must be a finite number, got inf"


def test_resume_refuses_another_model_or_other_tasks(tiny_config, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tiny_config.save(run / "config.json")
    checkpoint = run / "checkpoint.safetensors"
    assert error_of("train", "--run-dir", run, "--resume", *TINY_RUN, "--ways", 20) == (
        f"error: --resume cannot change ways (the run has 5, you asked for 20); start a new run in another "
        f"--run-dir (--init-from {checkpoint} starts it from this run's weights)")
    assert error_of("train", "--run-dir", run, "--resume", *TINY_RUN, "--shots", 5, "--split", "maml-paper") == (
        f"error: --resume cannot change shots (the run has 1, you asked for 5), split (the run has lake, you asked "
        f"for maml-paper); start a new run in another --run-dir (--init-from {checkpoint} starts it from this "
        f"run's weights)")
    assert error_of("train", "--run-dir", run, "--resume", *TINY_RUN, "--channels", 16) == (
        "error: --resume cannot change channels (the run has 8, you asked for 16); start a new run in another "
        "--run-dir")
    assert not checkpoint.exists()


@pytest.mark.parametrize("text, reason", [
    ("{\"ways\": 5, \"shots", "Unterminated string starting at: line 1 column 13 (char 12)"),
    ("true", "a configuration is a JSON object of option names and values, not True"),
    ("{\"ways\": \"x\"}", "ways must be a whole number, got 'x'"),
    ("{\"ways\": 1.5}", "ways must be a whole number, got 1.5"),
])
def test_resume_of_a_garbage_config_is_one_line(tmp_path, text, reason):
    (tmp_path / "config.json").write_text(text)
    assert error_of("train", "--run-dir", tmp_path, "--resume") == (
        f"error: {tmp_path / 'config.json'} is not a run configuration that fewshot can read ({reason}); "
        f"start a new run in another --run-dir")


@pytest.mark.parametrize("options, message", [
    (["--tasks", 0], "--tasks must be between 2 (for a 95 % interval) and 100000, got 0"),
    (["--tasks", 1], "--tasks must be between 2 (for a 95 % interval) and 100000, got 1"),
    (["--tasks", 10**6], "--tasks must be between 2 (for a 95 % interval) and 100000, got 1000000"),
    (["--queries", 0], "--queries must be at least 1, got 0"),
    (["--shots", 0], "--shots must be at least 1, got 0"),
    (["--shots", 25], "shots + queries must be at most 20 (Omniglot has 20 drawings per character), got 25 + 5"),
    (["--inner-steps", -1], "--inner-steps must be between 0 and 100, got -1"),
    (["--inner-steps", 10**9], "--inner-steps must be between 0 and 100, got 1000000000"),
    (["--seed", -1], f"--seed must be between 0 and {2**32 - 1}, got -1"),
    (["--tasks", 0, "--queries", 0], "--tasks must be between 2 (for a 95 % interval) and 100000, got 0; "
                                     "--queries must be at least 1, got 0"),
])
def test_evaluate_refuses_options_it_cannot_measure(tmp_path, options, message):
    assert error_of("evaluate", untrained_checkpoint(tmp_path), "--data-root", tmp_path / "nothing", *options) == (
        f"error: {message}")


@pytest.mark.parametrize("record", [[], ["--record"]])
def test_evaluate_refuses_one_task_whose_accuracy_has_no_interval(tmp_path, record):
    """It printed "+- nan %"; recorded, a NaN interval in the checkpoint's metadata would make it unreadable (JSON
    has no NaN)."""
    checkpoint = untrained_checkpoint(tmp_path)
    before = checkpoint.read_bytes()
    assert error_of("evaluate", checkpoint, "--data-root", tmp_path / "nothing", "--tasks", 1, *record) == (
        "error: --tasks must be between 2 (for a 95 % interval) and 100000, got 1")
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("repeats", [0, -1])
def test_bench_refuses_to_time_no_iteration(repeats):
    """The median of no timed iteration raised an IndexError, after the warm-up of every setting."""
    assert error_of("bench", "--repeats", repeats) == f"error: --repeats must be at least 1, got {repeats}"


def test_evaluate_takes_the_training_steps_of_a_checkpoint_without_test_time_steps(tmp_path):
    """test_inner_steps is not a key every checkpoint has: the Draw page falls back to inner_steps, and so does
    evaluate (here on to the missing dataset's one-line error, where it once raised a KeyError)."""
    model, metadata = load_checkpoint(untrained_checkpoint(tmp_path))
    del metadata["test_inner_steps"]
    save_checkpoint(tmp_path / "old.safetensors", model, metadata)
    message = error_of("evaluate", tmp_path / "old.safetensors", "--data-root", tmp_path / "nothing")
    assert "Omniglot" in message


def test_evaluate_within_alphabet_draws_upright_characters_of_one_alphabet_in_turn(omniglot, data_root, tmp_path,
                                                                                  monkeypatch, capsys):
    """Every drawing of the 40 tasks is a test drawing as Omniglot has it (upright), of a task's 5 characters,
    all of one alphabet; the 20 test alphabets take 2 tasks each; the result printed is that of these tasks."""
    batches = []

    class RecordingSampler(TaskSampler):
        def sample(self, tasks, seed):
            batches.append(super().sample(tasks, seed))
            return batches[-1]

    monkeypatch.setattr(cli, "TaskSampler", RecordingSampler)
    checkpoint = untrained_checkpoint(tmp_path)
    cli.main(["evaluate", str(checkpoint), "--data-root", data_root, "--tasks", "40", "--within-alphabet"])
    output = capsys.readouterr().out
    assert "5-way 1-shot within one alphabet on lake/test: accuracy" in output and "40 tasks" in output

    def digest(ink) -> str:
        return hashlib.sha1(ink.contiguous().numpy().tobytes()).hexdigest()

    character_of = {digest(omniglot.ink[c, d]): c for c in split_characters(omniglot, "lake")["test"]
                    for d in range(omniglot.ink.shape[1])}  # upright drawings only
    alphabets = []
    for batch in batches:
        for support_x, query_x in zip(batch.support_x, batch.query_x):
            support = [character_of.get(digest(image[0])) for image in support_x]
            query = {character_of.get(digest(image[0])) for image in query_x}
            assert None not in support and len(set(support)) == 5 and query == set(support)
            assert len({omniglot.alphabet(c) for c in support}) == 1
            alphabets.append(omniglot.alphabet(support[0]))
    assert Counter(alphabets) == {alphabet: 2 for alphabet in ALPHABETS["images_evaluation"]}

    monkeypatch.undo()
    cli.main(["evaluate", str(checkpoint), "--data-root", data_root, "--tasks", "20", "--within-alphabet"])
    assert_prints_the_result_of(capsys.readouterr().out, omniglot, checkpoint, 1, within_alphabet=True)


def test_evaluate_within_alphabet_refuses_more_ways_than_the_largest_test_alphabet(data_root, tmp_path, capsys):
    largest, characters = max(ALPHABETS["images_evaluation"].items(), key=lambda item: item[1])
    cli.main(["evaluate", str(untrained_checkpoint(tmp_path, characters)), "--data-root", data_root, "--tasks", "2",
              "--within-alphabet"])
    assert f"{characters}-way 1-shot within one alphabet" in capsys.readouterr().out
    assert error_of("evaluate", untrained_checkpoint(tmp_path, characters + 1), "--data-root", data_root,
                    "--within-alphabet") == (
        f"error: {characters + 1} ways within one alphabet need {characters + 1} classes from one alphabet; "
        f"the largest here, {largest}, has {characters}")
    assert error_of("evaluate", untrained_checkpoint(tmp_path), "--within-alphabet", "--record") == (
        "error: --record keeps accuracy on tasks of characters of all alphabets; drop --within-alphabet")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_or_a_read_only_folder_is_one_line(data_root, tmp_path, monkeypatch, code):
    """Saving the run fails; the message names the file and the system's reason, and the run can resume."""
    replace_with = files.replace_with

    def failing_replace_with(path, write):
        if Path(path).suffix == ".safetensors":
            raise OSError(code, os.strerror(code), str(path))
        replace_with(path, write)

    monkeypatch.setattr(files, "replace_with", failing_replace_with)
    run = tmp_path / "run"
    message = error_of("train", "--run-dir", run, "--data-root", data_root, *TINY_RUN)
    assert message.startswith(f"error: {run}/") and message.endswith(
        f".safetensors: {os.strerror(code)}; once that is fixed, --resume continues the run")


def test_an_unreadable_config_is_one_line(tmp_path):
    (tmp_path / "config.json").mkdir()
    assert error_of("train", "--run-dir", tmp_path, "--resume") == (
        f"error: {tmp_path / 'config.json'}: {os.strerror(errno.EISDIR)}")
