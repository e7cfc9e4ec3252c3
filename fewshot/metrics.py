"""A run's metrics.jsonl: one JSON record per iteration, appended by training, read by the app as it grows.

A process killed mid-write leaves a last line without its newline; readers wait for the newline, and a
resumed run cuts the file back to its checkpoint (`truncate`), which drops such a line. A line that is not a
record (a disk error, a hand edit) is skipped and counted, never fatal. What is read of it is bounded
(MAX_BYTES), and nothing but a regular file is read (files.read_file).
"""

import json
import math
import os
import threading
from pathlib import Path

from . import files
from .files import open_regular, read_file

MAX_BYTES = 1 << 28  # 268 MB. A line takes 170 bytes, 1,460 with a first- against second-order probe of the
# form's largest network (6 blocks) and a validation: 100,000 iterations (limits.MAXIMA), each probed, write 146 MB

MAX_WHOLE = 2**53  # the largest whole numbers a float holds exactly
MIN_SPAN = 5e-5  # seconds. Training writes its times to 4 decimals: an iteration takes 0.0001 s or more
REQUIRED_NUMBERS = ("seconds", "train_loss", "train_accuracy")
PROBE_NUMBERS = ("cosine", "norm_ratio", "dropped_norm", "g2_norm")  # a "probe" holds them (probe.py), overall
# and under "layers" for each layer


def parse(lines: list) -> tuple[list, int]:
    """The records among complete `lines` (bytes or str), and how many lines were not records."""
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # also a UnicodeDecodeError; RecursionError: nested too deep to parse
            record = None
        if _is_record(record):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def _is_record(record) -> bool:
    """Whether a parsed line is a record the app can plot and tabulate: an iteration (0 or more), numbers for what
    it measured (a validation's loss with its accuracy: the charts draw both), and finite ones where the pages
    compute or print them as they are: its time (durations), accuracies (fractions from 0 to 1: "nan %"
    otherwise) and memory. A diverged run's NaN losses are records still."""
    if (not isinstance(record, dict) or type(record.get("iteration")) is not int
            or not 0 <= record["iteration"] <= MAX_WHOLE):
        return False
    measured = [record.get(key) for key in REQUIRED_NUMBERS]
    measured += [value for key, value in record.items() if key.startswith("val_") or key == "training_memory_mb"]
    if "probe" in record:
        if not _is_probe(record["probe"]):
            return False
        groups = [record["probe"], *record["probe"]["layers"].values()]
        measured += [group.get(key) for group in groups for key in PROBE_NUMBERS]
    if not all(_is_number(value) for value in measured) or "val_loss" in record and "val_accuracy" not in record:
        return False
    accuracies = [value for key, value in record.items() if key.endswith("_accuracy")]
    return (math.isfinite(record["seconds"]) and math.isfinite(record.get("training_memory_mb", 0.0))
            and all(0 <= accuracy <= 1 for accuracy in accuracies))


def _is_number(value) -> bool:
    """A float (NaN and infinities too), or an int that a float holds: JSON reads a 400-digit number as an int,
    which math.isfinite, a division and the pages' formatting refuse (OverflowError)."""
    return type(value) is float or type(value) is int and abs(value) <= MAX_WHOLE


def _is_probe(probe) -> bool:
    """Whether a record's "probe" has the shape training writes: a dict, and a dict of dicts under "layers"."""
    return (isinstance(probe, dict) and isinstance(probe.get("layers"), dict)
            and all(isinstance(layer, dict) for layer in probe["layers"].values()))


def spans(records: list) -> list:
    """(seconds, record) for each record after the first whose time is at least MIN_SPAN after the one before's:
    how long its iteration took. A time that goes back or stands still (a hand edit) is no iteration's: that span is
    left out, so that a speed or a time left computed from the spans is never negative, infinite or absurd."""
    return [(record["seconds"] - before["seconds"], record) for before, record in zip(records, records[1:])
            if record["seconds"] - before["seconds"] >= MIN_SPAN]


def read(path: Path) -> tuple[list, int]:
    """All complete records of the file (none if it does not exist), and the count of lines skipped; ValueError
    for no regular file, or one over MAX_BYTES."""
    try:
        data = read_file(path, MAX_BYTES)
    except FileNotFoundError:
        return [], 0
    return parse(data.rpartition(b"\n")[0].split(b"\n"))


def truncate(path: Path, iteration: int) -> list:
    """Keeps the records up to `iteration` (0: none), rewriting the file atomically; returns them."""
    kept = [record for record in read(path)[0] if record["iteration"] <= iteration]
    files.write_text(Path(path), "".join(json.dumps(record) + "\n" for record in kept))
    return kept


class Reader:
    """Follows one metrics file: each read() parses only the lines appended since the last one, up to its first
    MAX_BYTES (a run that writes more shows its first records only).

    A file replaced by truncate() (another inode, or other bytes where the last line read was) is read
    again from the start. Anything but a regular file counts as missing. Safe to share between threads, so
    every viewer of a run shares one reader.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._reset(None)

    def read(self) -> tuple[list, int]:
        """The records so far (a list owned by the reader: do not change it) and the lines skipped."""
        with self._lock:
            try:
                with open_regular(self.path) as f:
                    identity = os.fstat(f.fileno()).st_ino
                    if identity != self._identity or not self._still_there(f):
                        self._reset(identity)
                    f.seek(self._offset)
                    complete = f.read(max(0, MAX_BYTES - self._offset)).rpartition(b"\n")[0]
            except (FileNotFoundError, ValueError):  # ValueError: no regular file
                self._reset(None)
                return self.records, self.skipped
            if complete:
                lines = complete.split(b"\n")
                records, skipped = parse(lines)
                self.records, self.skipped = self.records + records, self.skipped + skipped
                self._offset += len(complete) + 1
                self._last_line = lines[-1] + b"\n"
            return self.records, self.skipped

    def _still_there(self, f) -> bool:
        """Whether the last line read is still where it was: the file was appended to, not rewritten."""
        f.seek(self._offset - len(self._last_line))
        return f.read(len(self._last_line)) == self._last_line

    def _reset(self, identity) -> None:
        self.records, self.skipped, self._offset, self._last_line, self._identity = [], 0, 0, b"", identity
