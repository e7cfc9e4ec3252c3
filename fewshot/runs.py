"""Training runs as background processes: start, stop, list and read them, for the app. No streamlit here.

Each run is its own process, `python -m fewshot train --run-dir <dir> ...`, started by a launcher
(launchers.py: on this machine in a session of its own, so that it never blocks a page and outlives a restart
of the web server; or as a job of a Ray cluster). At most limits.max_runs() train at once, counted across
every browser session and server: a run started beyond that waits in a queue, in its folder, and dispatch()
starts it when a place frees (the server calls it every few seconds; app_ui.queue_dispatcher). Everything
about a run lives in its directory: training.py's files (config.json, metrics.jsonl,
checkpoint.safetensors, evaluation.json), cli.py's `ended` (written when the training process exits through
Python, whatever the outcome) and three written here:
    launch.json     when it was queued and with what arguments, the configuration, its comparison, the
                    browser session that started it, and what its launcher needs to find it (a process id)
    stop_requested  written by stop(): the run was asked to stop, so ending early is not a failure
    train.log       the process' output; its last line says why a failed run failed
A run's status is read from these files alone, so every page, browser tab and server sees the same runs.
A run whose process vanished without a word (the machine rebooted, the process was killed) is interrupted,
and resume() queues it again from its last saved iteration.
Any of them may be missing, half-written or garbled (a crash, a disk error, a hand edit, a folder deleted
while a page shows it): what cannot be read counts as missing.
"""

import fcntl
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import files, launchers, limits, metrics
from .config import REPO_ROOT, Config, read_json
from .files import read_file
from .omniglot import SETS
from .training import CHECKPOINT, CONFIG, ENDED, EVALUATION, METRICS, TRAINING_STATE

LAUNCH, STOP_REQUESTED, LOG = "launch.json", "stop_requested", "train.log"
START_LOCK = ".start.lock"  # in the runs folder: held while runs are queued, counted and started (dispatch)
QUEUED, RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED = (
    "queued", "running", "finished", "stopped", "failed", "interrupted")
