"""The app as one server for a whole class (issue 14), driven with Streamlit's AppTest: the instructor key, the
queue of runs, resuming an interrupted run, deleting runs.

Runs that must train are real processes on tiny configurations. A run that only has to be "training" is a
stand-in: a sleeping process whose command line names the run's folder after --run-dir, as a trainer's does, which
is all runs.Run.is_running checks, and which Stop ends at once.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors import safe_open
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import TESTING_KEY

from fake_runs import record, run_folder
from fewshot import runs
from fewshot.config import Config
from fewshot.training import CONFIG, TRAINING_STATE
from test_app import APP, TINY, fill_form, keep_button, open_page, progress_text, texts
from waiting import wait_for

KEY = "rosebud-42"
START = "FormSubmitter:train_form-Start"
UNLOCK = "FormSubmitter:instructor_form-Unlock"
NEEDS_KEY = "Needs the instructor key"


@pytest.fixture(autouse=True)
def run_folders(tmp_path, monkeypatch):
    """Runs and kept checkpoints in temporary folders; no instructor key unless a test sets one. At the end,
    every run of the test leaves the queue and stops: the queued first, so that the server's dispatcher thread
    (which outlives the test) starts none."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("FEWSHOT_INSTRUCTOR_KEY", raising=False)
    yield tmp_path

    def all_ended() -> bool:
        listed = runs.list_runs(tmp_path / "runs")
        active = [run for run in listed if run.is_queued()] + [run for run in listed if run.is_running()]
        for run in active:
            runs.stop(run)
        return not active

    wait_for(all_ended, "every run to leave the queue and stop")


@pytest.fixture
def stand_in(run_folders):
    """A function (name, owner=None) -> a run that is training, as far as the app can tell: launch.json names
    a sleeping process of its own. The folder is made if it is not there; its other files are kept."""
    processes = []

    def training(name: str, owner: str | None = None) -> runs.Run:
        path = run_folders / "runs" / name
        path.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "--run-dir", str(path)])
        processes.append(process)
        launch = {"pid": process.pid, "started": time.time(), "config": Config(iterations=6).to_dict(),
                  "owner": owner}
        (path / runs.LAUNCH).write_text(json.dumps(launch))
        (path / runs.STOP_REQUESTED).unlink(missing_ok=True)
        return runs.Run(path)

    yield training
    for process in processes:
        process.kill()
        process.wait()


def stopped_run(root, name: str, owner: str | None = None, config: Config | None = None,
                comparison: str | None = None) -> runs.Run:
    """A run stopped after one iteration, with a checkpoint, started by the browser session `owner`."""
    launch = {"pid": None, "started": time.time(), "config": (config or Config(iterations=6)).to_dict(),
              "owner": owner, "comparison": comparison}
    run = run_folder(root, name, launch=json.dumps(launch), metrics=[record(1)], checkpoint=b"weights")
    (run.path / runs.STOP_REQUESTED).write_text("")
    return run


def session(key: str | None = None, session_id: str | None = None) -> AppTest:
    """A browser session on the Train page; with `key`, entered in the sidebar; with `session_id`, that
    session's id."""
    app = AppTest.from_file(APP, default_timeout=60)
    if session_id:
        app.session_state["session_id"] = session_id
    app.run()
    app.switch_page("pages/train.py").run()
    if key is not None:
        enter_key(app, key)
    assert not app.exception, app.exception
    return app


def enter_key(app: AppTest, key: str) -> None:
    [field] = app.sidebar.text_input
    assert field.label == "Instructor key"
    field.set_value(key)
    app.button(key=UNLOCK).click().run()


def show(app: AppTest, run: runs.Run) -> None:
    """Chooses `run` in the Train page's run menu."""
    app.selectbox(key="train_run_menu").set_value(run.name).run()
    assert not app.exception, app.exception


def press_anyway(button):
    """A press of a disabled button, as a request made by hand would send it (AppTest, like a browser, refuses
    to click one, so the press is set on the widget directly). Streamlit discards it; the tests check that
    nothing happens."""
    button._value = True
    return button


