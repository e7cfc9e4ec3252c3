"""python -m fewshot train | evaluate | bench"""

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from . import files
from .checkpoints import CheckpointError, inner_lr_of, load_checkpoint, record_accuracy
from .config import MAX_SEED, Config
from .evaluation import TEST_SEED, evaluate
from .memory import keep_freed_memory
from .omniglot import DRAWINGS_PER_CHARACTER, DatasetNotFound, load_omniglot, split_characters
from .tasks import TaskSampler
from .training import CHECKPOINT, CONFIG, ENDED, RunInUse, train

MAX_TEST_TASKS, MAX_TEST_INNER_STEPS = 100_000, 100  # evaluate: a few hours on a CPU at most


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One --option per Config field, with its default, help and choices; a true-or-false one is on with
    `--option` alone, or takes true or false (as runs.config_arguments writes it)."""
    for field in dataclasses.fields(Config):
        default = field.default
        kind = {"type": true_or_false, "nargs": "?", "const": True, "metavar": "true|false"} \
            if type(default) is bool else {"type": type(default)}
        parser.add_argument("--" + field.name.replace("_", "-"), **kind, default=None,
                            choices=field.metadata.get("choices"),
                            help=f"{field.metadata['help']} (default: {default!r})" if default != "" else
                            field.metadata["help"])


def true_or_false(text: str) -> bool:
    """The value of a true-or-false option: true or false, in any case (Python writes True and False)."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def config_from_args(args, base: dict | None = None) -> Config:
    values = dict(base or {})
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                   if getattr(args, f.name) is not None})
    return Config.from_dict(values)


def train_command(args) -> None:
    run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        train_run(args, run_dir)
    finally:  # an error, a stop, the end: the app tells these from a process that died without a word
        with contextlib.suppress(OSError):  # a read-only folder: the run then reads as interrupted, and resumes
            files.mark(run_dir / ENDED)


def train_run(args, run_dir: Path) -> None:
    if args.resume:
        saved = saved_config(run_dir)
        config = config_from_args(args, base=saved.to_dict())
    else:
        if (run_dir / CONFIG).exists():
            sys.exit(f"error: {run_dir} already holds a run; pass --resume to continue it, or another --run-dir")
        config = config_from_args(args)
    print(f"run directory: {run_dir}")
    try:
        train(config, run_dir, resume=args.resume)
    except OSError as error:  # a full disk, a read-only folder: the run keeps its last checkpoint
        then = "; once that is fixed, --resume continues the run" if (run_dir / CONFIG).exists() else ""
        sys.exit(f"error: {os_error_message(error)}{then}")
    print(f"checkpoint: {run_dir / CHECKPOINT}")


def saved_config(run_dir: Path) -> Config:
    """The configuration in a run directory, to resume it; exits with one line if there is none to read."""
    path = run_dir / CONFIG
    if not path.exists():
        sys.exit(f"error: --resume needs an existing run directory with {CONFIG}; {run_dir} has none")
    try:
        return Config.load(path)
    except ValueError as error:  # not JSON, not UTF-8 text, or not a configuration
        sys.exit(f"error: {path} is not a run configuration that fewshot can read ({error}); "
                 f"start a new run in another --run-dir")


