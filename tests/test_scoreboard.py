"""The class scoreboard (fewshot/scoreboard.py): what it stores, its limits, a bad file, many writers at once."""

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from fewshot import runs, scoreboard
from fewshot.config import REPO_ROOT
from fewshot.challenge import Level
from fewshot.scoreboard import Answer, Scoreboard, ScoreboardError, ScoreboardFull

FIVE, TWENTY_ONE_ALPHABET = Level(5, False), Level(20, True)


def task_answers(level: Level, seed: int, task: int, student: list, model: list, truth: list) -> list:
    return [Answer(level, seed, task, q + 1, s, m, t) for q, (s, m, t) in enumerate(zip(student, model, truth))]


def rows(path, columns: str = "*") -> list:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT {columns} FROM answers ORDER BY id").fetchall()


def test_answers_are_stored_with_all_they_need_and_summed_per_level(tmp_path):
    board = Scoreboard(tmp_path / "board.sqlite3")
    assert board.record(task_answers(FIVE, 7, 1, [0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 4, 3, 0]), "s1", "Ada") == 5
    assert board.record(task_answers(FIVE, 7, 1, [4, 4, 4, 4, 4], [0, 1, 2, 3, 0], [0, 1, 4, 3, 0]), "s2") == 5
    assert board.record(task_answers(TWENTY_ONE_ALPHABET, 7, 3, [19, 2], [19, 5], [19, 2]), "s1", "Ada") == 2
    stored = rows(board.path, "ways, one_alphabet, seed, task, query, student, model, truth, nickname, session")
    assert stored[:2] == [(5, 0, 7, 1, 1, 0, 0, 0, "Ada", "s1"), (5, 0, 7, 1, 2, 1, 1, 1, "Ada", "s1")]
    assert stored[5] == (5, 0, 7, 1, 1, 4, 0, 0, None, "s2")
    assert stored[-1] == (20, 1, 7, 3, 2, 2, 5, 2, "Ada", "s1")
    assert all(isinstance(time, float) for (time,) in rows(board.path, "time"))
    five, twenty = board.standings()
    assert five == scoreboard.Standing(FIVE, players=2, answers=10, student_right=3 + 1, model_right=4 + 4)
    assert twenty == scoreboard.Standing(TWENTY_ONE_ALPHABET, players=1, answers=2, student_right=2, model_right=1)


def test_a_session_answers_each_query_once(tmp_path):
    board = Scoreboard(tmp_path / "board.sqlite3")
    board.record(task_answers(FIVE, 1, 1, [0, 0], [1, 1], [0, 1]), "s1")
    assert board.record(task_answers(FIVE, 1, 1, [1, 1, 1], [1, 1, 1], [0, 1, 2]), "s1") == 1  # the third is new
    assert rows(board.path, "query, student") == [(1, 0), (2, 0), (3, 1)]
    assert board.record(task_answers(FIVE, 1, 1, [1], [1], [0]), "s2") == 1  # another session's answer counts


def test_a_desks_tasks_are_read_back_as_played(tmp_path, monkeypatch):
    """What the challenge page rebuilds a reloaded session's game from: the tasks of the desk's sessions
    ("<desk>.<suffix>"), each query's answers in query order whatever the order they were recorded in, a task two
    sessions played (a shared link) the first's alone, and no other desk's."""
    board = Scoreboard(tmp_path / "board.sqlite3")
    board.record(task_answers(FIVE, 7, 2, [0, 1, 2], [0, 1, 1], [4, 1, 2]), "d1.a")
    board.record(task_answers(FIVE, 7, 1, [3, 3], [2, 3], [3, 0])[::-1], "d1.b")  # query 2 first, after a reload
    board.record(task_answers(FIVE, 7, 1, [1, 1], [2, 3], [3, 0]), "d1.c")  # the same task, on a shared link
    board.record(task_answers(TWENTY_ONE_ALPHABET, 7, 1, [19], [18], [19]), "d1.a")
    board.record(task_answers(FIVE, 7, 3, [1], [1], [1]), "d2.a")
    board.record(task_answers(FIVE, 7, 4, [1], [1], [1]), "d1")  # no session of d1's: another program's row
    assert board.played("d1") == {(FIVE, 7, 2): ([0, 1, 2], [0, 1, 1], [4, 1, 2]),
                                  (FIVE, 7, 1): ([3, 3], [2, 3], [3, 0]),
                                  (TWENTY_ONE_ALPHABET, 7, 1): ([19], [18], [19])}
    assert board.played("d2") == {(FIVE, 7, 3): ([1], [1], [1])}
    assert board.played("d3") == {} and board.played("d") == {}
    monkeypatch.setattr(scoreboard, "MAX_SESSION_ANSWERS", 4)  # rows another program wrote: no more read than that
    assert board.played("d1") == {(FIVE, 7, 1): ([3, 3], [2, 3], [3, 0])}  # its first 4 rows: d1.b's, d1.c's


