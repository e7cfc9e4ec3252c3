"""python -m fewshot train | evaluate | bench

Until training sets its own handlers (training.py), Ctrl-C or SIGTERM ends the process at once: nothing is
written before then, and a KeyboardInterrupt raised while Python imports torch can be swallowed by the
import machinery, which would leave a run that was asked to stop training on.
"""

import os
import signal

for stop_signal in (signal.SIGINT, signal.SIGTERM):
    signal.signal(stop_signal, lambda signum, frame: os._exit(128 + signum))

from .cli import main  # noqa: E402  (after the handlers: this import takes seconds)

main()
