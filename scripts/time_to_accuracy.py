"""Wall time from Start to each validation accuracy of a preset, run as the app runs it: the bench behind the
class-demo presets' claims (fewshot/presets.py).

    python scripts/time_to_accuracy.py "90-second class demo" [--max-seconds 150] [--thresholds 0.85 0.9 0.95]
        [--run-dir DIR] [--any-config-option VALUE ...]

It starts `python -m fewshot train` with the preset's options (and any changes given after it) as runs._launch
does: one torch thread (OMP_NUM_THREADS=1), at the app's lower priority (nice 10). It reads metrics.jsonl as
the run writes it and prints each validation: iteration, training seconds (the record's `seconds`), wall
seconds since the launch (data loading included, as a class sees it after pressing Start), and accuracy; then
the first wall time at which validation reached each threshold. After --max-seconds it stops the run (SIGTERM:
training saves and exits). The machine's load average is printed at the start and at the end: other work on
the two cores slows a run, and its figures with it.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fewshot import metrics  # noqa: E402
from fewshot.cli import add_config_options, config_from_args  # noqa: E402
from fewshot.config import REPO_ROOT  # noqa: E402
from fewshot.launchers import TRAINING_NICENESS  # noqa: E402
from fewshot.presets import PRESETS, preset  # noqa: E402
from fewshot.runs import config_arguments  # noqa: E402
from fewshot.training import METRICS  # noqa: E402

POLL_SECONDS = 0.2


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def launch(run_dir: Path, arguments: list) -> subprocess.Popen:
    """The training process, started as runs._launch starts it on this machine: one thread, nice 10."""
    command = [sys.executable, "-m", "fewshot", "train", "--run-dir", str(run_dir)] + arguments
    environment = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       TQDM_MININTERVAL="10")
    with open(run_dir.parent / f"{run_dir.name}.log", "ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: os.nice(TRAINING_NICENESS))
    return process


def watch(process: subprocess.Popen, run_dir: Path, launched: float, max_seconds: float) -> list:
    """(iteration, training seconds, wall seconds, val accuracy) of each validation, printed as it comes, until
    the run ends or max_seconds have passed (then SIGTERM, and the records written until it exits)."""
    validations, seen, stopped = [], 0, False
    print(f"{'iteration':>9} {'train s':>8} {'wall s':>7} {'val acc':>8}", flush=True)
    while True:
        ended = process.poll() is not None
        records, _ = metrics.read(run_dir / METRICS)
        wall = time.monotonic() - launched
        for record in records[seen:]:
            if "val_accuracy" in record:
                row = (record["iteration"], record["seconds"], wall, record["val_accuracy"])
                validations.append(row)
                print(f"{row[0]:>9} {row[1]:>8.1f} {row[2]:>7.1f} {row[3]:>8.3f}", flush=True)
        seen = len(records)
        if ended:
            return validations
        if not stopped and wall > max_seconds:
            print(f"--max-seconds {max_seconds:g} passed: stopping the run", flush=True)
            process.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=list(PRESETS))
    parser.add_argument("--max-seconds", type=float, default=150, help="wall seconds before the run is stopped")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.90, 0.95])
    parser.add_argument("--run-dir", help="a new folder for the run (default: a new one under /tmp)")
    add_config_options(parser)  # changes to the preset: --meta-batch 8, --queries 2, ...
    args = parser.parse_args()

    config = config_from_args(args, base=preset(args.preset).to_dict())
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="time-to-accuracy-"))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"{args.preset}: {' '.join(config_arguments(config))}")
    print(f"run directory: {run_dir}; load average at start: {load_average()}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # then the run is stopped too (finally)
    launched = time.monotonic()
    process = launch(run_dir, config_arguments(config))
    try:
        validations = watch(process, run_dir, launched, args.max_seconds)
    finally:  # Ctrl-C or SIGTERM: the run does not outlive the bench
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait()
    iterations, seconds = (validations[-1][0], validations[-1][1]) if validations else (0, 0.0)
    if iterations:
        print(f"{seconds / iterations:.3f} training s/iteration (validations included) over {iterations} iterations")
    for threshold in args.thresholds:
        reached = next((row for row in validations if row[3] >= threshold), None)
        print(f"val accuracy {threshold:.2f}: " + (f"first at {reached[2]:.1f} s wall from Start, iteration "
                                                   f"{reached[0]}, {reached[1]:.1f} training s" if reached
                                                   else "not reached"))
    print(f"load average at end: {load_average()}; exit status {process.returncode}")


if __name__ == "__main__":
    main()
