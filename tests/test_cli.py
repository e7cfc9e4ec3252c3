import subprocess
import sys

import pytest
import torch

from fewshot.checkpoints import checkpoint_metadata, load_checkpoint, save_checkpoint
from fewshot.config import Config
from fewshot.models import build_model


def fewshot(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "fewshot", *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_help_lists_the_commands_and_options():
    assert all(c in fewshot("--help").stdout for c in ("train", "evaluate", "bench"))
    assert "--inner-lr" in fewshot("train", "--help").stdout


def test_train_then_evaluate(data_root, tmp_path):
    run = tmp_path / "run"
    fewshot("train", "--run-dir", run, "--data-root", data_root, "--algorithm", "fomaml", "--channels", 8,
            "--blocks", 2, "--meta-batch", 2, "--iterations", 3, "--val-every", 3, "--test-tasks", 0)
    output = fewshot("evaluate", run / "checkpoint.safetensors", "--data-root", data_root, "--tasks", 20,
                     "--shots", 2, "--record").stdout
    assert "5-way 2-shot on lake/test: accuracy" in output and "20 tasks" in output
    recorded = load_checkpoint(run / "checkpoint.safetensors")[1]["accuracy"]["5w2s"]
    assert recorded["tasks"] == 20 and recorded["queries"] == 5 and f"{100 * recorded['accuracy']:.2f} %" in output
    transductive = fewshot("evaluate", run / "checkpoint.safetensors", "--data-root", data_root, "--tasks", 20,
                           "--shots", 2, "--transductive").stdout
    assert "5-way 2-shot on lake/test: accuracy" in transductive and "transductive batch norm" in transductive
    refused = fewshot("evaluate", run / "checkpoint.safetensors", "--transductive", "--record", check=False)
    assert refused.returncode != 0 and "drop --transductive" in refused.stderr
    held_out = fewshot("evaluate", run / "checkpoint.safetensors", "--data-root", data_root, "--tasks", 20,
                       "--characters", "val").stdout
    assert "5-way 1-shot on lake/val: accuracy" in held_out
    refused = fewshot("evaluate", run / "checkpoint.safetensors", "--characters", "val", "--record", check=False)
    assert refused.returncode != 0 and "drop --characters val" in refused.stderr
    other_tasks = fewshot("evaluate", run / "checkpoint.safetensors", "--data-root", data_root, "--tasks", 20,
                          "--shots", 2, "--seed", 123).stdout
    assert "5-way 2-shot on lake/test, seed 123: accuracy" in other_tasks
    refused = fewshot("evaluate", run / "checkpoint.safetensors", "--seed", 123, "--record", check=False)
    assert refused.returncode != 0 and "drop --seed" in refused.stderr
    assert load_checkpoint(run / "checkpoint.safetensors")[1]["accuracy"] == {"5w2s": recorded}
    refused = fewshot("train", "--run-dir", run, "--data-root", data_root, check=False)
    assert refused.returncode != 0 and "--resume" in refused.stderr


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    result = fewshot("evaluate", tmp_path / "junk.safetensors", check=False)
    assert result.returncode != 0 and "not a readable safetensors file" in result.stderr
    assert "Traceback" not in result.stderr
    result = fewshot("train", "--shots", 15, "--queries", 10, "--run-dir", tmp_path / "r", check=False)
    assert "shots + queries must be at most 20" in result.stderr and "Traceback" not in result.stderr


def test_missing_dataset_is_explained(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.safetensors", build_model("conv", 5, 8, 2),
                    checkpoint_metadata(Config(data_root="x", channels=8, blocks=2), iterations=1))
    result = fewshot("evaluate", tmp_path / "m.safetensors", "--data-root", tmp_path / "nothing", check=False)
    assert result.returncode != 0 and "omniglot-py/images_background" in result.stderr


@pytest.mark.slow
def test_bench_prints_both_engines_for_every_setting(data_root):
    output = fewshot("bench", "--data-root", data_root, "--channels", 4, "--blocks", 2, "--queries", 1,
                     "--repeats", 1).stdout
    rows = [line for line in output.splitlines() if line.startswith(("maml ", "fomaml "))]
    assert [row.split()[:2] for row in rows] == [["maml", "5w1s"], ["maml", "5w5s"], ["fomaml", "5w1s"],
                                                  ["fomaml", "5w5s"]]
    assert all(row.endswith("x") for row in rows)