def delete_popover(app: AppTest):
    """The Train page's "Delete run" popover, as sent to the browser."""
    [popover] = app.get("popover")
    return popover.proto.popover


def tiny(data_root: str, **changes) -> Config:
    return Config(**{"data_root": data_root, "iterations": 6, **TINY, **changes})


def test_with_the_instructor_key_set_a_session_starts_runs_once_it_entered_it_and_the_run_records_it(
        data_root, monkeypatch):
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", KEY)
    app = session()
    assert app.button(key=START).disabled
    press_anyway(app.button(key=START)).run()
    assert runs.list_runs() == [] and not app.success

    enter_key(app, "rosebud")
    assert [error.value for error in app.sidebar.error] == ["That is not the instructor key."]
    assert app.sidebar.text_input and app.button(key=START).disabled  # still asked for, still no Start

    enter_key(app, KEY)
    assert not app.sidebar.text_input and not app.sidebar.error
    assert not app.button(key=START).disabled
    fill_form(app, iterations=6, **TINY)
    app.button(key=START).click().run()
    assert not app.exception and not app.error
    [run] = runs.list_runs()
    assert json.loads((run.path / runs.LAUNCH).read_text())["owner"] == app.session_state["session_id"]


def test_with_the_key_set_a_session_without_it_stops_its_own_runs_only_and_resumes_keeps_deletes_none(
        data_root, monkeypatch, run_folders, stand_in):
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", KEY)
    theirs, mine = stand_in("theirs", owner="someone-else"), stand_in("mine", owner="me")
    ended = stopped_run(run_folders / "runs", "ended", owner="me", config=tiny(data_root))
    app = session(session_id="me")

    show(app, theirs)
    assert app.button(key="train_stop").disabled
    press_anyway(app.button(key="train_stop")).run()
    assert theirs.is_running() and not (theirs.path / runs.STOP_REQUESTED).exists()
    show(app, mine)
    app.button(key="train_stop").click().run()
    wait_for(lambda: not mine.is_running(), "this session's own run to stop")
    assert mine.status() == runs.STOPPED

    show(app, ended)  # started by this session, but resuming, keeping and deleting need the key
    resume, keep = app.button(key=f"train_resume_{ended.name}"), app.button(key=keep_button(ended))
    assert resume.disabled and keep.disabled and app.button(key="train_evaluate").disabled
    assert delete_popover(app).disabled
    for button in (resume, keep):
        press_anyway(button).run()
    press_anyway(app.button(key="train_delete")).run()
    assert not app.error
    assert ended.status() == runs.STOPPED and ended.path.is_dir() and not (run_folders / "checkpoints").exists()


def test_with_the_key_entered_a_session_stops_resumes_keeps_and_deletes_anyones_runs(data_root, monkeypatch,
                                                                                     run_folders, stand_in):
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", KEY)
    theirs = stand_in("theirs", owner="someone-else")
    resumed, deleted = (stopped_run(run_folders / "runs", name, owner="someone-else", config=tiny(data_root))
                        for name in ("resumed", "deleted"))
    app = session(key=KEY)

    show(app, theirs)
    app.button(key="train_stop").click().run()
    wait_for(lambda: not theirs.is_running(), "another session's run to stop")

    show(app, deleted)
    assert not app.button(key="train_evaluate").disabled and not delete_popover(app).disabled
    app.button(key=keep_button(deleted)).click().run()
    assert (run_folders / "checkpoints" / f"{deleted.name}.safetensors").read_bytes() == b"weights"
    app.button(key="train_delete").click().run()
    assert not deleted.path.exists() and f"Deleted run {deleted.name}." in texts(app)

    show(app, resumed)
    app.button(key=f"train_resume_{resumed.name}").click().run()
    assert not app.error and resumed.status() in (runs.QUEUED, runs.RUNNING)
    wait_for(lambda: (resumed.path / CONFIG).exists(), "the resumed run's process to begin training")
    assert resumed.owner() == "someone-else"  # still theirs