def test_nicknames_are_cleaned_and_bounded(tmp_path):
    board = Scoreboard(tmp_path / "board.sqlite3")
    nicknames = ["  Zoë   <b>O'Neil</b>\n", "x" * 500, "😀<>;", "Robert'); DROP TABLE answers;--"]
    for session, nickname in enumerate(nicknames):
        board.record(task_answers(FIVE, 1, 1, [0], [0], [0]), str(session), nickname)
    assert rows(board.path, "nickname") == [("Zoë bONeilb",), ("x" * scoreboard.MAX_NICKNAME,), (None,),
                                            ("Robert DROP TABLE an",)]


def test_limits_per_session_and_in_all_refuse_a_whole_task(tmp_path, monkeypatch):
    monkeypatch.setattr(scoreboard, "MAX_SESSION_ANSWERS", 7)
    monkeypatch.setattr(scoreboard, "MAX_ROWS", 12)
    board = Scoreboard(tmp_path / "board.sqlite3")
    five = task_answers(FIVE, 1, 1, [0] * 5, [0] * 5, [0] * 5)
    board.record(five, "s1")
    with pytest.raises(ScoreboardFull, match="this browser session has stored 5 of the 7 answers one may store"):
        board.record(task_answers(FIVE, 1, 2, [0] * 5, [0] * 5, [0] * 5), "s1")
    board.record(five, "s2")
    with pytest.raises(ScoreboardFull, match="it holds 10 of the 12 answers it may hold"):
        board.record(five, "s3")
    assert len(rows(board.path)) == 10  # all of a task or none of it


@pytest.mark.parametrize("make, message", [
    (lambda path: path.write_bytes(b"certainly not SQLite " * 200), "file is not a database"),
    (lambda path: path.mkdir(), "unable to open database file"),
])
def test_a_file_that_is_no_scoreboard_is_a_one_line_error(tmp_path, make, message):
    path = tmp_path / "board.sqlite3"
    make(path)
    with pytest.raises(ScoreboardError) as error:
        Scoreboard(path)
    assert str(error.value) == f"{path}: {message}"


def test_standings_are_of_the_challenge_levels_only_whatever_the_file_holds(tmp_path):
    """Rows written by another program (the file is the server's, not the page's): a level that is no challenge level
    would be a row of the room's table, which renders Markdown, and there could be millions of them."""
    board = Scoreboard(tmp_path / "board.sqlite3")
    board.record(task_answers(FIVE, 1, 1, [0, 1], [0, 0], [0, 1]), "s1")
    others = ["[click me](https://example.com) **5**", 3, 20.5] + list(range(1000, 1100))
    with sqlite3.connect(board.path) as db:
        db.executemany(scoreboard.INSERT, [(ways, 0, 1, 1, 1, 0, 0, 0, None, "s2", 0.0) for ways in others] +
                       [(5, one_alphabet, 1, 1, 1, 0, 0, 0, None, "s2", 0.0) for one_alphabet in (2, "yes")])
    assert board.standings() == [scoreboard.Standing(FIVE, players=1, answers=2, student_right=2, model_right=1)]


