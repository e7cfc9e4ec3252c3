import json
import os
import random

import pytest
import torch

from fewshot import limits, metrics, probe
from fewshot.config import Config
from fewshot.training import initial_model
from waiting import outcome_within


def record(iteration, **extra):
    return {"iteration": iteration, "train_loss": 1.5, "train_accuracy": 0.5, "seconds": 0.1 * iteration, **extra}


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_lines_that_are_not_records_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [json.dumps(record(1)), "garbage", "[1, 2]", json.dumps({"iteration": 2}),
                 json.dumps(record(2, val_accuracy="high")), json.dumps(record(2, val_accuracy=0.9))])
    records, skipped = metrics.read(path)
    assert [r["iteration"] for r in records] == [1, 2] and records[1]["val_accuracy"] == 0.9
    assert skipped == 4


def test_a_line_without_its_newline_is_left_for_later(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(record(1)) + "\n" + json.dumps(record(2))[:10])
    reader = metrics.Reader(path)
    assert [r["iteration"] for r in reader.read()[0]] == [1] and reader.read()[1] == 0
    with open(path, "a") as f:
        f.write(json.dumps(record(2))[10:] + "\n")
    assert [r["iteration"] for r in reader.read()[0]] == [1, 2]


def test_truncate_keeps_the_records_up_to_an_iteration_and_drops_a_half_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(record(i)) + "\n" for i in range(1, 6)) + '{"iteration": 6, "tr')
    assert [r["iteration"] for r in metrics.truncate(path, 3)] == [1, 2, 3]
    assert path.read_text() == "".join(json.dumps(record(i)) + "\n" for i in range(1, 4))
    assert metrics.truncate(path, 0) == [] and path.read_text() == ""


