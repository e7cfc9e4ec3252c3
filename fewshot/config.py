"""One configuration for a meta-training run, shared by the CLI (`python -m fewshot`) and the app."""

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .files import read_file
from .omniglot import DRAWINGS_PER_CHARACTER

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_SEED = 2**32 - 1  # torch takes seeds below 2**64; training's task seeds are seed * 1,000,000 + iteration
MAX_JSON_BYTES = 1 << 20  # a run's configuration, launch and evaluation files are a few KB: read_json refuses more
# What a resumed run keeps: its model's shape, and the tasks it meta-trains and is tested on; whether it learns its
# inner learning rates, which it saves with its weights, and whether its batch norm has a scale and shift per
# inner step (with either, its inner steps too: one rate, or one row, per step). The rest (the learning rates, the
# queries, the iterations, the algorithm, the device, ...) may change when it resumes.
KEPT_ON_RESUME = ("backbone", "channels", "blocks", "ways", "shots", "split", "learned_inner_lr", "per_step_bn")


def default_data_root() -> str:
    """$FEWSHOT_DATA, else the first existing of ./data/omniglot and ../shared/omniglot, else ./data/omniglot.

    The folder holds (or will receive, by download) torchvision's layout: omniglot-py/images_background and
    omniglot-py/images_evaluation.
    """
    if os.environ.get("FEWSHOT_DATA"):
        return os.environ["FEWSHOT_DATA"]
    candidates = [REPO_ROOT / "data" / "omniglot", REPO_ROOT.parent / "shared" / "omniglot"]
    for candidate in candidates:
        if (candidate / "omniglot-py").is_dir():
            return str(candidate)
    return str(candidates[0])


def _option(default, help: str, choices=None, at_least=None, above=None, at_most=None, label=None):
    """A Config field: its default, its help, the values it takes (choices, or bounds for a number), and its
    label in the app's form, in plain words tied to the paper's symbols (None: the field's name)."""
    return field(default=default, metadata={"help": help, "choices": choices, "at_least": at_least,
                                            "above": above, "at_most": at_most, "label": label})


