import json

import pytest

from fewshot import metrics


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
    diverged = record(2, train_loss=float("nan"), val_loss=float("inf"))
    write(path, [json.dumps(record(1)), json.dumps(record(-1)), json.dumps(record(3, seconds=float("nan"))),
                 json.dumps(record(4, seconds=float("inf"))), "[" * 100_000, json.dumps(diverged)])
    records, skipped = metrics.read(path)
    assert [r["iteration"] for r in records] == [1, 2] and skipped == 4
