"""Run folders damaged by a crash, a disk error or a hand edit (fewshot/runs.py): what cannot be read counts as
missing, and the Train and Compare pages go on showing every other run, without a traceback."""

import contextlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from fake_runs import record, run_folder
from waiting import outcome_within
from fewshot import cli, runs
from fewshot.config import MAX_JSON_BYTES, Config
from fewshot.training import ENDED

REPO = Path(__file__).resolve().parents[1]
TOO_DEEP = "[" * 100_000  # json's parser raises RecursionError, not a ValueError
EVALUATION = {"split": "lake/test", "accuracy": 0.9, "ci95": 0.01, "tasks": 600, "inner_steps": 3, "ways": 5,
              "shots": 1}
BAD_EVALUATIONS = {"not UTF-8": b"\xff", "a list": b"[1]", "other keys": b'{"a": 1}', "too deep": TOO_DEEP.encode(),
                   **{f"{name} {value!r}": json.dumps({**EVALUATION, name: value}).encode() for name, value in
                      (("accuracy", "x"), ("ci95", None), ("ways", 5.0), ("shots", True), ("split", 5))}}


@pytest.fixture(autouse=True)
def run_folders(tmp_path, monkeypatch):
    """Runs and kept checkpoints in temporary folders, so that the pages list only the runs a test made."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "runs"


def test_json_nested_too_deep_counts_as_unreadable(run_folders):
    config = Config(iterations=6).to_dict()
    deep_launch = run_folder(run_folders, "deep-launch", launch=TOO_DEEP)
    (deep_launch.path / "config.json").write_text(json.dumps(config))  # listed, as one started from the command line
    run_folder(run_folders, "deep-launch-only", launch=TOO_DEEP)  # nothing readable: left out
    deep_config = run_folder(run_folders, "deep-config", launch=json.dumps({"config": config}))
    (deep_config.path / "config.json").write_text(TOO_DEEP)  # being written, say: the launch's config stands in
    deep_line = run_folder(run_folders, "deep-line", metrics=[record(1), TOO_DEEP, record(2)])
    assert set(runs.list_runs(run_folders)) == {deep_launch, deep_config, deep_line}
    assert deep_launch.launch() == {} and deep_config.config().to_dict() == config
    assert [r["iteration"] for r in deep_line.metrics()] == [1, 2] and deep_line.unreadable_lines() == 1
    assert runs.dispatch(run_folders) == []


def test_a_launch_json_that_is_a_fifo_or_huge_counts_as_unreadable_and_blocks_no_reader(run_folders):
    """Reading a FIFO waits for a writer forever: list_runs, and dispatch under the queue lock, would hang."""
    fifo = run_folder(run_folders, "fifo")
    (fifo.path / "launch.json").unlink()
    os.mkfifo(fifo.path / "launch.json")
    huge = run_folder(run_folders, "huge", launch=json.dumps({"pad": "x" * MAX_JSON_BYTES}))
    read = threading.Thread(target=lambda: (fifo.launch(), runs.list_runs(run_folders)), daemon=True)
    read.start()
    read.join(timeout=10)
    assert not read.is_alive(), "reading a FIFO launch.json hangs"
    assert fifo.launch() == {} and huge.launch() == {}


@pytest.mark.parametrize("reader", [False, True])
def test_a_queued_run_whose_train_log_is_a_fifo_is_not_started_and_holds_no_queue(run_folders, reader):
    """The local launcher appends the trainer's output to train.log: opening a FIFO to write waits for a reader
    forever, and dispatch waited so under the queue lock, for good. The run stays queued and says why."""
    launch = {"pid": None, "started": 0.0, "queued": 1.0, "arguments": [], "config": Config(iterations=6).to_dict()}
    run = run_folder(run_folders, "fifo-log", launch=json.dumps(launch))
    os.mkfifo(run.path / "train.log")
    reading = os.open(run.path / "train.log", os.O_RDONLY | os.O_NONBLOCK) if reader else None
    try:
        outcome = outcome_within(lambda: runs.dispatch(run_folders))
    finally:
        if reader:
            os.close(reading)
    assert outcome == [] and run.is_queued()
    assert "train.log" in run.launch()["launch_error"]  # no reader: ENXIO; a reader: not a regular file


def test_a_run_folder_whose_name_is_not_text_is_not_listed(run_folders):
    """Streamlit cannot send its name to the browser (UnicodeEncodeError): in the Train or Compare page's menu, it
    failed the page for everyone."""
    name_not_text(run_folders)
    assert [run.name for run in runs.list_runs(run_folders)] == ["good"]


def test_a_queue_lock_that_is_a_fifo_holds_nothing_for_good(run_folders):
    """Opening a FIFO to append waits for a reader: every Start, Stop, Resume and Delete, and the queue, waited
    so. Now each says why it cannot go on."""
    run_folders.mkdir()
    os.mkfifo(run_folders / runs.START_LOCK)
    for action in (lambda: runs.dispatch(run_folders), lambda: runs.start(Config(iterations=6), run_folders)):
        assert isinstance(outcome_within(action), OSError)  # no reader: ENXIO


# What a hand may put in place of a marker file (`ended`, `stop_requested`), given its path and a file elsewhere
MARKER_DAMAGES = {"FIFO": lambda marker, elsewhere: os.mkfifo(marker),
                  "link to a file": lambda marker, elsewhere: (elsewhere.write_text("kept"),
                                                               marker.symlink_to(elsewhere)),
                  "link to no file": lambda marker, elsewhere: marker.symlink_to(elsewhere),
                  "directory": lambda marker, elsewhere: marker.mkdir()}


def lying_at(path: Path) -> tuple:
    """What lies at `path`, a link not followed: its kind, and a link's target."""
    mode = os.lstat(path).st_mode
    return stat.S_IFMT(mode), os.readlink(path) if stat.S_ISLNK(mode) else None


