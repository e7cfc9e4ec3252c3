"""Training runs as background processes: start, stop, list and read them, for the app. No streamlit here.

Each run is its own process, `python -m fewshot train --run-dir <dir> ...`, started in a new session so
that it never blocks a page and outlives a restart of the web server. Everything about a run lives in its
directory: training.py's files (config.json, metrics.jsonl, checkpoint.safetensors, evaluation.json) and
three written here:
    launch.json     the process id, the configuration it was started with, and its comparison, if any
    stop_requested  written by stop(): the run was asked to stop, so ending early is not a failure
    train.log       the process' output; its last line says why a failed run failed
A run's status is read from these files alone, so every page, browser tab and server sees the same runs.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT, Config
from .omniglot import SETS
from .training import CHECKPOINT, CONFIG, EVALUATION, read_metrics

LAUNCH, STOP_REQUESTED, LOG = "launch.json", "stop_requested", "train.log"
RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

OMNIGLOT_HELP = """\
Omniglot is not at `{root}`. To get it, either:
- with internet, run `python -c "from fewshot.omniglot import load_omniglot; load_omniglot('{root}')"`:
  torchvision downloads it there; or
- download `images_background.zip` and `images_evaluation.zip` from
  https://github.com/brendenlake/omniglot/tree/master/python and unzip both into `{root}/omniglot-py/`; or
- point the environment variable `FEWSHOT_DATA` at a folder that holds `omniglot-py/`, and restart the app.
"""


def runs_root() -> Path:
    """Where runs live: $FEWSHOT_RUNS, else runs/ in the repository."""
    return Path(os.environ.get("FEWSHOT_RUNS") or REPO_ROOT / "runs")


def checkpoints_dir() -> Path:
    """Where kept checkpoints live, for the Draw page: $FEWSHOT_CHECKPOINTS, else checkpoints/ in the repository."""
    return Path(os.environ.get("FEWSHOT_CHECKPOINTS") or REPO_ROOT / "checkpoints")


def missing_dataset_help(data_root: str) -> str | None:
    """None when Omniglot's folders are under `data_root`; else how to get them, in Markdown."""
    if all((Path(data_root) / "omniglot-py" / name).is_dir() for name in SETS):
        return None
    return OMNIGLOT_HELP.format(root=data_root)


@dataclass(frozen=True)
class Progress:
    iteration: int
    iterations: int
    tasks_per_second: float | None  # over the last iterations
    seconds_left: float | None  # of meta-training, at that pace; the final test evaluation is extra


