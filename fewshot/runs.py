"""Training runs as background processes: start, stop, list and read them, for the app. No streamlit here.

Each run is its own process, `python -m fewshot train --run-dir <dir> ...`, started in a new session so
that it never blocks a page and outlives a restart of the web server. Everything about a run lives in its
directory: training.py's files (config.json, metrics.jsonl, checkpoint.safetensors, evaluation.json) and
three written here:
    launch.json     the process id, the configuration it was started with, and its comparison, if any
    stop_requested  written by stop(): the run was asked to stop, so ending early is not a failure
    train.log       the process' output; its last line says why a failed run failed
A run's status is read from these files alone, so every page, browser tab and server sees the same runs.
Any of them may be missing, half-written or garbled (a crash, a disk error, a hand edit, a folder deleted
while a page shows it): what cannot be read counts as missing.
"""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import files, limits, metrics
from .config import REPO_ROOT, Config
from .omniglot import SETS
from .training import CHECKPOINT, CONFIG, EVALUATION, METRICS, TRAINING_STATE

LAUNCH, STOP_REQUESTED, LOG = "launch.json", "stop_requested", "train.log"
START_LOCK = ".start.lock"  # in the runs folder: held while runs are counted and one starts (admission)
RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_READERS = 64  # metrics readers kept, for the runs read last; each holds its run's records (59,000: 47 MB)
TRAINING_NICENESS = 10  # runs yield the cores to the web server: a click is answered at once, charts keep pace
# What a fair comparison of MAML and FOMAML may differ in besides the algorithm: where the data is, and how
# often the run is validated, saved, probed, and how it is tested. Anything else changes what is learned or
# how fast (the engine, the device), so a difference would be read as the algorithms'.
NOT_COMPARED = ("algorithm", "data_root", "val_every", "val_tasks", "checkpoint_every", "probe_every", "test_tasks",
                "test_inner_steps")
LAST_VALIDATIONS = 5  # takeaway: the accuracy gap is averaged over the runs' last validations in common

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
        """What start() recorded; {} for a run started from the command line, or where launch.json is unreadable."""
        try:
            launch = json.loads((self.path / LAUNCH).read_text())
        except (OSError, ValueError):  # missing, or not JSON
            return {}
        return launch if _valid_launch(launch) else {}

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
        try:
            return (self.path / CONFIG).stat().st_mtime
        except OSError:
            return 0.0

    def metrics(self) -> list:
        """The records written so far. The list is shared by every viewer of the run: do not change it."""
        return _metrics_reader(self.path).read()[0]

    def unreadable_lines(self) -> int:
        """How many lines of metrics.jsonl are not records, and were skipped (a disk error, a hand edit)."""
        return _metrics_reader(self.path).read()[1]

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
        try:
            with open(self.path / LOG, "rb") as f:  # the end of the log only: a long run's log holds many lines
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        except FileNotFoundError:
            return None
        return lines[-1].strip() if lines else None

    def progress(self) -> Progress:
        config, records = self.config(), self.metrics()
        return progress(records, config.iterations, config.meta_batch)

    def comparison(self) -> str | None:
        return self.launch().get("comparison")

    def label(self) -> str:
        """One line for menus: the name (with the algorithm and task, where the name does not say them: an
        older run's), the iterations asked for, and whether it is running. Menus that show it are keyed, so
        that their choice survives the label's change when the run ends."""
        config = self.config()
        task = short_description(config)
        name = self.name if self.name.startswith(task) else f"{self.name} · {task}"
        return f"{name} · {config.iterations:,} it" + (" · ● running" if self.is_running() else "")


def short_description(config: Config) -> str:
    """'maml-5w1s': the algorithm, ways and shots, as run names begin."""
    return f"{config.algorithm}-{config.ways}w{config.shots}s"


def run_name(config: Config, when: float | None = None) -> str:
    """A run's folder name that says what it trains and when it started: 'maml-5w1s-1022' (10:22, local time).
    _new_run_dir adds -2, -3, ... where the name is taken."""
    return f"{short_description(config)}-{time.strftime('%H%M', time.localtime(when))}"


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
    return {"run": run.name, "algorithm": config.algorithm, "status": run.status(),
            "iterations": records[-1]["iteration"] if records else 0,
            "seconds_per_iteration": seconds_per_iteration(records),
            "training_memory_mb": training_memory_mb(records),
            "val_accuracy": validation[-1]["val_accuracy"] if validation else None,
            "test_accuracy": evaluation["accuracy"] if evaluation else None,
            "test_ci95": evaluation["ci95"] if evaluation else None}


