"""Desks: what each browser has drawn on the Draw page (pages/draw.py), kept in one SQLite file on the server,
so that a reload of the page or a restart of the server loses no drawing.

A desk is a random id that the page puts in its URL (?desk=...): a reload, or the browser's reconnection to a
restarted server, sends it back, and the page finds its drawings, class names and settings again. The id comes
from a URL, so from anyone: only ids of the shape new_desk() makes are looked up.

Stored per desk: its JSON (pack), the time of its last save, nothing else about anyone. Bounds, for one server
serves a room: a desk's JSON is at most MAX_DESK_BYTES (a larger one is refused: the desk keeps its last save),
and the file holds at most MAX_DESKS desks (the least recently saved go first): at most MAX_DESKS *
MAX_DESK_BYTES, 600 MB, on disk, where a desk of five characters takes 30 to 130 KB. A read or write waits at
most BUSY_TIMEOUT_S for another's write.
"""

import base64
import json
import os
import re
import secrets
import sqlite3
import time
from pathlib import Path

import numpy as np
import torch

from .omniglot import IMAGE_SIZE, uint8_to_ink
from .runs import runs_root

DB_FILE = "desks.sqlite3"  # beside the runs and challenge.sqlite3; runs.list_runs looks only at folders
MAX_DESKS = 1_000  # a room's browsers, over many lessons
MAX_DESK_BYTES = 600_000  # a full page, 20 classes x 5 drawings and a query, of characters of 3 strokes of about
# 30 points each: 101 canvases of about 4 KB of strokes (fabric.js' JSON) and 1 KB of ink, 500 KB
BUSY_TIMEOUT_S = 2  # a save waits in the student's script run: a lock held longer turns keeping off
DESK_ID = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16): 16 random bytes, 128 bits
QUERY = "query"  # the query's slot; the others are (class, drawing)

SCHEMA = """CREATE TABLE IF NOT EXISTS desks (
    desk TEXT PRIMARY KEY,
    saved REAL NOT NULL,
    contents TEXT NOT NULL)"""
SAVE = """INSERT INTO desks (desk, saved, contents) VALUES (?, ?, ?)
    ON CONFLICT (desk) DO UPDATE SET saved = excluded.saved, contents = excluded.contents"""
EVICT = "DELETE FROM desks WHERE desk IN (SELECT desk FROM desks ORDER BY saved DESC LIMIT -1 OFFSET ?)"


class DeskError(Exception):
    """The desks cannot be read or written, or a desk's contents are not what pack makes; the message is one
    line."""


class DeskTooLarge(DeskError):
    """A desk's JSON is larger than MAX_DESK_BYTES."""


def db_path() -> Path:
    """$FEWSHOT_DESKS, else desks.sqlite3 in the runs folder."""
    return Path(os.environ.get("FEWSHOT_DESKS") or runs_root() / DB_FILE)


def new_desk() -> str:
    return secrets.token_urlsafe(16)


def is_desk(text) -> bool:
    """Whether `text` (from a URL: anything) is a desk id as new_desk makes them."""
    return isinstance(text, str) and DESK_ID.fullmatch(text) is not None


def pack(kept: dict, filled: dict, values: dict) -> str:
    """A desk's JSON: `kept`, slot -> (a canvas' strokes as it sends them, their 28x28 ink or None); `filled`,
    slot -> 28x28 ink; `values`, name -> str, int, float or bool. A slot is (class, drawing) or QUERY."""
    return json.dumps({"kept": {slot_name(slot): [strokes, _ink_text(ink)] for slot, (strokes, ink) in kept.items()},
                       "filled": {slot_name(slot): _ink_text(ink) for slot, ink in filled.items()},
                       "values": values}, sort_keys=True, separators=(",", ":"))


def unpack(contents: str) -> tuple:
    """(kept, filled, values) as pack took them; DeskError for what pack does not make."""
    try:
        desk = json.loads(contents)
        kept = {_slot(name): (strokes, _ink(ink)) for name, (strokes, ink) in desk["kept"].items()
                if strokes is None or isinstance(strokes, dict)}
        filled = {_slot(name): _ink(ink) for name, ink in desk["filled"].items() if ink is not None}
        values = {name: value for name, value in desk["values"].items() if isinstance(value, (str, int, float))}
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # json's errors are ValueError's
        raise DeskError(f"a desk that cannot be read ({type(error).__name__}: {error})") from None
    return kept, filled, values


class Desks:
    def __init__(self, path: Path):
        """Opens the desks at `path`, making the file if need be; DeskError if it cannot."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DeskError(f"{self.path}: {error.strerror}") from None
        self._connected(self._create)

    def load(self, desk: str) -> str | None:
        """The desk's JSON as last saved; None for a desk never saved, or dropped since."""
        row = self._connected(lambda db: db.execute("SELECT contents FROM desks WHERE desk = ?", (desk,)).fetchone())
        return row[0] if row else None

    def save(self, desk: str, contents: str) -> None:
        """Keeps `contents` (pack's JSON) as the desk's, and drops the least recently saved desks beyond
        MAX_DESKS; DeskTooLarge, and nothing written, for contents over MAX_DESK_BYTES."""
        size = len(contents.encode())
        if size > MAX_DESK_BYTES:
            raise DeskTooLarge(f"{size // 1000} KB of drawings, more than the {MAX_DESK_BYTES // 1000} KB a "
                               f"desk may keep")

        def write(db):
            with db:  # commits, or rolls back on an exception
                db.execute("BEGIN IMMEDIATE")
                db.execute(SAVE, (desk, time.time(), contents))
                db.execute(EVICT, (MAX_DESKS,))
        self._connected(write)

    def _create(self, db) -> None:
        db.execute("PRAGMA journal_mode=WAL")  # kept in the file: a session's load never waits for a save
        db.execute(SCHEMA)
        db.execute("CREATE INDEX IF NOT EXISTS desks_by_time ON desks (saved)")  # EVICT walks it

    def _connected(self, work):
        """`work(connection)`; DeskError for any failure of SQLite's: locked for BUSY_TIMEOUT_S, not a database,
        corrupt, read-only, ..."""
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                return work(db)
            finally:
                db.close()
        except sqlite3.Error as error:
            raise DeskError(f"{self.path}: {error}") from None


def slot_name(slot) -> str:
    """A slot's name, "<class>_<drawing>" or QUERY: in a desk's JSON, and in its canvas' key (pages/draw.py)."""
    return slot if slot == QUERY else f"{slot[0]}_{slot[1]}"


def _slot(name: str):
    if name == QUERY:
        return QUERY
    drawing_class, drawing = name.split("_")  # ValueError unless two
    return int(drawing_class), int(drawing)


def _ink_text(ink: np.ndarray | None) -> str | None:
    """Ink (omniglot.uint8_to_ink of a grey image, as drawing.drawing_to_ink makes it) as that grey image,
    base64: 1 KB a drawing, and exactly the same ink back."""
    if ink is None:
        return None
    grey = np.round((1 - np.asarray(ink, np.float64)) * 255).astype(np.uint8)
    return base64.b64encode(grey.tobytes()).decode()


def _ink(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    grey = np.frombuffer(base64.b64decode(text, validate=True), np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
    return uint8_to_ink(torch.from_numpy(grey.copy())).numpy()