class Run:
    """A run directory, read afresh on every call: another process is writing it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def launch(self) -> dict:
        """What start() recorded; {} for a run started from the command line."""
        path = self.path / LAUNCH
        return json.loads(path.read_text()) if path.exists() else {}

    def config(self) -> Config:
        """The run's configuration: config.json as training wrote it, else (not yet written, or being written)
        the one it was started with."""
        try:
            return Config.load(self.path / CONFIG)
        except (FileNotFoundError, json.JSONDecodeError):
            if "config" not in self.launch():
                raise
            return Config.from_dict(self.launch()["config"])

    def started(self) -> float:
        launch = self.launch()
        if "started" in launch:
            return launch["started"]
        return (self.path / CONFIG).stat().st_mtime if (self.path / CONFIG).exists() else 0.0

    def metrics(self) -> list:
        """The records written so far (see training.read_metrics)."""
        return read_metrics(self.path)

    def evaluation(self) -> dict | None:
        """Test accuracy and its interval, once the run has finished (None while evaluation.json is written)."""
        try:
            return json.loads((self.path / EVALUATION).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def is_running(self) -> bool:
        pid = self.launch().get("pid")
        return pid is not None and _process_alive(pid, self.path)

    def status(self) -> str:
        if self.is_running():
            return RUNNING
        if (self.path / EVALUATION).exists():
            return FINISHED
        config, records = self.config(), self.metrics()
        if records and records[-1]["iteration"] >= config.iterations and config.test_tasks == 0:
            return FINISHED
        if (self.path / STOP_REQUESTED).exists():
            return STOPPED
        if not (self.path / LAUNCH).exists() and self.checkpoint.exists():
            return STOPPED  # started from the command line and ended early: Ctrl-C, or we cannot tell
        return FAILED

    def error(self) -> str | None:
        """For a failed run, the last line of its output, which names the error."""
        log = self.path / LOG
        if not log.exists():
            return None
        with open(log, "rb") as f:  # the end of the log only: a long run's log holds many progress lines
            f.seek(max(0, log.stat().st_size - 4096))
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else None

    def progress(self) -> Progress:
        config, records = self.config(), self.metrics()
        return progress(records, config.iterations, config.meta_batch)

    def comparison(self) -> str | None:
        return self.launch().get("comparison")

    def label(self) -> str:
        """One line for menus: name, algorithm and task. It never changes while the run goes on, as a menu's
        choice is matched by its label on the next rerun."""
        config = self.config()
        return f"{self.name} · {config.algorithm} {config.ways}-way {config.shots}-shot · {config.iterations} it"


def progress(records: list, iterations: int, meta_batch: int, window: int = 20) -> Progress:
    """Iteration reached, tasks per second over the last `window` iterations, and seconds left at that pace."""
    if not records:
        return Progress(0, iterations, None, None)
    recent = records[-window - 1:]
    if len(recent) > 1:
        seconds_per_iteration = (recent[-1]["seconds"] - recent[0]["seconds"]) / (len(recent) - 1)
    else:
        seconds_per_iteration = recent[0]["seconds"]
    iteration = records[-1]["iteration"]
    if seconds_per_iteration <= 0:
        return Progress(iteration, iterations, None, None)
    return Progress(iteration, iterations, meta_batch / seconds_per_iteration,
                    max(iterations - iteration, 0) * seconds_per_iteration)


def summary(run: Run) -> dict:
    """What the Compare page tabulates for a run: its cost per iteration, memory, and accuracy."""
    config, records, evaluation = run.config(), run.metrics(), run.evaluation()
    validation = [r for r in records if "val_accuracy" in r]
    memory = [r["peak_memory_mb"] for r in records if "peak_memory_mb" in r]
    return {"run": run.name, "algorithm": config.algorithm, "status": run.status(),
            "iterations": records[-1]["iteration"] if records else 0,
            "seconds_per_iteration": seconds_per_iteration(records),
            "peak_memory_mb": max(memory) if memory else None,
            "val_accuracy": validation[-1]["val_accuracy"] if validation else None,
            "test_accuracy": evaluation["accuracy"] if evaluation else None,
            "test_ci95": evaluation["ci95"] if evaluation else None}


def seconds_per_iteration(records: list) -> float | None:
    """The median time of a meta-update, leaving out the iterations that also validated."""
    times = sorted(b["seconds"] - a["seconds"] for a, b in zip(records, records[1:]) if "val_loss" not in b)
    return times[len(times) // 2] if times else None


def shipped_runs_root() -> Path:
    """Run directories shipped with the repository (curves of the shipped checkpoints): checkpoints/runs/."""
    return checkpoints_dir() / "runs"


def list_runs(root: Path | None = None) -> list:
    """The runs under `root`, newest first; by default those under runs_root() and shipped_runs_root()."""
    roots = [Path(root)] if root else [runs_root(), shipped_runs_root()]
    runs = [Run(path) for folder in roots if folder.is_dir() for path in folder.iterdir()
            if (path / LAUNCH).exists() or (path / CONFIG).exists()]
    return sorted((run for run in runs if _readable(run)), key=lambda run: run.started(), reverse=True)


def start(config: Config, root: Path | None = None, comparison: str | None = None, threads: int = 1) -> Run:
    """Starts `python -m fewshot train` for `config` in a new run directory under `root`; returns at once.

    `threads`: the process' torch threads (OMP_NUM_THREADS). One by default: on a two-core machine that is also
    serving the app and drawing its charts, two threads per run were 13 times slower than one (the quick class
    demo, 3.1 against 0.23 s per meta-update, with other work on the cores), their OpenMP threads waiting for
    each other whenever a core is taken.
    """
    name = f"{comparison or time.strftime('%Y%m%d-%H%M%S')}-{config.algorithm}"
    run_dir = _new_run_dir(Path(root or runs_root()).resolve(), name)
    command = [sys.executable, "-m", "fewshot", "train", "--run-dir", str(run_dir)] + config_arguments(config)
    environment = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                       TQDM_MININTERVAL="10")  # the log gets a progress line every 10 s, not every iteration
    with open(run_dir / LOG, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    launch = {"pid": process.pid, "started": time.time(), "command": command, "config": config.to_dict(),
              "comparison": comparison, "threads": threads}
    _write_atomically(run_dir / LAUNCH, json.dumps(launch, indent=2) + "\n")
    return Run(run_dir)


def start_comparison(config: Config, root: Path | None = None) -> list:
    """MAML and FOMAML on `config`: same seed, so the same initial weights and the same tasks (training.py).

    Both run at once, one torch thread each, so that on a two-core machine each has a core of its own and
    their seconds per iteration compare fairly.
    """
    comparison = time.strftime("%Y%m%d-%H%M%S") + "-compare"
    return [start(Config.from_dict({**config.to_dict(), "algorithm": algorithm}), root, comparison)
            for algorithm in ("maml", "fomaml")]


def stop(run: Run) -> None:
    """Asks the run to stop: SIGINT, on which training finishes its iteration, saves and exits."""
    (run.path / STOP_REQUESTED).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    pid = run.launch().get("pid")
    if pid is not None and _process_alive(pid, run.path):
        os.kill(pid, signal.SIGINT)


def latest_comparison(runs: list) -> list:
    """The runs of the most recent comparison among `runs` (newest first), or []."""
    for run in runs:
        if run.comparison():
            return [other for other in runs if other.comparison() == run.comparison()]
    return []


def keep_checkpoint(run: Run, name: str, directory: Path | None = None) -> Path:
    """Copies the run's checkpoint to `directory`/`name`.safetensors (default checkpoints_dir()), atomically."""
    name = name.strip().removesuffix(".safetensors")
    if not CHECKPOINT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable name: use letters, digits, '-', '_' and '.', at most 64, "
                         "starting with a letter or digit.")
    if not run.checkpoint.exists():
        raise ValueError(f"Run {run.name} has no checkpoint yet: it saves one every "
                         f"{run.config().checkpoint_every} iterations and when it ends.")
    directory = Path(directory or checkpoints_dir())
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.safetensors"
    if target.exists():
        raise ValueError(f"{target.name} already exists in {directory}; choose another name.")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.copyfile(run.checkpoint, tmp)
    os.replace(tmp, target)
    return target


def config_arguments(config: Config) -> list:
    """`config` as `python -m fewshot train` options: --name value for every field."""
    return [argument for name, value in config.to_dict().items()
            for argument in ("--" + name.replace("_", "-"), str(value))]


def _new_run_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
        try:
            (root / (name + suffix)).mkdir()
            return root / (name + suffix)
        except FileExistsError:
            continue
    raise RuntimeError(f"could not make a new run directory for {name} in {root}")


def _readable(run: Run) -> bool:
    """Whether the run's configuration can be read (a folder from another version of fewshot may not)."""
    try:
        run.config()
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _process_alive(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is still the training process of `run_dir`."""
    try:  # our own child? Then it is alive until we reap it (which we must, or it lingers as a zombie)
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:  # not our child: started by an earlier server, or by another process
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id now belongs to another user's process
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # on Linux, make sure the id was not reused by another process
        try:
            return run_dir.name.encode() in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