def test_a_locked_scoreboard_is_waited_for_busy_timeout_s_in_all(tmp_path, monkeypatch):
    """Another program holds the write lock (a teacher's SQLite browser with unsaved edits): a student's answers wait
    for it BUSY_TIMEOUT_S in all, not that much again on each retry (a minute per click on the real settings)."""
    monkeypatch.setattr(scoreboard, "BUSY_TIMEOUT_S", 0.2)
    board = Scoreboard(tmp_path / "board.sqlite3")
    holder = sqlite3.connect(board.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waits = []  # the longest each connection may wait for the lock, and each pause between tries, of this thread
    connect, sleep, this_thread = sqlite3.connect, time.sleep, threading.get_ident()  # (not of other tests' threads)

    def connect_noted(*args, timeout, **kwargs):
        if threading.get_ident() == this_thread:
            waits.append(timeout)
        return connect(*args, timeout=timeout, **kwargs)

    def sleep_noted(seconds):
        if threading.get_ident() == this_thread:
            waits.append(seconds)
        sleep(seconds)
    monkeypatch.setattr(sqlite3, "connect", connect_noted)
    monkeypatch.setattr(time, "sleep", sleep_noted)
    with pytest.raises(ScoreboardError, match="database is locked"):
        board.record(task_answers(FIVE, 1, 1, [0], [0], [0]), "s1")
    holder.close()
    assert 0 < sum(waits) <= scoreboard.BUSY_TIMEOUT_S, waits


def test_the_scoreboard_lives_beside_the_runs_unless_told_and_is_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("FEWSHOT_DB", raising=False)
    assert scoreboard.db_path() == tmp_path / "runs" / "challenge.sqlite3"
    board = Scoreboard(scoreboard.db_path())
    board.record(task_answers(FIVE, 1, 1, [0], [0], [0]), "s1")
    with sqlite3.connect(board.path) as reader:  # held open, so that the -wal and -shm files stay there too
        reader.execute("SELECT count(*) FROM answers").fetchone()
        assert runs.list_runs(runs.runs_root()) == [] and runs.list_runs() == runs.list_runs(runs.shipped_runs_root())
    monkeypatch.setenv("FEWSHOT_DB", str(tmp_path / "elsewhere.db"))
    assert scoreboard.db_path() == tmp_path / "elsewhere.db"


WRITERS, TASKS = 6, 40  # processes, and tasks of 5 answers each writes, every task its own transaction
# One writer: a process of its own, started afresh (a fork would copy whatever locks the test process' other threads
# hold at that moment, the app's queue dispatcher's and Streamlit's from earlier tests: all six hung once in CI),
# which waits for the file `go`, so that all write at once.
WRITER = """
import sys, time
from pathlib import Path
from fewshot.challenge import Level
from fewshot.scoreboard import Answer, Scoreboard
path, writer, go, tasks = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
board = Scoreboard(path)
while not go.exists():
    time.sleep(0.005)
for task in range(1, tasks + 1):
    board.record([Answer(Level(5, False), writer, task, q + 1, 0, 1, 0) for q in range(5)], f"session-{writer}")
"""


def test_many_writers_at_once_lose_no_answer(tmp_path):
    path, go = str(tmp_path / "board.sqlite3"), tmp_path / "go"
    Scoreboard(path)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(w), str(go), str(TASKS)], cwd=REPO_ROOT,
                                stderr=subprocess.PIPE, text=True) for w in range(WRITERS)]
    time.sleep(1)  # their imports
    go.write_text("")
    errors = [writer.communicate(timeout=120)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0] * WRITERS, errors
    assert len(rows(path)) == WRITERS * TASKS * 5
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    standing, = Scoreboard(path).standings()
    assert (standing.players, standing.answers, standing.student_right, standing.model_right) == (
        WRITERS, WRITERS * TASKS * 5, WRITERS * TASKS * 5, 0)