def os_error_message(error: OSError) -> str:
    """'runs/x/config.json: No space left on device': the file the system names, if any, and its reason."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def evaluate_command(args) -> None:
    if args.record and args.transductive:
        sys.exit("error: --record keeps the protocol the app uses (support statistics); drop --transductive")
    if args.record and args.characters != "test":
        sys.exit("error: --record keeps test accuracy only; drop --characters val")
    if args.record and args.seed != TEST_SEED:
        sys.exit("error: --record keeps accuracy on the test tasks every model shares; drop --seed")
    if args.record and args.within_alphabet:
        sys.exit("error: --record keeps accuracy on tasks of characters of all alphabets; drop --within-alphabet")
    model, metadata = load_checkpoint(Path(args.checkpoint))
    split = args.split or metadata["split"]
    shots = metadata["shots"] if args.shots is None else args.shots
    steps = metadata.get("test_inner_steps", metadata["inner_steps"]) if args.inner_steps is None else args.inner_steps
    problems = evaluation_problems(args.tasks, shots, args.queries, steps, args.seed)
    if problems:
        sys.exit("error: " + "; ".join(problems))
    data = load_omniglot(args.data_root or Config().data_root)
    characters = split_characters(data, split)[args.characters]
    alphabets = [data.alphabet(c) for c in characters] if args.within_alphabet else None
    sampler = TaskSampler(data.ink, characters, metadata["ways"], shots, args.queries, alphabets=alphabets,
                          rotations=not args.within_alphabet)  # within one alphabet: upright, as in Lake et al.
    result = evaluate(model, sampler, inner_lr_of(metadata), steps, args.tasks, seed=args.seed,
                      transductive=args.transductive)
    kind = " within one alphabet" if args.within_alphabet else ""
    tasks = f"{split}/{args.characters}" + (f", seed {args.seed}" if args.seed != TEST_SEED else "")
    print(f"{Path(args.checkpoint).name}: {metadata['ways']}-way {shots}-shot{kind} on {tasks}: {result}")
    if args.record:
        record_accuracy(Path(args.checkpoint), {"split": f"{split}/test", **result.to_dict()})
        print(f"recorded in the checkpoint's metadata as accuracy[{result.task!r}]")


def evaluation_problems(tasks: int, shots: int, queries: int, steps: int, seed: int) -> list[str]:
    """Why evaluate cannot measure these options, each in a phrase naming the option; [] when it can."""
    checks = [
        (2 <= tasks <= MAX_TEST_TASKS,
         f"--tasks must be between 2 (for a 95 % interval) and {MAX_TEST_TASKS}, got {tasks}"),
        (shots >= 1, f"--shots must be at least 1, got {shots}"),
        (queries >= 1, f"--queries must be at least 1, got {queries}"),
        (shots + queries <= DRAWINGS_PER_CHARACTER,
         f"shots + queries must be at most {DRAWINGS_PER_CHARACTER} (Omniglot has {DRAWINGS_PER_CHARACTER} "
         f"drawings per character), got {shots} + {queries}"),
        (0 <= steps <= MAX_TEST_INNER_STEPS,
         f"--inner-steps must be between 0 and {MAX_TEST_INNER_STEPS}, got {steps}"),
        (0 <= seed <= MAX_SEED, f"--seed must be between 0 and {MAX_SEED}, got {seed}"),
    ]
    return [problem for fine, problem in checks if not fine]


def bench_command(args) -> None:
    if args.repeats < 1:  # the median of no timed iteration
        sys.exit(f"error: --repeats must be at least 1, got {args.repeats}")
    import torch
    from .bench import bench
    config = config_from_args(args)
    print(f"CPU threads: {torch.get_num_threads()}; {config.queries} queries per class, meta-batch 32, conv "
          f"{config.channels}x{config.blocks}; median of {args.repeats} iterations after one warm-up")
    bench(config, args.repeats)


def main(argv=None) -> None:
    keep_freed_memory()  # meta-training and evaluation: 15-25 % faster (see memory.py)
    parser = argparse.ArgumentParser(prog="python -m fewshot", description=__doc__.strip())
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="meta-train a model into a run directory")
    train_parser.add_argument("--run-dir", help="where to write the run (default: runs/<date-time>)")
    train_parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    add_config_options(train_parser)

    evaluate_parser = commands.add_parser("evaluate", help="test accuracy of a checkpoint, with its 95%% interval")
    evaluate_parser.add_argument("checkpoint", help="a .safetensors checkpoint")
    evaluate_parser.add_argument("--tasks", type=int, default=600, help="test tasks (default: 600)")
    evaluate_parser.add_argument("--shots", type=int, help="support examples per class (default: as trained)")
    evaluate_parser.add_argument("--queries", type=int, default=5, help="queries per class (default: 5)")
    evaluate_parser.add_argument("--inner-steps", type=int, help="test-time inner steps (default: as trained)")
    evaluate_parser.add_argument("--split", choices=("lake", "maml-paper"), help="default: as trained")
    evaluate_parser.add_argument("--characters", choices=("test", "val"), default="test",
                                 help="test: the split's test characters (default); val: those it holds out from "
                                      "meta-training, never trained on (lake: 100 background characters)")
    evaluate_parser.add_argument("--seed", type=int, default=TEST_SEED,
                                 help="seed of the tasks drawn; the default gives the same tasks to every model, "
                                      "another seed a second sample of them")
    evaluate_parser.add_argument("--within-alphabet", action="store_true",
                                 help="all N classes of a task from one alphabet, the alphabets taking turns "
                                      "task after task, characters upright (no rotations), as in Lake et al.'s "
                                      "one-shot benchmark")
    evaluate_parser.add_argument("--data-root", help="folder holding omniglot-py/")
    evaluate_parser.add_argument("--transductive", action="store_true",
                                 help="batch norm normalises the queries with their own statistics, as the MAML "
                                      "paper's code does, not with the support set's (the app's way)")
    evaluate_parser.add_argument("--record", action="store_true", help="write the result into the checkpoint")

    bench_parser = commands.add_parser("bench", help="seconds per iteration: the notebook's loop vs this engine")
    bench_parser.add_argument("--repeats", type=int, default=5, help="timed iterations per setting")
    add_config_options(bench_parser)

    args = parser.parse_args(argv)
    command = {"train": train_command, "evaluate": evaluate_command, "bench": bench_command}[args.command]
    try:
        command(args)
    except (CheckpointError, DatasetNotFound, RunInUse, ValueError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a full disk, a read-only folder: files are written whole or not at all
        sys.exit(f"error: {os_error_message(error)}")
    except KeyboardInterrupt:  # a second Ctrl-C: every file is whole, so a run resumes from its last save
        sys.exit("interrupted")