MAX_QUEUED = 20  # runs waiting at once, per runs folder: each holds a folder and a place in every page's menu
DISPATCH_EVERY = 2.0  # seconds between the server's looks at the queue
CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_READERS = 64  # metrics readers kept, for the runs read last; each holds its run's records (59,000: 47 MB)
LOG_TAIL_BYTES = 4096  # what error() reads of a run's log, its end: a long run's log holds many lines
MAX_CHECKPOINT_BYTES = 320 << 20  # 335 MB: the largest model a Config makes (1024 channels, 8 blocks, 1000 ways,
# a batch norm row for each of 100 inner steps) takes 275 MB; the Train form's largest, 12 MB
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
            launch = read_json(self.path / LAUNCH)
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
        """Test accuracy and its interval, once the run has finished (None while evaluation.json is written, or
        where it does not hold what training writes)."""
        try:
            evaluation = read_json(self.path / EVALUATION)
        except (OSError, ValueError):  # missing, being written, or not JSON
            return None
        return evaluation if _valid_evaluation(evaluation) else None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def is_running(self) -> bool:
        return self._running(self.launch())

    def is_queued(self) -> bool:
        """Whether the run waits for a place to train (dispatch starts it): queued, not started, not stopped."""
        return self._queued(self.launch())

    def _running(self, launch: dict) -> bool:
        return _has_process(launch) and launchers.launcher_of(launch).is_alive(launch, self.path)

    def _queued(self, launch: dict) -> bool:
        return "arguments" in launch and not _has_process(launch) and not (self.path / STOP_REQUESTED).exists()

    def status(self) -> str:
        launch = self.launch()  # read once: the pages ask every run's status at every refresh
        if self._running(launch):
            return RUNNING
        if self._queued(launch):
            return QUEUED
        if (self.path / EVALUATION).exists():
            return FINISHED
        config, records = self.config(), self.metrics()
        if records and records[-1]["iteration"] >= config.iterations and config.test_tasks == 0:
            return FINISHED
        if (self.path / STOP_REQUESTED).exists():
            return STOPPED
        if not (self.path / LAUNCH).exists() and self.checkpoint.exists():
            return STOPPED  # started from the command line and ended early: Ctrl-C, or we cannot tell
        if _has_process(launch) and not (self.path / ENDED).exists():
            return INTERRUPTED  # its process vanished without a word: killed, or the machine restarted
        return FAILED

    def error(self) -> str | None:
        """For a failed run, the last line of its output, which names the error."""
        try:
            tail = read_file(self.path / LOG, LOG_TAIL_BYTES, tail=True)
        except (OSError, ValueError):  # missing, or no regular file
            return None
        lines = [line for line in tail.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else None

    def checkpoint_bytes(self) -> bytes:
        """The checkpoint file, to download or keep; ValueError for no regular file, or one over
        MAX_CHECKPOINT_BYTES, larger than any fewshot makes."""
        return read_file(self.checkpoint, MAX_CHECKPOINT_BYTES)

    def progress(self) -> Progress:
        config, records = self.config(), self.metrics()
        return progress(records, config.iterations, config.meta_batch)

    def comparison(self) -> str | None:
        return self.launch().get("comparison")

    def owner(self) -> str | None:
        """The browser session that started the run (None: the command line, or an older run)."""
        return self.launch().get("owner")

    def label(self) -> str:
        """One line for menus: the name (with the algorithm and task, where the name does not say them: an
        older run's), the iterations asked for, and whether it is running. Menus that show it are keyed, so
        that their choice survives the label's change when the run ends."""
        config = self.config()
        task = short_description(config)
        name = self.name if self.name.startswith(task) else f"{self.name} · {task}"
        mark = " · ● running" if self.is_running() else " · queued" if self.is_queued() else ""
        return f"{name} · {config.iterations:,} it" + mark


def short_description(config: Config) -> str:
    """'maml-5w1s': the algorithm, ways and shots, as run names begin."""
    return f"{config.algorithm}-{config.ways}w{config.shots}s"


def run_name(config: Config, when: float | None = None) -> str:
    """A run's folder name that says what it trains and when it started: 'maml-5w1s-1022' (10:22, local time).
    _new_run_dir adds -2, -3, ... where the name is taken."""
    return f"{short_description(config)}-{time.strftime('%H%M', time.localtime(when))}"


def progress(records: list, iterations: int, meta_batch: int, window: int = 20) -> Progress:
    """Iteration reached, tasks per second over the last `window` iterations, and seconds left at that pace; no
    pace where their times do not go forward (metrics.spans: a hand-edited file)."""
    if not records:
        return Progress(0, iterations, None, None)
    recent = records[-window - 1:]
    times = [span for span, _ in metrics.spans(recent)] if len(recent) > 1 else [recent[0]["seconds"]]
    seconds_per_iteration = sum(times) / len(times) if times else 0.0
    iteration = records[-1]["iteration"]
    if seconds_per_iteration < metrics.MIN_SPAN:
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
    """The median time of a meta-update, leaving out the iterations that also validated, and the spans whose time
    does not go forward (metrics.spans)."""
    times = sorted(span for span, record in metrics.spans(records) if "val_loss" not in record)
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
    """What else than NOT_COMPARED differs between two runs' configurations: ['iterations 19538 / 9429', ...]. The
    two runs of one comparison were started with one configuration: their iterations differ only where Evaluate
    now cut each to those it had done."""
    return _differences(_settings(a), _settings(b))


def _settings(run: Run) -> tuple:
    """What differences compares of a run: its configuration (a dict), and its comparison."""
    return run.config().to_dict(), run.comparison()


def _differences(a: tuple, b: tuple) -> list:
    """differences, of two runs' _settings."""
    (first, comparison), (second, other) = a, b
    ignored = NOT_COMPARED + (("iterations",) if comparison and comparison == other else ())
    return [f"{name} {first[name]} / {second[name]}" for name in first
            if name not in ignored and first[name] != second[name]]


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
    settings = {run: _settings(run) for run in runs}  # each run's files read once, not once for each pair
    algorithm = {run: config["algorithm"] for run, (config, _) in settings.items()}
    pairs = [(run, other) if algorithm[run] == "maml" else (other, run)
             for index, run in enumerate(runs) for other in runs[index + 1:]
             if sorted([algorithm[run], algorithm[other]]) == ["fomaml", "maml"]]
    fair = [(maml, fomaml) for maml, fomaml in pairs if not _differences(settings[maml], settings[fomaml])]
    comparison = {run: each for run, (_, each) in settings.items()}
    together = [(maml, fomaml) for maml, fomaml in fair
                if comparison[maml] and comparison[maml] == comparison[fomaml]]
    return list((together or fair or [()])[0])


def takeaway(maml: Run, fomaml: Run) -> str | None:
    """One line, computed from the two runs' records, on what second order costs and buys: 'MAML: 38 % slower
    per iteration, 55 MB more memory for a meta-update, 2.1 points higher validation accuracy at equal iterations (...)'; None
    while there is nothing to compare yet."""
    first, second = maml.metrics(), fomaml.metrics()
    parts = []
    pace = seconds_per_iteration(first), seconds_per_iteration(second)
    ratio = pace[0] / pace[1] - 1 if all(pace) else math.inf  # infinite too for hand-edited times 1e-320 s apart
    if math.isfinite(ratio):
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
            if _named_in_text(path) and ((path / LAUNCH).exists() or (path / CONFIG).exists())]
    return sorted((run for run in runs if _readable(run)), key=lambda run: run.started(), reverse=True)


