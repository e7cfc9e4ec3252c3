"""Writing files so that a crash, a signal or a second writer never leaves a half-written one.

Each write goes to a fresh temporary file in the same folder (a unique name, so two threads or processes
never share one), is flushed to disk, and then takes the final name in one step: `os.replace` for a file
that may be overwritten, `os.link` for one that must not be. A reader sees the old file or the new one,
never a mixture; a failed write leaves the old file and removes its temporary file, and its OSError names
the file meant, not the temporary one.

Reading a file that a damaged or hand-edited folder may hold: only a regular file, opened without waiting (a FIFO
would wait for ever for its other end), and a bounded number of its bytes (open_regular, read_file); a marker
made without following a link or waiting on a FIFO in its place (mark).
"""

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temporary_beside(path: Path):
    """A fresh temporary path in `path`'s folder, readable by all as files usually are, removed afterwards
    unless it was renamed; an OSError inside names `path`."""
    path = Path(path)
    try:
        descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(descriptor, 0o644)
        os.close(descriptor)
        try:
            yield Path(tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error


def replace_with(path: Path, write) -> None:
    """Calls `write(tmp)` on a temporary path beside `path`, then puts it in `path`'s place atomically."""
    with temporary_beside(path) as tmp:
        write(tmp)
        _sync(tmp)
        os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    replace_with(path, lambda tmp: tmp.write_text(text))


def create_with(path: Path, write) -> None:
    """Like replace_with, but FileExistsError if `path` exists, even when another writer creates it meanwhile."""
    with temporary_beside(path) as tmp:
        write(tmp)
        _sync(tmp)
        os.link(tmp, path)  # fails if the name is taken: no check-then-write race


def _sync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_file(path: Path, limit: int, tail: bool = False) -> bytes:
    """The bytes of the regular file at `path` (open_regular): its last `limit` bytes with `tail`, else all of
    them, and ValueError where they are over `limit`."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit and not tail:
            raise ValueError(f"{Path(path).name} holds {size:,} bytes, over the {limit:,} read")
        f.seek(max(0, size - limit))
        return f.read(limit)  # no more, should it grow meanwhile


def open_regular(path: Path, mode: str = "rb"):
    """The regular file at `path`, open in binary `mode` (reading, or "ab" to append), as safely as a damaged or
    hand-edited run folder needs: ValueError for a FIFO, whose read (or write) waits forever for the other end, or
    a device, whose read may never end, both opened without waiting (O_NONBLOCK) and refused before any read. The
    check is of the file opened, so no other can take its name meanwhile. OSError where open() raises one
    (FileNotFoundError, IsADirectoryError; for a FIFO opened to append with no reader, ENXIO)."""
    f = open(path, mode, opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise ValueError(f"{Path(path).name} is not a regular file")
    return f


def mark(path: Path) -> None:
    """Creates the marker `path` (ENDED, runs.STOP_REQUESTED), whose being there is all it says: empty, so that a
    full disk has room for it. What a hand put in its place in the run's folder is left as it is: a FIFO is not
    waited on (the trainer would hang as it exits), nor the file that a link names overwritten, or created.
    OSError where it cannot: something else is in its place (a link, a directory, a FIFO nobody reads), a
    read-only or deleted folder."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666))
