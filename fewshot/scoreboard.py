"""The class scoreboard: every answer given on the challenge page (pages/challenge.py), by every browser
session of the server, in one SQLite file, so that the teacher can show the room's accuracy against the
model's, level by level.

Many sessions write at once, and SQLite lets one writer in at a time. In WAL mode readers go on while it
writes; a write waits for the lock, and is tried again (RETRIES times) where SQLite says busy without
waiting: a busy moment loses no answer. All the tries of one read or write wait BUSY_TIMEOUT_S in all,
so that a lock held for long (another program's) holds a student's click that long, no longer. A write
takes the lock first thing (BEGIN IMMEDIATE), so the rows it counts against the limits stay counted right
until it inserts.

Stored per answer: the level, the seed, task and query numbers, the student's, the model's and the right
class, an optional nickname, an anonymous id of the browser session, and the time. Nothing else about anyone.
"""

import os
import re
import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .challenge import WAYS, Level
from .runs import runs_root

DB_FILE = "challenge.sqlite3"  # beside the runs; runs.list_runs looks only at folders
MAX_ROWS = 200_000  # about 20 MB. A class of 40 answering every 6 s for an hour gives 24,000
MAX_SESSION_ANSWERS = 1_000  # 200 tasks: hours of play for one browser session
MAX_NICKNAME = 20  # characters
BUSY_TIMEOUT_S = 10  # how long a read or write waits in all for another's write
RETRIES = 5  # tries again within that time

SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    ways INTEGER NOT NULL,
    one_alphabet INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    task INTEGER NOT NULL,
    query INTEGER NOT NULL,
    student INTEGER NOT NULL,
    model INTEGER NOT NULL,
    truth INTEGER NOT NULL,
    nickname TEXT,
    session TEXT NOT NULL,
    time REAL NOT NULL,
    UNIQUE (session, ways, one_alphabet, seed, task, query))"""  # a session answers each query once
INSERT = """INSERT OR IGNORE INTO answers (ways, one_alphabet, seed, task, query, student, model, truth, nickname,
    session, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
STANDINGS = f"""SELECT ways, one_alphabet, count(DISTINCT session), count(*), sum(student = truth), sum(model = truth)
    FROM answers WHERE ways IN ({", ".join(map(str, WAYS))}) AND one_alphabet IN (0, 1)
    GROUP BY ways, one_alphabet ORDER BY one_alphabet, ways"""  # the challenge's levels, whatever else the file holds
PLAYED = """SELECT ways, one_alphabet, seed, task, session, student, model, truth FROM answers
    WHERE session > ? AND session < ? ORDER BY ways, one_alphabet, seed, task, session, query LIMIT ?"""


class ScoreboardError(Exception):
    """The scoreboard cannot be read or written; the message is one line."""


class ScoreboardFull(ScoreboardError):
    """The session or the whole scoreboard has stored as many answers as it may."""


@dataclass(frozen=True)
class Answer:
    level: Level
    seed: int
    task: int  # task number of the seed, from 1
    query: int  # query number of the task, from 1
    student: int  # classes, 0 .. ways-1
    model: int
    truth: int


@dataclass(frozen=True)
class Standing:
    """The room's results at one level."""
    level: Level
    players: int  # browser sessions
    answers: int
    student_right: int
    model_right: int  # on the same queries


def db_path() -> Path:
    """$FEWSHOT_DB, else challenge.sqlite3 in the runs folder."""
    return Path(os.environ.get("FEWSHOT_DB") or runs_root() / DB_FILE)


def clean_nickname(text: str | None) -> str | None:
    """At most MAX_NICKNAME letters, digits, spaces, '-', '_' and '.'; None when nothing is left."""
    kept = re.sub(r"[^\w .-]", "", unicodedata.normalize("NFKC", (text or "")[:10 * MAX_NICKNAME]))
    return " ".join(kept.split())[:MAX_NICKNAME].strip() or None


class Scoreboard:
    def __init__(self, path: Path):
        """Opens the scoreboard at `path`, making it if need be; ScoreboardError if it cannot."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ScoreboardError(f"{self.path}: {error.strerror}") from None
        self._retrying(self._create)

    def record(self, answers: list, session: str, nickname: str | None = None) -> int:
        """Stores a session's answers, all or none (a session's answer to a query it answered before is
        kept as it was); returns how many were new. ScoreboardFull where they would pass a limit."""
        rows = [(a.level.ways, int(a.level.one_alphabet), a.seed, a.task, a.query, a.student, a.model, a.truth,
                 clean_nickname(nickname), session, time.time()) for a in answers]

        def insert(db):
            with db:  # commits, or rolls back on an exception
                db.execute("BEGIN IMMEDIATE")
                (mine,) = db.execute("SELECT count(*) FROM answers WHERE session = ?", (session,)).fetchone()
                if mine + len(rows) > MAX_SESSION_ANSWERS:
                    raise ScoreboardFull(f"this browser session has stored {mine} of the "
                                         f"{MAX_SESSION_ANSWERS} answers one may store")
                (stored,) = db.execute("SELECT count(*) FROM answers").fetchone()
                if stored + len(rows) > MAX_ROWS:
                    raise ScoreboardFull(f"it holds {stored} of the {MAX_ROWS} answers it may hold")
                return db.executemany(INSERT, rows).rowcount
        return self._retrying(insert)

    def standings(self) -> list:
        """The room's results, a Standing per level played: mixed alphabets first, fewer ways first."""
        rows = self._retrying(lambda db: db.execute(STANDINGS).fetchall())
        return [Standing(Level(ways, bool(one_alphabet)), *counts) for ways, one_alphabet, *counts in rows]

    def played(self, desk: str) -> dict:
        """The tasks played by the sessions of a desk (session ids "<desk>.<suffix>"), as the challenge page keeps
        them: (level, seed, task) -> the student's answers, the model's and the truth, by query; a task that two of
        them played (a link with the desk, shared), the first's. At most MAX_SESSION_ANSWERS answers are read,
        whatever the file holds."""
        rows = self._retrying(lambda db: db.execute(PLAYED, (desk + ".", desk + "/", MAX_SESSION_ANSWERS)).fetchall())
        tasks, players = {}, {}
        for ways, one_alphabet, seed, task, session, *answers in rows:
            key = (Level(ways, bool(one_alphabet)), seed, task)
            if players.setdefault(key, session) == session:
                for column, answer in zip(tasks.setdefault(key, ([], [], [])), answers):
                    column.append(answer)
        return tasks

    def _create(self, db) -> None:
        db.execute("PRAGMA journal_mode=WAL")  # kept in the file: readers never wait for a writer
        db.execute(SCHEMA)

    def _retrying(self, work):
        """`work(connection)`, tried again while the database stays busy; ScoreboardError for any other
        failure, or after RETRIES tries, or BUSY_TIMEOUT_S."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        for attempt in range(RETRIES + 1):
            try:
                db = sqlite3.connect(self.path, timeout=max(deadline - time.monotonic(), 0), isolation_level=None)
                try:
                    return work(db)
                finally:
                    db.close()
            except sqlite3.OperationalError as error:
                pause = 0.05 * 2 ** attempt
                if not _busy(error) or attempt == RETRIES or time.monotonic() + pause >= deadline:
                    raise ScoreboardError(f"{self.path}: {error}") from None
                time.sleep(pause)
            except sqlite3.Error as error:  # not a database, corrupt, read-only, ...
                raise ScoreboardError(f"{self.path}: {error}") from None


def _busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