def test_without_an_instructor_key_every_session_does_everything(data_root, run_folders, stand_in):
    theirs = stand_in("theirs", owner="someone-else")
    ended = stopped_run(run_folders / "runs", "ended", owner="someone-else", config=tiny(data_root))
    app = session()
    assert not app.sidebar.text_input  # no key to enter
    assert not app.button(key=START).disabled
    show(app, ended)
    for key in (f"train_resume_{ended.name}", keep_button(ended), "train_evaluate"):
        assert not app.button(key=key).disabled, key
    assert not delete_popover(app).disabled
    show(app, theirs)
    app.button(key="train_stop").click().run()
    wait_for(lambda: not theirs.is_running(), "another session's run to stop")


def test_past_the_run_limit_start_queues_a_run_leaves_the_queue_and_the_server_starts_the_next_by_itself(
        data_root, monkeypatch, run_folders, stand_in):
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "1")
    blocker = stand_in("blocker")
    app = open_page("pages/train.py")  # app.py starts the queue's dispatcher thread for this runs folder
    fill_form(app, iterations=6, **TINY)
    app.button(key=START).click().run()
    [first] = [run for run in runs.list_runs() if run != blocker]
    assert app.success[0].value.startswith(f"Queued {first.name}: 0 runs ahead.")
    app.button(key=START).click().run()
    [second] = [run for run in runs.list_runs() if run not in (blocker, first)]
    assert app.success[0].value.startswith(f"Queued {second.name}: 1 run ahead.")
    assert [first.status(), second.status()] == [runs.QUEUED, runs.QUEUED]
    assert "queued, 1 run ahead" in progress_text(app)  # the page shows the run it queued last

    assert app.button(key="train_stop").label == "Leave the queue"
    app.button(key="train_stop").click().run()
    assert second.status() == runs.STOPPED and not app.exception
    assert "train_stop" not in [button.key for button in app.button]
    assert progress_text(app).endswith(": stopped")

    runs.stop(blocker)  # a place frees: the server's thread starts the first queued run, no page involved
    wait_for(lambda: first.is_running(), "the dispatcher thread to start the queued run", timeout=30)
    runs.stop(first)
    wait_for(lambda: not first.is_running(), "the run started from the queue to stop")
    assert runs.dispatch() == [] and second.status() == runs.STOPPED and "pid" not in second.launch()


@pytest.mark.slow  # two training processes start, and 60 iterations: 8 to 23 s, as busy as the machine is
def test_an_interrupted_run_says_so_and_resume_continues_it_from_its_saved_iteration_to_the_end(data_root):
    run = runs.start(tiny(data_root, iterations=60))
    wait_for(lambda: (run.path / TRAINING_STATE).exists(), "the run's first save")
    os.kill(run.launch()["pid"], signal.SIGKILL)  # as a reboot would: no word, no save
    wait_for(lambda: not run.is_running(), "the process to die")
    before = list(run.metrics())
    with safe_open(run.path / TRAINING_STATE, "pt") as state:
        saved = int(state.metadata()["iterations"])
    assert 0 < saved < 60 and len(before) >= saved

    app = open_page("pages/train.py")
    assert run.status() == runs.INTERRUPTED
    assert progress_text(app).endswith(": interrupted")
    assert [warning.value for warning in app.warning if warning.value.startswith(f"Run {run.name} was interrupted")]
    app.button(key=f"train_resume_{run.name}").click().run()
    assert [message.value for message in app.success] == [f"Resuming run {run.name}."]

    reached = []

    def ended() -> bool:
        reached.append(run.progress().iteration)
        return run.status() not in (runs.QUEUED, runs.RUNNING)

    wait_for(ended, "the resumed run to end")
    assert run.status() == runs.FINISHED, run.error()
    assert min(reached) >= saved, reached  # never back to the start
    after = run.metrics()
    assert [r["iteration"] for r in after] == list(range(1, 61))  # cut back to the save, then on: none twice
    assert after[:saved] == before[:saved]  # the records up to the save are the ones it had
    app.run()
    assert app.metric[0].label.startswith("Test accuracy") and not app.exception