def start(config: Config, root: Path | None = None, owner: str | None = None) -> Run:
    """Queues `python -m fewshot train` for `config` in a new run directory under `root`, and starts it at once
    if a place is free (dispatch); returns at once. `owner`: the browser session that started it.

    ValueError, naming every problem, when `config` asks more than this server allows, or the queue is full.

    Each run trains on limits.threads_per_run() torch threads (OMP_NUM_THREADS): one on a two-core machine.
    There, two threads per run were 13 times slower than one (FOMAML, conv 32x4, 16 tasks: 3.1 against 0.23 s per
    meta-update, with other work on the cores), their OpenMP threads waiting for each other whenever a core
    is taken. The process runs at a lower priority than the web server (launchers.TRAINING_NICENESS), so that
    the pages answer at once while runs take every core.
    """
    return _start_together([config], root, owner, comparison=None)[0]


def start_comparison(config: Config, root: Path | None = None, owner: str | None = None) -> list:
    """MAML and FOMAML on `config`: same seed, so the same initial weights and the same tasks (training.py).

    Both are queued as one: they start together, on the same number of threads, so that each has its own
    cores and their seconds per iteration compare fairly. Both are queued, or neither (a ValueError).
    """
    comparison = time.strftime("%Y%m%d-%H%M%S") + "-compare"  # the pair's id, in launch.json
    configs = [Config.from_dict({**config.to_dict(), "algorithm": algorithm}) for algorithm in ("maml", "fomaml")]
    return _start_together(configs, root, owner, comparison)


def _start_together(configs: list, root: Path | None, owner: str | None, comparison: str | None) -> list:
    root = Path(root or runs_root()).resolve()
    _check_admissible(configs)
    root.mkdir(parents=True, exist_ok=True)
    with _queue_lock(root):
        waiting = sum(run.is_queued() for run in list_runs(root))
        if waiting + len(configs) > MAX_QUEUED:
            raise ValueError(f"{waiting} runs are waiting to train already, the most this server queues is "
                             f"{MAX_QUEUED}. Wait for some to start, or stop one.")
        queued, threads = time.time(), limits.threads_per_run()
        new_runs = []
        for config in configs:
            run = Run(_new_run_dir(root, run_name(config, queued)))
            _queue(run, config_arguments(config), config, {"started": queued, "comparison": comparison,
                                                          "owner": owner, "threads": threads})
            new_runs.append(run)
    dispatch(root)
    return new_runs


