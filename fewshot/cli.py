"""python -m fewshot train | evaluate | bench"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .checkpoints import CheckpointError, load_checkpoint, record_accuracy
from .config import Config
from .evaluation import TEST_SEED, evaluate
from .memory import keep_freed_memory
from .omniglot import DatasetNotFound, load_omniglot, split_characters
from .tasks import TaskSampler
from .training import CONFIG, RunInUse, train


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One --option per Config field, with its default, help and choices."""
    for field in dataclasses.fields(Config):
        default = field.default
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default), default=None,
                            choices=field.metadata.get("choices"),
                            help=f"{field.metadata['help']} (default: {default!r})" if default != "" else
                            field.metadata["help"])


def config_from_args(args, base: dict | None = None) -> Config:
    values = dict(base or {})
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                   if getattr(args, f.name) is not None})
    return Config.from_dict(values)


def train_command(args) -> None:
    run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if args.resume:
        if not (run_dir / CONFIG).exists():
            sys.exit(f"error: --resume needs an existing run directory with {CONFIG}; {run_dir} has none")
        config = config_from_args(args, base=Config.load(run_dir / CONFIG).to_dict())
    else:
        if (run_dir / CONFIG).exists():
            sys.exit(f"error: {run_dir} already holds a run; pass --resume to continue it, or another --run-dir")
        config = config_from_args(args)
    print(f"run directory: {run_dir}")
    train(config, run_dir, resume=args.resume)
    print(f"checkpoint: {run_dir / 'checkpoint.safetensors'}")


def evaluate_command(args) -> None:
    if args.record and args.transductive:
        sys.exit("error: --record keeps the protocol the app uses (support statistics); drop --transductive")
    if args.record and args.characters != "test":
        sys.exit("error: --record keeps test accuracy only; drop --characters val")
    if args.record and args.seed != TEST_SEED:
        sys.exit("error: --record keeps accuracy on the test tasks every model shares; drop --seed")
    model, metadata = load_checkpoint(Path(args.checkpoint))
    data = load_omniglot(args.data_root or Config().data_root)
    split = args.split or metadata["split"]
    shots = args.shots or metadata["shots"]
    steps = metadata["test_inner_steps"] if args.inner_steps is None else args.inner_steps
    characters = split_characters(data, split)[args.characters]
    sampler = TaskSampler(data.ink, characters, metadata["ways"], shots, args.queries)
    result = evaluate(model, sampler, metadata["inner_lr"], steps, args.tasks, seed=args.seed,
                      transductive=args.transductive)
    tasks = f"{split}/{args.characters}" + (f", seed {args.seed}" if args.seed != TEST_SEED else "")
    print(f"{Path(args.checkpoint).name}: {metadata['ways']}-way {shots}-shot on {tasks}: {result}")
    if args.record:
        record_accuracy(Path(args.checkpoint), {"split": f"{split}/test", **result.to_dict()})
        print(f"recorded in the checkpoint's metadata as accuracy[{result.task!r}]")


def bench_command(args) -> None:
    import torch
    from .bench import bench
    config = config_from_args(args)
    print(f"CPU threads: {torch.get_num_threads()}; inner steps {config.inner_steps}, queries {config.queries}, "
          f"{config.backbone} backbone; median of {args.repeats} iterations after one warm-up")
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
    evaluate_parser.add_argument("--data-root", help="folder holding omniglot-py/")
    evaluate_parser.add_argument("--transductive", action="store_true",
                                 help="batch norm normalises the queries with their own statistics, as the MAML "
                                      "paper's code does, not with the support set's (the app's way)")
    evaluate_parser.add_argument("--record", action="store_true", help="write the result into the checkpoint")

    bench_parser = commands.add_parser("bench", help="seconds per iteration: learn2learn loop vs this engine")
    bench_parser.add_argument("--repeats", type=int, default=5, help="timed iterations per setting")
    add_config_options(bench_parser)

    args = parser.parse_args(argv)
    command = {"train": train_command, "evaluate": evaluate_command, "bench": bench_command}[args.command]
    try:
        command(args)
    except (CheckpointError, DatasetNotFound, RunInUse, ValueError) as error:
        sys.exit(f"error: {error}")