@dataclass
class Config:
    # What is learned
    algorithm: str = _option("maml", "maml (second order) or fomaml (first-order MAML)", ("maml", "fomaml"))
    backbone: str = _option("conv", "conv (strided 3x3 convs) or fc (784-256-128-64-64)", ("conv", "fc"),
                            label="network")
    channels: int = _option(64, "conv: channels per block", at_least=1, at_most=1024)
    blocks: int = _option(4, "conv: number of conv blocks", at_least=1, at_most=8, label="conv blocks")
    # The tasks
    ways: int = _option(5, "classes per task (N)", at_least=2, at_most=1000, label="classes per task N")
    shots: int = _option(1, "support examples per class (K)", at_least=1, at_most=DRAWINGS_PER_CHARACTER - 1,
                         label="examples per class K")
    queries: int = _option(5, "query examples per class, used for the outer loss", at_least=1,
                           label="queries per class")
    split: str = _option("lake", "lake (background/evaluation alphabets) or maml-paper (1200/423 characters)",
                         ("lake", "maml-paper"), label="character split")
    augment: str = _option("none", "random changes to each meta-training drawing: none, or affine (shift up to "
                                   "2 pixels, scale by 0.9 to 1.1, rotate up to 10 degrees)", ("none", "affine"),
                         label="augmentation")
    data_root: str = _option("", "folder holding omniglot-py/ (default: env FEWSHOT_DATA, ./data/omniglot, ../shared/omniglot)")
    # The inner loop: theta'_i = theta - inner_lr * grad L_Ti(theta), inner_steps times
    inner_steps: int = _option(1, "gradient steps on each task's support set while meta-training", at_least=0,
                               at_most=100, label="inner steps")
    inner_lr: float = _option(0.4, "inner-loop learning rate (alpha)", at_least=0, at_most=100,
                              label="inner step size α")
    # The outer loop: theta <- Adam(theta, grad sum_i L_Ti(theta'_i))
    outer_lr: float = _option(0.001, "Adam learning rate of the meta-update (beta)", above=0, at_most=100,
                              label="outer step size β")  # at most: Adam's step overflowed a float from 3.4e37
    meta_batch: int = _option(32, "tasks per meta-update", at_least=1, label="tasks per meta-update")
    iterations: int = _option(1000, "meta-updates in total", at_least=1, at_most=10**9, label="meta-updates")
    engine: str = _option("fewshot", "fewshot (torch.func, vmapped) or learn2learn (the notebook's loop)",
                          ("fewshot", "learn2learn"), label="meta-gradient code")
    tasks_at_once: int = _option(0, "engine fewshot: tasks of a meta-batch adapted at once, the meta-gradient "
                                    "summed group by group: fewer hold less memory, too few run slower (0: automatic: "
                                    "on a CPU, tasks of about 240 drawings at 64 channels, 8 for the fc net; the "
                                    "whole meta-batch on a GPU)",
                               at_least=0, at_most=1024, label="tasks adapted at once")
    device: str = _option("auto", "where to meta-train: auto (a CUDA GPU if torch sees one, else an Apple GPU, "
                                  "else the CPU), cpu, cuda or mps", ("auto", "cpu", "cuda", "mps"))
    seed: int = _option(0, "seed of the initial weights and of the task sequence", at_least=0, at_most=MAX_SEED)
    init_from: str = _option("", "checkpoint whose weights start the run instead of random ones; a classifier "
                                 "for another number of ways starts random (default: none)")
    # Options of MAML++ (Antoniou, Edwards & Storkey, 2019, "How to train your MAML"), all off by default
    multi_step_loss: int = _option(0, "MAML++'s multi-step loss: the meta-loss sums the query loss after every inner "
                                      "step, weighted equally at first, then linearly more toward the last step, "
                                      "which alone counts from this iteration on, as in plain MAML (0: off); the "
                                      "train loss recorded meanwhile is that weighted sum",
                                   at_least=0, at_most=10**9, label="multi-step loss until")
    cosine_annealing: bool = _option(False, "MAML++'s cosine annealing: the outer learning rate follows a cosine "
                                            "from outer_lr at the first iteration down to outer_lr / 100 after the "
                                            "last", label="cosine-annealed β")
    second_order_from: int = _option(0, "maml: first-order meta-gradients before this iteration, second order from "
                                        "it on (MAML++'s derivative-order annealing; 0: second order throughout; "
                                        "fomaml stays first order)",
                                     at_least=0, at_most=10**9, label="2nd order from iteration")
    learned_inner_lr: bool = _option(False, "MAML++'s learned inner learning rates: one per layer's weights or biases "
                                            "and per inner step, starting at inner_lr, meta-learned by the outer "
                                            "loop; test-time steps beyond inner_steps take the last step's",
                                     label="learned α per layer and step")
    per_step_bn: bool = _option(False, "MAML++'s per-step batch norm: each batch norm layer has a scale and shift "
                                       "for every inner step, the network at step j using step j's and the queries "
                                       "the last step's; test-time steps beyond inner_steps take the last step's. "
                                       "First-order meta-gradients learn the last step's alone, unless the "
                                       "multi-step loss is on",
                                label="batch norm scale and shift per step")
    # Monitoring
    val_every: int = _option(25, "iterations between validations", at_least=1, label="validate every")
    val_tasks: int = _option(64, "held-out tasks per validation", at_least=1, label="validation tasks")
    probe_every: int = _option(25, "iterations between measurements of how far first-order MAML's meta-gradient "
                                   "is from MAML's, on the meta-batch being trained (Compare page); maml runs of "
                                   "engine fewshot only, not counted in the run's seconds (0: never)", at_least=0,
                             label="1st vs 2nd order every")
    checkpoint_every: int = _option(100, "iterations between checkpoints", at_least=1, label="save every")
    test_tasks: int = _option(600, "test tasks for the final evaluation (0 skips it)", at_least=0, label="test tasks")
    test_inner_steps: int = _option(3, "inner steps at test time", at_least=0, at_most=100, label="test inner steps")

    def __post_init__(self):
        """ValueError naming every field that is wrong, all in one message (the app's form shows it)."""
        if self.data_root == "":
            self.data_root = default_data_root()
        problems = {f.name: problem for f in dataclasses.fields(self)
                    if (problem := field_problem(f, getattr(self, f.name)))}
        if not {"shots", "queries"} & problems.keys() and self.shots + self.queries > DRAWINGS_PER_CHARACTER:
            problems["shots + queries"] = (
                f"shots + queries must be at most {DRAWINGS_PER_CHARACTER} (Omniglot has {DRAWINGS_PER_CHARACTER} "
                f"drawings per character), got {self.shots} + {self.queries}")
        if "test_tasks" not in problems and self.test_tasks == 1:  # no confidence interval of one task: a NaN
            # that the checkpoint's metadata would keep, and no JSON reader takes
            problems["test_tasks"] = "test_tasks must be 0 (no test) or at least 2, for a confidence interval"
        if not problems:
            problems = maml_plus_plus_problems(self)
        if problems:
            raise ValueError("; ".join(problems.values()))

    @property
    def first_order(self) -> bool:
        return self.algorithm == "fomaml"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The Config of a dict read from JSON, say; ValueError (never TypeError) for anything it cannot hold."""
        if not isinstance(values, dict):
            raise ValueError(f"a configuration is a JSON object of option names and values, not {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def save(self, path: Path) -> None:
        files.write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls.from_dict(read_json(path))


FIELDS = {field.name: field for field in dataclasses.fields(Config)}  # each field by its name


def read_json(path: Path):
    """The JSON value the file at `path` holds. json.JSONDecodeError (a ValueError) also for what a damaged or
    hand-edited file in a run's folder may be, which must not break the pages: no regular file or over
    MAX_JSON_BYTES (read_file), or nested too deep for json's parser (which raises RecursionError)."""
    try:
        data = read_file(path, MAX_JSON_BYTES)
    except ValueError as error:
        raise json.JSONDecodeError(str(error), "", 0) from None
    try:
        return json.loads(data)  # bytes that are not UTF-8: a UnicodeDecodeError, a ValueError too
    except RecursionError:
        raise json.JSONDecodeError("nested too deep to parse", "", 0) from None