def seconds_per_iteration(records: list) -> float | None:
    """The median time of a meta-update, leaving out the iterations that also validated."""
    times = sorted(b["seconds"] - a["seconds"] for a, b in zip(records, records[1:]) if "val_loss" not in b)
    return times[len(times) // 2] if times else None


def training_memory_mb(records: list) -> float | None:
    """The peak memory of the run's meta-updates (training.reset_peak_memory): what the records say up to the
    first iteration that also validated or probed, whose larger batches of tasks would hide the algorithm's
    needs. None for runs recorded before this was measured (the shipped ones)."""
    memory = []
    for record in records:
        if "training_memory_mb" in record:
            memory.append(record["training_memory_mb"])
        if "val_loss" in record or "probe" in record:
            break
    return max(memory) if memory else None


def differences(a: Run, b: Run) -> list:
    """What else than NOT_COMPARED differs between two runs' configurations: ['iterations 19538 / 9429', ...]."""
    first, second = a.config().to_dict(), b.config().to_dict()
    return [f"{name} {first[name]} / {second[name]}" for name in first
            if name not in NOT_COMPARED and first[name] != second[name]]


def maml_and_fomaml(selected: list) -> tuple | None:
    """(the MAML run, the FOMAML run) when `selected` is one of each, else None."""
    algorithms = [run.config().algorithm for run in selected]
    if sorted(algorithms) != ["fomaml", "maml"]:
        return None
    return (selected[0], selected[1]) if algorithms[0] == "maml" else (selected[1], selected[0])


def fair_pair(runs: list) -> list:
    """[MAML run, FOMAML run]: the newest among `runs` (newest first) that differ in nothing but NOT_COMPARED,
    the iterations asked for included, the two runs of one comparison first; [] when there are none. The
    Compare page shows them when nothing is chosen: runs of unequal training side by side would pass the
    difference for the algorithms'."""
    pairs = [maml_and_fomaml([run, other]) for index, run in enumerate(runs) for other in runs[index + 1:]]
    fair = [pair for pair in pairs if pair and not differences(*pair)]
    together = [pair for pair in fair if pair[0].comparison() and pair[0].comparison() == pair[1].comparison()]
    return list((together or fair or [()])[0])


def takeaway(maml: Run, fomaml: Run) -> str | None:
    """One line, computed from the two runs' records, on what second order costs and buys: 'MAML: 38 % slower
    per iteration, 55 MB more memory for a meta-update, 2.1 points higher validation accuracy at equal iterations (...)'; None
    while there is nothing to compare yet."""
    first, second = maml.metrics(), fomaml.metrics()
    parts = []
    pace = seconds_per_iteration(first), seconds_per_iteration(second)
    if all(pace):
        ratio = pace[0] / pace[1] - 1
        parts.append(f"{abs(100 * ratio):.0f} % {'slower' if ratio >= 0 else 'faster'} per iteration")
    memory = training_memory_mb(first), training_memory_mb(second)
    if None not in memory:
        gap = memory[0] - memory[1]
        parts.append(f"{abs(gap):.0f} MB {'more' if gap >= 0 else 'less'} memory for a meta-update")
    accuracy = {r["iteration"]: r["val_accuracy"] for r in second if "val_accuracy" in r}
    common = [(r["val_accuracy"], accuracy[r["iteration"]], r["iteration"]) for r in first
              if "val_accuracy" in r and r["iteration"] in accuracy][-LAST_VALIDATIONS:]
    if common:
        gap = 100 * sum(ours - theirs for ours, theirs, _ in common) / len(common)
        mean = f"mean of the last {len(common)} validations" if len(common) > 1 else "one validation"
        parts.append(f"{abs(gap):.1f} points {'higher' if gap >= 0 else 'lower'} validation accuracy at equal "
                     f"iterations ({mean}, up to iteration {common[-1][2]:,})")
    return "MAML: " + ", ".join(parts) + "." if parts else None


def shipped_runs_root() -> Path:
    """Run directories shipped with the repository (curves of the shipped checkpoints): checkpoints/runs/."""
    return checkpoints_dir() / "runs"


def list_runs(root: Path | None = None) -> list:
    """The runs under `root`, newest first; by default those under runs_root() and shipped_runs_root()."""
    roots = [Path(root)] if root else [runs_root(), shipped_runs_root()]
    runs = [Run(path) for folder in roots if folder.is_dir() for path in folder.iterdir()
            if (path / LAUNCH).exists() or (path / CONFIG).exists()]
    return sorted((run for run in runs if _readable(run)), key=lambda run: run.started(), reverse=True)


def start(config: Config, root: Path | None = None, threads: int = 1) -> Run:
    """Starts `python -m fewshot train` for `config` in a new run directory under `root`; returns at once.

    ValueError, naming every problem, when `config` asks more than this server allows or enough runs are
    training already (admission).

    `threads`: the process' torch threads (OMP_NUM_THREADS). One by default: on a two-core machine that is also
    serving the app and drawing its charts, two threads per run were 13 times slower than one (the quick class
    demo, 3.1 against 0.23 s per meta-update, with other work on the cores), their OpenMP threads waiting for
    each other whenever a core is taken. The process runs at a lower priority (TRAINING_NICENESS) than the web
    server, so that the pages answer at once while runs take every core.
    """
    root = Path(root or runs_root()).resolve()
    with admission([config], root):
        return _launch(config, root, threads=threads)


def start_comparison(config: Config, root: Path | None = None) -> list:
    """MAML and FOMAML on `config`: same seed, so the same initial weights and the same tasks (training.py).

    Both run at once, one torch thread each, so that on a two-core machine each has a core of its own and
    their seconds per iteration compare fairly. Both start, or neither (a ValueError, as for start).
    """
    root = Path(root or runs_root()).resolve()
    comparison = time.strftime("%Y%m%d-%H%M%S") + "-compare"  # the pair's id, in launch.json
    configs = [Config.from_dict({**config.to_dict(), "algorithm": algorithm}) for algorithm in ("maml", "fomaml")]
    with admission(configs, root):
        return [_launch(config, root, comparison) for config in configs]


@contextmanager
def admission(configs: list, root: Path):
    """Lets runs of `configs` start in the runs folder `root` inside the `with` block; else ValueError, naming
    every problem: a configuration over this server's limits (limits.check), or more runs training at once
    than limits.max_runs() allows, counting those under `root` and these.

    The count and the start happen under an exclusive lock of a file in `root` (flock), so that two sessions,
    or two servers, pressing Start at once cannot both pass the count before either run exists.
    """
    problems = list(dict.fromkeys(problem for config in configs for problem in limits.check(config)))
    if problems:  # dict.fromkeys: a comparison's two configurations have the same problems; each is said once
        raise ValueError("\n".join(problems))
    limit = limits.max_runs()
    if len(configs) > limit:
        raise ValueError(f"A comparison trains {len(configs)} runs at once; this server trains at most {limit} "
                         "(FEWSHOT_MAX_RUNS).")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / START_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for any other start; released when the file is closed
        running = [run for run in list_runs(root) if run.is_running()]
        if len(running) + len(configs) > limit:
            count = f"{len(running)} run is" if len(running) == 1 else f"{len(running)} runs are"
            together = f", and a comparison starts {len(configs)} at once" if len(configs) > 1 else ""
            raise ValueError(f"{count} training (limit {limit}){together}: "
                             f"{', '.join(run.name for run in running)}. Stop one, or wait.")
        yield


def _launch(config: Config, root: Path, comparison: str | None = None, threads: int = 1) -> Run:
    """Starts the training process of `config` in a new run directory under `root` (named by run_name)."""
    started = time.time()
    run_dir = _new_run_dir(root, run_name(config, started))
    _spawn(run_dir, config_arguments(config), config, started, comparison, threads)
    return Run(run_dir)


def _spawn(run_dir: Path, arguments: list, config: Config, started: float, comparison: str | None,
           threads: int = 1) -> None:
    """Runs `python -m fewshot train --run-dir run_dir arguments` in the background, and writes launch.json."""
    command = [sys.executable, "-m", "fewshot", "train", "--run-dir", str(run_dir)] + arguments
    environment = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                       TQDM_MININTERVAL="10")  # the log gets a progress line every 10 s, not every iteration
    with open(run_dir / LOG, "ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:  # before torch starts its threads, which inherit the priority
        os.setpriority(os.PRIO_PROCESS, process.pid, TRAINING_NICENESS)
    except OSError:  # the process ended already: its status says why
        pass
    launch = {"pid": process.pid, "started": started, "command": command, "config": config.to_dict(),
              "comparison": comparison, "threads": threads}
    files.write_text(run_dir / LAUNCH, json.dumps(launch, indent=2) + "\n")


def evaluate_now(run: Run) -> None:
    """Measures a stopped run's test accuracy on its last checkpoint, in a process of its own, as the end of a
    finished run does: the run resumes with its iterations cut to those it did, so meta-training has nothing
    left and training.finish evaluates it (test_tasks tasks) and writes evaluation.json. The status reads
    running meanwhile, then finished; Stop ends it. ValueError when the run cannot be evaluated, or when as
    many runs are training as this server allows (admission)."""
    done, config = run.progress().iteration, run.config()
    if run.status() != STOPPED or done == 0 or not (run.path / TRAINING_STATE).exists():
        raise ValueError(f"Run {run.name} has no saved state to evaluate: only a run stopped after its first "
                         "iteration has one.")
    if config.test_tasks == 0:
        raise ValueError(f"Run {run.name} was started with test tasks 0: it asks for no test evaluation.")
    evaluated = Config.from_dict({**config.to_dict(), "iterations": done})
    with admission([evaluated], run.path.parent):
        (run.path / STOP_REQUESTED).unlink(missing_ok=True)
        _spawn(run.path, ["--resume", "--iterations", str(done)], evaluated, run.started(), run.comparison(),
               run.launch().get("threads", 1))


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
    """Copies the run's checkpoint to `directory`/`name`.safetensors (default checkpoints_dir()), atomically.

    It never overwrites a file: of two sessions keeping the same name at once, one gets it, the other a ValueError.
    """
    name = name.strip().removesuffix(".safetensors")
    if not CHECKPOINT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable name: use letters, digits, '-', '_' and '.', at most 64, "
                         "starting with a letter or digit.")
    if not run.path.is_dir():
        raise ValueError(f"Run {run.name} was deleted: its checkpoint is gone.")
    if not run.checkpoint.exists():
        raise ValueError(f"Run {run.name} has no checkpoint yet: it saves one every "
                         f"{run.config().checkpoint_every} iterations and when it ends.")
    directory = Path(directory or checkpoints_dir())
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.safetensors"
    try:
        files.create_with(target, lambda tmp: shutil.copyfile(run.checkpoint, tmp))
    except FileExistsError:
        raise ValueError(f"{target.name} already exists in {directory}; choose another name.") from None
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


_readers, _readers_lock = {}, threading.Lock()  # metrics file -> its Reader, in the order of their last use


def _metrics_reader(run_dir: Path) -> metrics.Reader:
    """The reader of the run's metrics.jsonl that every viewer shares, so that a refresh reads only what was
    appended since the last one. Of the runs read, the MAX_READERS read last keep theirs."""
    path = Path(run_dir) / METRICS
    with _readers_lock:
        reader = _readers.pop(path, None) or metrics.Reader(path)
        _readers[path] = reader
        if len(_readers) > MAX_READERS:
            del _readers[next(iter(_readers))]
    return reader


def _valid_launch(launch) -> bool:
    """Whether launch.json holds what start() writes, as far as it is read here. A pid must be a process' id:
    0 or a negative number would signal whole groups of processes."""
    if not isinstance(launch, dict):
        return False
    pid, comparison = launch.get("pid"), launch.get("comparison")
    return ((pid is None or type(pid) is int and pid > 0)
            and type(launch.get("started", 0.0)) in (int, float)
            and isinstance(launch.get("config", {}), dict)
            and (comparison is None or isinstance(comparison, str)))


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
