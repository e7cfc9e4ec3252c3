"""The instructor key and run ownership against a student who sends the server websocket messages made by hand
(tests/forged.py), not only clicks the page: presses of buttons drawn disabled, or not drawn at all, a run menu
set to someone else's run before Stop, widget states named like the session's own keys, and key guesses, long
or many at once. One server for the module, with FEWSHOT_INSTRUCTOR_KEY set; runs written by hand (fake_runs),
one of them "training" as a sleeping stand-in process; no real training.

Two checks stand in the way of each press: Streamlit (1.67) drops the value of a widget drawn disabled and skips its
callback, and the callback checks the permission again (app_ui.managing, app_ui._stop). Either alone holds; the
tests fail when both are gone (a button drawn enabled whose callback skips the check).
"""

import json
import subprocess
import sys
import threading
import time

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState

from browser import served_app
from fake_runs import record, run_folder
from fewshot import access, runs
from fewshot.config import Config
from forged import FINISHED, ForgedSession, text, texts, trigger

KEY = "rosebud-42"
THEIRS_STOPPED, THEIRS_RUNNING = "theirs-stopped", "theirs-running"
OWNER = "someone-else"  # the browser session that started both runs: not the student's
NOT_THE_KEY = "That is not the instructor key."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app with an instructor key, over a runs folder with a stopped run (checkpoint, curves) and a training
    stand-in, both started by another session. Yields (url, folder)."""
    folder = tmp_path_factory.mktemp("forged")
    root = folder / "runs"
    stopped = {"pid": None, "started": time.time(), "config": Config(iterations=6).to_dict(), "owner": OWNER}
    run = run_folder(root, THEIRS_STOPPED, launch=json.dumps(stopped), metrics=[record(1)], checkpoint=b"weights")
    (run.path / runs.STOP_REQUESTED).write_text("")
    running = root / THEIRS_RUNNING
    running.mkdir()
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "--run-dir", str(running)])
    launch = {"pid": stand_in.pid, "started": time.time(), "config": Config(iterations=6).to_dict(), "owner": OWNER}
    (running / runs.LAUNCH).write_text(json.dumps(launch))
    try:
        with served_app(folder, FEWSHOT_INSTRUCTOR_KEY=KEY, FEWSHOT_RUNS=str(root),
                        FEWSHOT_CHECKPOINTS=str(folder / "checkpoints")) as url:
            yield url, folder
    finally:
        stand_in.kill()
        stand_in.wait()


@pytest.fixture
def student(server):
    """A new browser session, without the key, on the Train page."""
    url, _ = server
    with ForgedSession(url) as session:
        session.open("train")
        yield session


def files(folder) -> dict:
    """Every file under the runs and checkpoints folders, with its size: what any action would change."""
    return {str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "streamlit.log"}


def assert_untouched(folder, before: dict, session: ForgedSession) -> None:
    assert files(folder) == before
    assert [run.status() for run in runs.list_runs(folder / "runs")] == [runs.RUNNING, runs.STOPPED]
    assert session.finished == FINISHED and session.texts("exception") == []


def show(session: ForgedSession, menu_label: str, name) -> None:
    session.run(text(session.widget(menu_label), name))


def test_presses_of_the_buttons_drawn_disabled_change_nothing(server, student):
    _, folder = server
    before = files(folder)
    show(student, "Run", THEIRS_STOPPED)
    labels = ["Resume", "Evaluate now", f"Delete {THEIRS_STOPPED}", "Keep checkpoint for the Draw page", "Start"]
    for label in labels:
        [(widget_id, widget)] = student.widgets(label)
        student.run(trigger(widget_id))
        assert_untouched(folder, before, student)
        assert widget.disabled, label


def test_presses_of_buttons_not_drawn_this_run_change_nothing(server, student):
    """The buttons of a stopped run, pressed while the page shows a running one (which has none of them), in the
    message that brings the stopped run back."""
    _, folder = server
    before = files(folder)
    show(student, "Run", THEIRS_STOPPED)
    pressed = [student.widget(label) for label in ("Resume", "Evaluate now", f"Delete {THEIRS_STOPPED}")]
    show(student, "Run", THEIRS_RUNNING)
    assert student.widgets("Resume") == []
    student.run(text(student.widget("Run"), THEIRS_STOPPED), *map(trigger, pressed))
    assert_untouched(folder, before, student)


def test_stop_of_someone_elses_run_chosen_in_the_menu_changes_nothing(server, student):
    _, folder = server
    before = files(folder)
    show(student, "Run", THEIRS_RUNNING)
    [(stop, widget)] = student.widgets("Stop training")
    student.run(trigger(stop))
    assert_untouched(folder, before, student)
    assert widget.disabled
    show(student, "Run", THEIRS_STOPPED)
    student.run(text(student.widget("Run"), THEIRS_RUNNING), trigger(stop))  # the run chosen and stopped at once
    assert_untouched(folder, before, student)
    student.open("compare")
    student.run(texts(student.widget("Runs to overlay"), [THEIRS_RUNNING]))
    student.run(trigger(student.widget("Stop the run")))
    assert_untouched(folder, before, student)
    assert student.widgets("Stop the run")[0][1].disabled


def test_widget_states_named_like_the_sessions_own_keys_unlock_nothing(server, student):
    """A widget id that is a session-state key (the key's flag, the session id that owns runs) is no widget: the
    server never takes its value for the key's, even with presses sent beside it. (Streamlit 1.67 then fails
    every run of that session, with its generic message and no traceback: the forger's own page only.)"""
    _, folder = server
    before = files(folder)
    menu = student.widget("Run")
    show(student, "Run", THEIRS_RUNNING)
    stop = student.widget("Stop training")
    show(student, "Run", THEIRS_STOPPED)
    pressed = [student.widget(label) for label in ("Resume", "Evaluate now", f"Delete {THEIRS_STOPPED}", "Start")]
    forged = [WidgetState(id="instructor", bool_value=True), WidgetState(id="session_id", string_value=OWNER)]
    student.run(*forged, *map(trigger, pressed))
    student.run(*forged, text(menu, THEIRS_RUNNING), trigger(stop))
    assert files(folder) == before
    assert [run.status() for run in runs.list_runs(folder / "runs")] == [runs.RUNNING, runs.STOPPED]
    assert student.elements_of("exception") and not any(e.stack_trace for e in student.elements_of("exception"))


def test_a_key_of_megabytes_is_refused_in_a_line(student):
    """...and not kept whole in the session: the field takes access.MAX_KEY_CHARS (Streamlit cuts a longer value)."""
    [(field, proto)] = student.widgets("Instructor key")
    assert proto.max_chars == access.MAX_KEY_CHARS
    student.run(text(field, KEY + "x" * 5_000_000), trigger(student.widget("Unlock")))
    assert NOT_THE_KEY in student.texts("alert")
    assert student.texts("exception") == [] and student.widgets("Start")[0][1].disabled


def test_key_guesses_sent_from_many_sessions_at_once_are_answered_one_at_a_time(server):
    """Each wrong key waits a second, in the session that sent it; sessions cost nothing to open, so without one
    check at a time for the whole server, n sessions would guess n keys a second. The right key still unlocks."""
    url, _ = server
    guessers = [ForgedSession(url) for _ in range(3)]
    answered = []

    def guess(session: ForgedSession, key: str) -> None:
        session.run(text(session.widget("Instructor key"), key), trigger(session.widget("Unlock")))
        answered.append(time.monotonic())

    try:
        for session in guessers:
            session.open("train")
        threads = [threading.Thread(target=guess, args=(session, f"guess-{i}")) for i, session in enumerate(guessers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(NOT_THE_KEY in session.texts("alert") for session in guessers)
        answered.sort()
        assert answered[-1] - answered[0] >= 0.8 * (len(guessers) - 1), answered
        guess(guessers[0], KEY)
        assert NOT_THE_KEY not in guessers[0].texts("alert") and not guessers[0].widgets("Start")[0][1].disabled
    finally:
        for session in guessers:
            session.close()