def field_problem(field: dataclasses.Field, value) -> str | None:
    """Why `value` cannot be the value of this Config field, or None if it can.

    Values come from the command line, the app's form, and JSON files that anyone may edit: a string, a
    fraction, true, or nan where a number of ways belongs is reported here, not as an error deep in torch.
    """
    name, kind, limits = field.name, type(field.default), field.metadata
    if kind is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    if limits["choices"]:
        return None if value in limits["choices"] else \
            f"{name} must be one of {', '.join(limits['choices'])}, got {value!r}"
    if kind is str:
        return None if isinstance(value, str) else f"{name} must be text, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        return f"{name} must be {'a whole number' if kind is int else 'a number'}, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if limits["at_least"] is not None and value < limits["at_least"]:
        return f"{name} must be at least {limits['at_least']}, got {value}"
    if limits["above"] is not None and value <= limits["above"]:
        return f"{name} must be greater than {limits['above']}, got {value}"
    if limits["at_most"] is not None and value > limits["at_most"]:
        return f"{name} must be at most {limits['at_most']}, got {value}"
    return None


def maml_plus_plus_problems(config: Config) -> dict:
    """What is wrong with the MAML++ options of an otherwise valid `config`: {the options: why}."""
    problems = {}
    if config.engine == "learn2learn" and (config.multi_step_loss or config.learned_inner_lr):
        problems["engine"] = ("the multi-step loss and learned inner learning rates need engine fewshot; the "
                              "notebook's learn2learn loop has neither")
    if config.multi_step_loss and config.inner_steps == 0:
        problems["multi_step_loss"] = ("multi_step_loss sums the query loss after every inner step: it needs "
                                       "inner_steps of 1 or more")
    if config.learned_inner_lr and config.inner_steps == 0:
        problems["learned_inner_lr"] = ("learned_inner_lr learns one rate per inner step: it needs inner_steps of "
                                        "1 or more")
    if config.per_step_bn and config.engine == "learn2learn":
        problems["per_step_bn"] = ("per_step_bn needs engine fewshot: the notebook's learn2learn loop has one batch "
                                   "norm scale and shift for all inner steps")
    elif config.per_step_bn and config.inner_steps == 0:
        problems["per_step_bn"] = ("per_step_bn gives batch norm a scale and shift per inner step: it needs "
                                   "inner_steps of 1 or more")
    return problems


def changes_refused_on_resume(saved: Config, new: Config) -> list[str]:
    """The fields (of KEPT_ON_RESUME, and inner_steps for a run that learns its inner learning rates or has
    per-step batch norm) in which `new` differs from the `saved` configuration of a run.

    A resumed run keeps its model's shape, so that its saved weights fit (its learned inner learning rates too),
    and its tasks, so that its curve and its test accuracy measure one thing. A run that should change them is a
    new run (--init-from can start it from the old run's checkpoint).
    """
    kept = KEPT_ON_RESUME + (("inner_steps",) if saved.learned_inner_lr or saved.per_step_bn else ())
    return [name for name in kept if getattr(saved, name) != getattr(new, name)]
