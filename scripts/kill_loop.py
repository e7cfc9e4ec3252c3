"""Kills meta-training at random moments, resumes it each time, and checks that nothing was lost.

    python3 scripts/kill_loop.py --kills 50

Each cycle starts `python -m fewshot train` on a tiny run that saves every 2 iterations (resuming it after the
first), waits for a random moment (while it starts up, or up to 3 s after its first new record), and ends it
one of four ways: kill -9; Ctrl-C, then kill -9 a moment
later, while the stop saves; Ctrl-C twice, the second interrupting the save; SIGTERM, then kill -9. The next
cycle resumes it. A run that finishes is checked: its records are iterations 1..N, each once, with the losses of
an uninterrupted run of the same seed; its checkpoint is at N and holds its test accuracy. Then a new run
begins, until the kills are done. Prints each kill and a summary; exits 1 if any run failed a check.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fewshot import metrics  # noqa: E402
from fewshot.checkpoints import load_checkpoint  # noqa: E402
from fewshot.config import default_data_root  # noqa: E402

RUN = ["--algorithm", "fomaml", "--channels", "8", "--blocks", "2", "--meta-batch", "8", "--iterations", "150",
       "--val-every", "10", "--val-tasks", "4", "--checkpoint-every", "2", "--test-tasks", "20"]
WAYS_TO_END = ("kill -9", "Ctrl-C, kill -9", "Ctrl-C twice", "SIGTERM, kill -9")


def train(run_dir: Path, data_root: str, resume: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "fewshot", "train", "--run-dir", str(run_dir), "--data-root", data_root, *RUN]
    environment = dict(os.environ, OMP_NUM_THREADS="1")  # one thread: the same curve every time
    return subprocess.Popen(command + (["--resume"] if resume else []), cwd=REPO, env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_a_moment_to_kill(process: subprocess.Popen, run_dir: Path, rng: random.Random) -> None:
    """A quarter of the time, while the process starts up; else a little after its first new record, while
    it trains, saves or measures its test accuracy."""
    if rng.random() < 0.25:
        time.sleep(rng.uniform(0.2, 3.0))
        return
    records, deadline = len(losses(run_dir)), time.time() + 120
    while len(losses(run_dir)) <= records and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 3.0))


def end(process: subprocess.Popen, how: str, rng: random.Random) -> None:
    if how == "kill -9":
        process.kill()
        return
    process.send_signal(signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT)
    time.sleep(rng.uniform(0, 0.05))  # while it finishes its iteration and saves
    if how == "Ctrl-C twice":
        process.send_signal(signal.SIGINT)
    else:
        process.kill()


def losses(run_dir: Path) -> list:
    return [(r["iteration"], r["train_loss"]) for r in metrics.read(run_dir / "metrics.jsonl")[0]]


def check_finished(run_dir: Path, reference: list) -> list:
    """What is wrong with a finished run, compared with the uninterrupted one: nothing, if all holds."""
    problems = []
    if losses(run_dir) != reference:
        problems.append(f"records {[i for i, _ in losses(run_dir)][:80]} differ from the uninterrupted run's")
    if metrics.read(run_dir / "metrics.jsonl")[1]:
        problems.append("unreadable lines in metrics.jsonl")
    _, metadata = load_checkpoint(run_dir / "checkpoint.safetensors")
    if metadata["iterations"] != len(reference) or not metadata["accuracy"]:
        problems.append(f"checkpoint at {metadata['iterations']}, accuracy {metadata['accuracy']}")
    if not (run_dir / "evaluation.json").exists():
        problems.append("no evaluation.json")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=default_data_root())
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="kill-loop-"))

    reference_run = folder / "uninterrupted"
    train(reference_run, args.data_root, resume=False).wait()
    reference = losses(reference_run)

    kills, runs, failures, run_dir, resume = 0, 0, [], None, False
    while kills < args.kills or resume:
        if not resume:
            runs += 1
            run_dir = folder / f"run{runs}"
        process = train(run_dir, args.data_root, resume)
        if kills < args.kills:
            wait_for_a_moment_to_kill(process, run_dir, rng)
        if process.poll() is None and kills < args.kills:
            how = rng.choice(WAYS_TO_END)
            end(process, how, rng)
            process.wait()
            kills += 1
            saved = losses(run_dir)
            print(f"kill {kills:3d}: {how:17s} run {runs}, {len(saved)} records", flush=True)
            resume = (run_dir / "config.json").exists()  # else it died starting up: start it again
            continue
        _, error = process.communicate()
        if process.returncode != 0:
            failures.append(f"run {runs}: resume failed (rc {process.returncode}): {error.strip()[-300:]}")
            resume = False
            continue
        problems = check_finished(run_dir, reference)
        failures += [f"run {runs}: {problem}" for problem in problems]
        print(f"run {runs} finished: {'consistent with the uninterrupted run' if not problems else problems}",
              flush=True)
        resume = False
    print(json.dumps({"kills": kills, "runs": runs, "failures": failures}, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
