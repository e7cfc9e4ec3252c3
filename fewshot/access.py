"""Who may do what on a server shared by a class: the instructor key.

With FEWSHOT_INSTRUCTOR_KEY set, starting, resuming and deleting runs and keeping checkpoints need the key,
entered once per browser session; a session without it may stop only the runs it started itself. Everyone
may watch runs, draw, adapt and play. Unset (a teacher's own laptop), every session may do everything.
Set but blank (spaces only, or nothing, as `FEWSHOT_INSTRUCTOR_KEY="$KEY"` gives with KEY unset), it is an error,
which every page of the app shows instead of its content: a teacher who meant to set a key never gets an open
server.
"""

import hmac
import os
import threading
import time

MAX_KEY_CHARS = 256  # the longest key: the key's field takes no more (a tampered browser's would be kept whole)
WRONG_KEY_DELAY = 1.0  # seconds a wrong instructor key waits: guessing it costs time
_key_checks = threading.Lock()  # one check of an entered key at a time, for the whole server


def instructor_key() -> str | None:
    """FEWSHOT_INSTRUCTOR_KEY without its surrounding spaces, or None where it is unset and the app open to
    everyone; ValueError where it is set but blank, or longer than MAX_KEY_CHARS."""
    key = os.environ.get("FEWSHOT_INSTRUCTOR_KEY")
    if key is None:
        return None
    if not key.strip():
        raise ValueError("FEWSHOT_INSTRUCTOR_KEY is set but blank: set it to a key, or unset it to open the app "
                         "to everyone")
    if len(key.strip()) > MAX_KEY_CHARS:
        raise ValueError(f"FEWSHOT_INSTRUCTOR_KEY has {len(key.strip())} characters: the key's field takes "
                         f"{MAX_KEY_CHARS} at most")
    return key.strip()


def is_right_key(entered: str) -> bool:
    """Whether `entered` is the instructor key, compared in constant time (hmac.compare_digest), so that the
    time of an answer says nothing about how much of a guess was right."""
    key = instructor_key()
    return key is not None and hmac.compare_digest(entered.strip().encode(), key.encode())


def check_key(entered: str) -> bool:
    """Whether `entered` is the instructor key, a wrong one answered after WRONG_KEY_DELAY seconds, one check at a
    time for every browser session of the server. A session costs nothing to open: guesses sent from many at once
    would otherwise wait their delay side by side, n sessions guessing n keys a second. The price: an entry waits
    for the guesses sent before it, a second each."""
    with _key_checks:
        if is_right_key(entered):
            return True
        time.sleep(WRONG_KEY_DELAY)
        return False


def may_manage(has_key: bool) -> bool:
    """Whether a session may start, resume and delete runs and keep checkpoints."""
    return has_key or instructor_key() is None


def may_stop(owner: str | None, session: str, has_key: bool) -> bool:
    """Whether `session` may stop a run that the browser session `owner` started."""
    return may_manage(has_key) or owner == session