def test_truncate_that_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """A death while the file is rewritten loses nothing: the new file takes its place in one step."""
    path = tmp_path / "metrics.jsonl"
    write(path, [json.dumps(record(i)) for i in range(1, 4)])
    before = path.read_bytes()

    def die(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fewshot.files._sync", die)
    with pytest.raises(OSError, match="metrics.jsonl"):
        metrics.truncate(path, 1)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_records_the_pages_cannot_draw_are_skipped_and_a_diverged_runs_are_kept(tmp_path):
    """A negative iteration, or a time that is not finite, would break the progress bar and the durations; a
    line nested too deep for json's parser raises RecursionError, not a ValueError. NaN losses are a diverged
    run's records, and are drawn."""
    path = tmp_path / "metrics.jsonl"
    diverged = record(2, train_loss=float("nan"), val_loss=float("inf"), val_accuracy=0.2)
    write(path, [json.dumps(record(1)), json.dumps(record(-1)), json.dumps(record(3, seconds=float("nan"))),
                 json.dumps(record(4, seconds=float("inf"))), "[" * 100_000, json.dumps(diverged)])
    records, skipped = metrics.read(path)
    assert [r["iteration"] for r in records] == [1, 2] and skipped == 4


def test_a_record_the_pages_would_show_as_nan_or_fail_to_print_is_skipped(tmp_path):
    """Accuracies are fractions (a NaN one reads "nan %" in the Compare table); the memory is tabulated and
    subtracted; JSON's 400-digit numbers are ints that no float holds (math.isfinite raised OverflowError, which
    broke every page showing the run); a validation's loss is drawn with its accuracy."""
    path = tmp_path / "metrics.jsonl"
    huge = "9" * 400
    bad = [json.dumps(record(2, val_loss=1.0, val_accuracy=float("nan"))),
           json.dumps(record(2, train_accuracy=float("inf"))), json.dumps(record(2, train_accuracy=1.5)),
           json.dumps(record(2, val_loss=1.0, val_accuracy=-0.1)), json.dumps(record(2, training_memory_mb="x")),
           json.dumps(record(2, training_memory_mb=float("nan"))), json.dumps(record(2, val_loss=1.0)),
           *(json.dumps(record(2)).replace(f'"{key}": {value}', f'"{key}": {huge}')
             for key, value in (("seconds", 0.2), ("train_loss", 1.5), ("iteration", 2)))]
    assert all(huge in line for line in bad[-3:])
    good = record(3, train_loss=float("nan"), val_loss=float("nan"), val_accuracy=0.2, training_memory_mb=12.5)
    write(path, [json.dumps(record(1)), *bad, json.dumps(good)])
    records, skipped = metrics.read(path)
    assert [r["iteration"] for r in records] == [1, 3] and skipped == len(bad)


def test_a_metrics_file_that_is_no_regular_file_is_read_without_waiting(tmp_path):
    """Opening a FIFO for reading waits for a writer, for ever: a run folder holding one hung its page."""
    path = tmp_path / "metrics.jsonl"
    os.mkfifo(path)
    assert outcome_within(metrics.Reader(path).read) == ([], 0)  # as a missing file
    refused = outcome_within(lambda: metrics.read(path))
    assert isinstance(refused, ValueError) and str(refused) == "metrics.jsonl is not a regular file"


def test_no_more_than_max_bytes_of_a_metrics_file_is_read(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(record(i)) + "\n" for i in range(1, 11)]
    monkeypatch.setattr(metrics, "MAX_BYTES", len("".join(lines[:3])) + 5)
    path.write_text("".join(lines[:2]))
    reader = metrics.Reader(path)
    assert [r["iteration"] for r in reader.read()[0]] == [1, 2]
    path.write_text("".join(lines))
    assert [r["iteration"] for r in reader.read()[0]] == [1, 2, 3] and reader.read()[1] == 0
    with pytest.raises(ValueError, match=f"^metrics.jsonl holds {len(''.join(lines)):,} bytes, over the "):
        metrics.read(path)


def test_the_bound_holds_the_largest_run_the_train_form_allows_probed_at_every_iteration():
    """A record as training writes one with all it may hold: a validation, the memory, and the first against
    second order probe of the form's deepest network, each layer's numbers at full precision."""
    config = Config(blocks=limits.MAXIMA["blocks"], channels=2, inner_steps=2, per_step_bn=True)
    names = [name for name, _ in initial_model(config).named_parameters()]
    gradients = [{name: torch.randn(3) for name in names} for _ in range(2)]
    largest = {"iteration": limits.MAXIMA["iterations"], "train_loss": random.random(),
               "train_accuracy": random.random(), "training_memory_mb": 12345.6,
               "probe": {**probe.compare(*gradients), "seconds": random.random()}, "val_loss": random.random(),
               "val_accuracy": random.random(), "seconds": 123456.7891, "tasks_per_second": 1234.56,
               "peak_memory_mb": 12345.6}
    assert len(largest["probe"]["layers"]) == limits.MAXIMA["blocks"] + 1  # the blocks and the classifier
    line = len(json.dumps(largest)) + 1
    assert 1.5 * limits.MAXIMA["iterations"] * line <= metrics.MAX_BYTES, line


def test_spans_leave_out_times_that_go_back_or_stand_still(tmp_path):
    """A hand-edited file (or one spliced from two runs): the pages' pace and time left come from these spans, and a
    negative or zero one gave a negative or infinite speed. Those left, each iteration's own time, are all kept."""
    path = tmp_path / "metrics.jsonl"
    seconds = [0.5, 1.0, 1.5, 0.2, 0.7, 0.7, 0.70001, 1.2]  # back at 4, still at 6, a hair (10 us) forward at 7
    write(path, [json.dumps(record(i, seconds=s)) for i, s in enumerate(seconds, start=1)])
    records, _ = metrics.read(path)
    spans = metrics.spans(records)
    assert [record["iteration"] for _, record in spans] == [2, 3, 5, 8]
    assert [span for span, _ in spans] == pytest.approx([0.5] * 4, abs=1e-4)
    assert metrics.spans(records[2:4]) == [] and metrics.spans(records[:1]) == []
