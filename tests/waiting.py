"""Waiting, in the tests, for training processes and pages that move on their own; racing threads."""

import threading
import time


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Polls `condition()` until it is true; fails after `timeout` seconds, naming `what` it waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def outcomes_at_once(action, threads: int = 2) -> list:
    """Calls `action()` in `threads` threads at once; returns what each returned, or the exception it raised."""
    outcomes = []

    def attempt():
        try:
            outcomes.append(action())
        except Exception as error:
            outcomes.append(error)

    started = [threading.Thread(target=attempt) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return outcomes


def outcome_within(action, timeout: float = 10.0):
    """What `action()` returned or raised; fails the test if it had not ended after `timeout` seconds (a read
    that waits for ever, on a FIFO say: its thread is a daemon, left behind)."""
    outcome = []

    def attempt():
        try:
            outcome.append(action())
        except Exception as error:  # noqa: BLE001 - the test looks at it
            outcome.append(error)
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "it waits for ever"
    return outcome[0]