@contextlib.contextmanager
def damaged_marker(run: runs.Run, marker: str, damage: str, elsewhere: Path):
    """Puts `damage` in place of `marker` in the run's folder; checks after that it and the file elsewhere are as
    they were."""
    MARKER_DAMAGES[damage](run.path / marker, elsewhere)
    before = lying_at(run.path / marker), elsewhere.exists() and elsewhere.read_text()
    yield
    assert (lying_at(run.path / marker), elsewhere.exists() and elsewhere.read_text()) == before


def train_and_exit(run: runs.Run) -> None:
    """`python -m fewshot train` on the run, in this process: it exits at once (the run has no config.json to
    resume) and, as it exits, marks the run ended."""
    with contextlib.suppress(SystemExit):
        cli.main(["train", "--run-dir", str(run.path), "--resume"])


@pytest.mark.parametrize("damage", MARKER_DAMAGES)
def test_the_trainer_exits_and_leaves_as_it_is_what_lies_in_place_of_its_ended_marker(run_folders, tmp_path, damage):
    """Opening a FIFO to write waits for a reader: the trainer waited so for ever as it exited, its run reading as
    running and holding a place to train. The file that a link named was overwritten with the time, or created."""
    run = run_folder(run_folders, "run")
    assert outcome_within(lambda: train_and_exit(run)) is None  # (no traceback)
    os.remove(run.path / ENDED)  # a plain marker, where nothing lay
    with damaged_marker(run, ENDED, damage, tmp_path / "elsewhere.txt"):
        assert outcome_within(lambda: train_and_exit(run)) is None


def test_stop_leaves_as_it_is_a_link_to_no_file_in_place_of_its_marker(run_folders, tmp_path):
    """Touching it created the file it named. (Anything else in its place is the marker already: Stop has
    nothing to do.)"""
    launch = {"pid": None, "queued": 1.0, "arguments": [], "config": Config(iterations=6).to_dict()}
    run = run_folder(run_folders, "queued", launch=json.dumps(launch))
    with damaged_marker(run, runs.STOP_REQUESTED, "link to no file", tmp_path / "elsewhere.txt"):
        assert outcome_within(lambda: runs.stop(run)) is None


