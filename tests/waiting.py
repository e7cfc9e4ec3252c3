"""Waiting, in the tests, for training processes and pages that move on their own."""

import time


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Polls `condition()` until it is true; fails after `timeout` seconds, naming `what` it waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