def _check_admissible(configs: list) -> None:
    """ValueError, naming every problem, where `configs` ask more than this server allows (limits.check), or
    more places than it has: a comparison's two runs train together."""
    problems = list(dict.fromkeys(problem for config in configs for problem in limits.check(config)))
    if problems:  # dict.fromkeys: a comparison's two configurations have the same problems; each is said once
        raise ValueError("\n".join(problems))
    limit = limits.max_runs()
    if len(configs) > limit:
        raise ValueError(f"A comparison trains {len(configs)} runs at once; this server trains at most {limit} "
                         "(FEWSHOT_MAX_RUNS).")


def _queue(run: Run, arguments: list, config: Config, launch: dict) -> None:
    """Puts `run` at the end of the queue: `python -m fewshot train --run-dir <run> arguments`, for `config`.
    `launch`: what launch.json keeps of the run (started, comparison, owner, threads)."""
    for name in (STOP_REQUESTED, ENDED):
        (run.path / name).unlink(missing_ok=True)
    launch = {**launch, "queued": time.time(), "arguments": arguments, "config": config.to_dict()}
    files.write_text(run.path / LAUNCH, json.dumps(launch, indent=2) + "\n")


def dispatch(root: Path | None = None) -> list:
    """Starts the runs queued under `root`, first come first served, while fewer than limits.max_runs() train
    there; returns those it started. A comparison's two runs start together, when two places are free; the
    runs queued after it wait for it, unless it needs more places than the server has (its limit was lowered
    since): it waits then, and lets the others pass, as they pass a run that could not start (launch.json keeps
    why, and it is tried again next time). The count and the starts happen under an exclusive lock of a file in
    `root` (flock), so that two sessions, or two servers, cannot both fill the last place."""
    root = Path(root or runs_root()).resolve()
    if not root.is_dir():
        return []
    with _queue_lock(root):
        listed, limit = list_runs(root), limits.max_runs()
        free = limit - sum(run.is_running() for run in listed)
        started = []
        for group in _queued_groups(listed):
            if len(group) > limit:
                continue
            if len(group) > free:
                break
            for run in group:
                try:
                    _launch(run)
                except (OSError, RuntimeError, ValueError) as error:  # a Ray cluster that does not answer, a
                    # train.log that is no regular file (files.open_regular): tried again at the next dispatch,
                    _record_launch_error(run, error)  # while the runs queued after it go on
                    break
                free, started = free - 1, started + [run]
        return started


def dispatch_forever(root: Path, every: float = DISPATCH_EVERY) -> None:
    """dispatch(root) every `every` seconds, for ever: the server's thread that starts queued runs when a place
    frees, whichever process ended, and after a restart of the server. An error (a full disk) is printed to the
    server's log and tried again."""
    while True:
        try:
            dispatch(root)
        except Exception as error:  # noqa: BLE001 - the server's one dispatcher must outlive any one run's fault
            print(f"fewshot: starting queued runs in {root} failed: {error}", file=sys.stderr, flush=True)
        time.sleep(every)


def queue_place(run: Run, listed: list | None = None) -> int:
    """How many queued runs start before `run` (its comparison's other run not counted); `listed`: the runs
    of its folder, if at hand."""
    groups = _queued_groups(listed if listed is not None else list_runs(run.path.parent))
    ahead = 0
    for group in groups:
        if run in group:
            return ahead
        ahead += len(group)
    return ahead


def _queued_groups(listed: list) -> list:
    """The queued runs among `listed`, in the order they start: lists of one run, or of a comparison's two."""
    launches = [(run.launch(), run) for run in listed]
    queued = sorted(((launch, run) for launch, run in launches if run._queued(launch)),
                    key=lambda pair: (pair[0].get("queued", 0.0), pair[1].name))
    groups = {}
    for launch, run in queued:
        groups.setdefault(launch.get("comparison") or run.name, []).append(run)
    return list(groups.values())