@pytest.mark.parametrize("damage", BAD_EVALUATIONS)
def test_an_evaluation_json_without_what_training_writes_is_no_evaluation(run_folders, damage):
    run = run_folder(run_folders, "run", metrics=[record(6)], checkpoint=b"weights")
    (run.path / "evaluation.json").write_bytes(BAD_EVALUATIONS[damage])
    assert run.evaluation() is None and runs.summary(run)["test_accuracy"] is None
    (run.path / "evaluation.json").write_text(json.dumps(EVALUATION))
    assert run.evaluation() == EVALUATION


def test_the_shipped_runs_evaluations_are_read():
    shipped = sorted((REPO / "checkpoints" / "runs").glob("*/evaluation.json"))
    assert shipped
    for path in shipped:
        assert runs.Run(path.parent).evaluation() == json.loads(path.read_text()), path


def deep_launch(root):
    run_folder(root, "good", metrics=[record(1)])
    run_folder(root, "damaged", launch=TOO_DEEP)


def deep_config(root):
    run_folder(root, "good", metrics=[record(1)])
    damaged = run_folder(root, "damaged", launch='{"started": 1.0}')
    (damaged.path / "config.json").write_text(TOO_DEEP)


def evaluation(text: bytes):
    def build(root):
        damaged = run_folder(root, "damaged", metrics=[record(1), record(6)], checkpoint=b"weights")
        (damaged.path / "evaluation.json").write_bytes(text)
    return build


def name_not_text(root):
    """A run folder named in bytes that are not UTF-8: an archive made on another system, unpacked here."""
    run_folder(root, "good", metrics=[record(1)])
    run_folder(root, os.fsdecode(b"maml-caf\xe9"), metrics=[record(1)])


DAMAGES = {"deep launch.json": deep_launch, "deep config.json": deep_config, "name not UTF-8": name_not_text,
           "deep metrics line": lambda root: run_folder(root, "damaged", metrics=[record(1), TOO_DEEP]),
           "negative iteration": lambda root: run_folder(root, "damaged", metrics=[record(1) | {"iteration": -5}]),
           **{f"evaluation.json {damage}": evaluation(text) for damage, text in BAD_EVALUATIONS.items()}}


@pytest.mark.parametrize("damage", DAMAGES)
def test_the_train_and_compare_pages_show_the_runs_despite_a_damaged_one(run_folders, damage):
    DAMAGES[damage](run_folders)
    for page in ("train", "compare"):
        app = AppTest.from_file(str(REPO / "pages" / f"{page}.py"), default_timeout=30)
        if page == "compare":
            app.session_state["compare_runs_menu"] = [run.name for run in runs.list_runs(run_folders)]
        app.run()
        assert not app.exception, (page, app.exception)
        assert app.get("progress") or app.dataframe  # a run is shown


def test_the_train_page_reads_a_checkpoint_when_it_is_downloaded_only(run_folders, monkeypatch):
    """Each redraw of the page, for each session, would hold the whole file (400 MB, for a large model) in memory;
    Streamlit calls the button's data when it is pressed."""
    run = run_folder(run_folders, "stopped", metrics=[record(1)], checkpoint=b"weights")
    (run.path / runs.STOP_REQUESTED).write_text("")
    offered, download_button = [], st.download_button

    def recorded(label, data, **options):
        offered.append(data)
        return download_button(label, data, **options)

    monkeypatch.setattr(st, "download_button", recorded)
    app = AppTest.from_file(str(REPO / "pages" / "train.py"), default_timeout=30).run()
    assert not app.exception
    [button] = app.get("download_button")
    [data] = offered
    assert callable(data) and button.proto.deferred_file_id and not button.proto.url
    assert data() == b"weights"