def test_a_stopped_run_is_deleted_from_its_popover_and_the_page_says_so(run_folders):
    older = stopped_run(run_folders / "runs", "older")
    doomed = stopped_run(run_folders / "runs", "doomed")
    kept = runs.keep_checkpoint(doomed, "kept-from-doomed")
    app = open_page("pages/train.py")
    show(app, doomed)
    app.button(key="train_delete").click().run()
    assert not app.exception and not doomed.path.exists()
    assert f"Deleted run {doomed.name}." in texts(app)
    assert [run.name for run in runs.list_runs()] == [older.name]
    assert kept.read_bytes() == b"weights"  # a checkpoint kept for the Draw page stays


def test_a_run_training_or_shipped_with_the_app_is_never_deleted(run_folders, stand_in):
    training = stand_in("training")
    with pytest.raises(ValueError, match="is training: stop it first"):
        runs.delete(training)
    assert training.path.is_dir() and training.is_running()

    racing = stopped_run(run_folders / "runs", "racing")
    shipped = run_folder(runs.shipped_runs_root(), "shipped-maml", metrics=[record(i) for i in range(1, 7)],
                         config=Config(iterations=6, test_tasks=0), checkpoint=b"weights")
    assert shipped.status() == runs.FINISHED
    with pytest.raises(ValueError, match="ships with the app"):
        runs.delete(shipped)
    app = open_page("pages/train.py")
    show(app, shipped)
    assert not app.get("popover") and not [b for b in app.button if b.key == "train_delete"]  # nothing to press

    show(app, racing)
    stand_in("racing")  # resumed by another session since this page was drawn
    app.button(key="train_delete").click().run()
    assert "Cannot delete: Run racing is training" in app.error[0].value and racing.path.is_dir()


def test_compare_offers_resume_for_each_run_of_a_stopped_comparison_and_both_train_again(data_root, monkeypatch,
                                                                                        run_folders):
    monkeypatch.setenv("FEWSHOT_MAX_RUNS", "2")
    maml, fomaml = (stopped_run(run_folders / "runs", f"{algorithm}-pair", comparison="pair-compare",
                                config=tiny(data_root, algorithm=algorithm)) for algorithm in ("maml", "fomaml"))
    app = open_page("pages/compare.py")
    assert sorted(app.multiselect[0].value) == sorted([maml.name, fomaml.name])  # the fair pair, shown
    for run, label in ((maml, "Resume MAML"), (fomaml, "Resume FOMAML")):
        button = app.button(key=f"compare_resume_{run.name}")
        assert button.label == label and not button.disabled
    for run in (maml, fomaml):
        app.button(key=f"compare_resume_{run.name}").click().run()
        assert not app.exception and not app.error and run.status() in (runs.QUEUED, runs.RUNNING)
    wait_for(lambda: all((run.path / CONFIG).exists() for run in (maml, fomaml)), "both to train again")
    assert all(run.comparison() == "pair-compare" for run in (maml, fomaml))
    app.run()
    assert not [button for button in app.button if button.key and button.key.startswith("compare_resume_")]


def test_a_run_menu_holding_a_runs_old_label_keeps_showing_that_run(run_folders, stand_in):
    """A run's label changes as it starts (queued, then running), while the menu, outside the page's live part,
    still shows the old one; the browser sends back the label it shows, which Streamlit takes for the choice
    when it matches no option. The page must not say the run was deleted, nor show another run."""
    older = stopped_run(run_folders / "runs", "older")
    started = stand_in("started")
    app = session()
    show(app, older)
    stale = f"{started.name} · 6 it · queued"  # its label before it started
    send_label(app, app.selectbox(key="train_run_menu"), stale).run()
    assert not [w.value for w in app.warning if "was deleted" in w.value], texts(app)
    assert app.selectbox(key="train_run_menu").value == started.name


def send_label(app: AppTest, menu, label: str):
    """`menu` set to `label`, as the browser sends a label it shows: AppTest sends the formatted option."""
    menu.options = [label]
    app.session_state[TESTING_KEY][menu.id] = lambda value: label
    menu._value = label
    return menu