def _launch(run: Run) -> None:
    """Starts the queued `run`'s training process through the launcher of this server (launchers.launcher),
    and records what the launcher needs to find it again in launch.json."""
    launch = run.launch()
    command = [sys.executable, "-m", "fewshot", "train", "--run-dir", str(run.path)] + launch["arguments"]
    threads = str(min(launch.get("threads", 1), limits.threads_per_run()))  # a hand-edited launch.json's too
    environment = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                       TQDM_MININTERVAL="10")  # the log gets a progress line every 10 s, not every iteration
    found = launchers.launcher().launch(run.path, command, environment, run.path / LOG, int(threads))
    launch = {**launch, **found, "command": command, "launched": time.time()}
    launch.pop("launch_error", None)
    try:
        files.write_text(run.path / LAUNCH, json.dumps(launch, indent=2) + "\n")
    except OSError:  # a full disk: a process that launch.json does not name is neither counted nor stoppable, and
        launchers.launcher_of(found).stop(found, run.path)  # the run, still queued, would start again and again
        raise


def _record_launch_error(run: Run, error: Exception) -> None:
    """Keeps in launch.json why the queued `run` could not start, for its page; dispatch tries again."""
    launch = {**run.launch(), "launch_error": str(error).splitlines()[0] if str(error) else repr(error)}
    files.write_text(run.path / LAUNCH, json.dumps(launch, indent=2) + "\n")


@contextmanager
def _queue_lock(root: Path):
    """An exclusive lock of the runs folder `root`, across processes, while the queue is read and changed."""
    with files.open_regular(root / START_LOCK, "ab") as lock:  # a FIFO in its place would wait for good
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for any other holder; released when the file is closed
        yield


def resume(run: Run) -> None:
    """Queues a stopped or interrupted run again: it continues from its last saved iteration (training.py
    --resume), or begins again if it died before its first save. ValueError where there is nothing to resume."""
    with _queue_lock(run.path.parent):  # the status read and the queueing at once: two clicks queue it once
        _check_not_deleted(run)
        status = run.status()
        if status not in (STOPPED, INTERRUPTED):
            raise ValueError(f"Run {run.name} is {status}: only a stopped or interrupted run can be resumed.")
        config = run.config()
        _check_admissible([config])
        arguments = ["--resume"] if (run.path / CONFIG).exists() else config_arguments(config)
        _queue(run, arguments, config, _kept_launch(run))
    dispatch(run.path.parent)


def _check_not_deleted(run: Run) -> None:
    """ValueError for a run whose folder another session deleted since this one's page showed it (else the page
    said "No such file or directory" and a path)."""
    if not run.path.is_dir():
        raise ValueError(f"Run {run.name} was deleted.")


def evaluate_now(run: Run) -> None:
    """Measures a stopped run's test accuracy on its last checkpoint, in a process of its own, as the end of a
    finished run does: the run resumes with its iterations cut to those it did, so meta-training has nothing
    left and training.finish evaluates it (test_tasks tasks) and writes evaluation.json. It goes through the
    queue like any run; the status reads running meanwhile, then finished; Stop ends it. ValueError when the
    run cannot be evaluated."""
    with _queue_lock(run.path.parent):  # the status read and the queueing at once: two clicks queue it once
        _check_not_deleted(run)
        done, config = run.progress().iteration, run.config()
        if run.status() != STOPPED or done == 0 or not (run.path / TRAINING_STATE).exists():
            raise ValueError(f"Run {run.name} has no saved state to evaluate: only a run stopped after its first "
                             "iteration has one.")
        if config.test_tasks == 0:
            raise ValueError(f"Run {run.name} was started with test tasks 0: it asks for no test evaluation.")
        evaluated = Config.from_dict({**config.to_dict(), "iterations": done})
        _check_admissible([evaluated])
        _queue(run, ["--resume", "--iterations", str(done)], evaluated, _kept_launch(run))
    dispatch(run.path.parent)


def _kept_launch(run: Run) -> dict:
    """What a queued-again run keeps of its launch.json: when it first started, its comparison, its owner."""
    launch = run.launch()
    return {"started": run.started(), "comparison": run.comparison(), "owner": launch.get("owner"),
            "threads": launch.get("threads", limits.threads_per_run())}


def stop(run: Run) -> None:
    """Asks the run to stop: its launcher signals it (SIGINT here, SIGTERM to a Ray job), and training finishes
    its iteration, saves and exits. A queued run leaves the queue. A run that ended meanwhile (a Stop pressed as
    the page last showed it), or was deleted, has nothing to stop: marked stopped, a failed run would hide why."""
    with _queue_lock(run.path.parent):  # not while dispatch starts it: it would start, unsignalled, and train on
        launch = run.launch()
        if not (run._running(launch) or run._queued(launch)):
            return
        try:  # not waited on under the queue lock, whatever is in its place (files.mark)
            files.mark(run.path / STOP_REQUESTED)
        except FileNotFoundError:  # its folder was deleted since the page showed it
            return
        except OSError:  # not even that (a read-only folder): the run is stopped all the same, and then reads as
            pass  # failed or interrupted, as its log says
    if _has_process(launch):
        launchers.launcher_of(launch).stop(launch, run.path)


def is_shipped(run: Run) -> bool:
    """Whether `run` ships with the app, beside the checkpoint it trained (checkpoints/runs/)."""
    return shipped_runs_root().resolve() in run.path.resolve().parents


def delete(run: Run) -> None:
    """Deletes a run's folder, for good. ValueError for a run that is training (stop it first) or that ships
    with the app (checkpoints/runs/)."""
    if is_shipped(run):
        raise ValueError(f"Run {run.name} ships with the app (its curves go with a shipped checkpoint): it stays.")
    with _queue_lock(run.path.parent):  # not while dispatch starts it
        if run.is_running():
            raise ValueError(f"Run {run.name} is training: stop it first.")
        shutil.rmtree(run.path)


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
    data = run.checkpoint_bytes()
    try:
        files.create_with(target, lambda tmp: tmp.write_bytes(data))
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
    pid, arguments, threads = launch.get("pid"), launch.get("arguments", []), launch.get("threads", 1)
    return ((pid is None or type(pid) is int and pid > 0) and type(threads) is int and threads > 0
            and all(type(launch.get(time, 0.0)) in (int, float) for time in ("started", "queued"))
            and isinstance(launch.get("config", {}), dict)
            and all(isinstance(launch.get(text), (str, type(None)))
                    for text in ("comparison", "owner", "ray_job", "ray_address", "launch_error"))
            and isinstance(arguments, list) and all(isinstance(argument, str) for argument in arguments))


def _valid_evaluation(evaluation) -> bool:
    """Whether evaluation.json holds what training writes, as far as the pages read it: an accuracy and the half
    width of its interval, fractions from 0 to 1 (not NaN or Infinity, which JSON readers take: the pages would
    show "nan %"; nor an integer of 400 digits, which no float holds)."""
    return (isinstance(evaluation, dict) and isinstance(evaluation.get("split"), str)
            and all(type(evaluation.get(number)) in (int, float) and 0 <= evaluation[number] <= 1
                    for number in ("accuracy", "ci95"))
            and all(type(evaluation.get(count)) is int for count in ("ways", "shots", "tasks", "inner_steps")))


def _has_process(launch: dict) -> bool:
    """Whether a launcher has started the run that `launch` describes (else it is queued, or was never
    started by the app)."""
    return launch.get("pid") is not None or launch.get("ray_job") is not None


def _named_in_text(path: Path) -> bool:
    """Whether the folder's name is text (UTF-8). A name of other bytes (an archive from another system, say)
    cannot be shown: in a menu, it broke the Train and Compare pages for everyone."""
    try:
        path.name.encode()
        return True
    except UnicodeEncodeError:
        return False


def _readable(run: Run) -> bool:
    """Whether the run's configuration can be read (a folder from another version of fewshot may not)."""
    try:
        run.config()
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
