"""One configuration for a meta-training run, shared by the CLI (`python -m fewshot`) and the app."""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def _option(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    # What is learned
    algorithm: str = _option("maml", "maml (second order) or fomaml (first-order MAML)", ("maml", "fomaml"))
    backbone: str = _option("conv", "conv (strided 3x3 convs) or fc (784-256-128-64-64)", ("conv", "fc"))
    channels: int = _option(64, "conv: channels per block")
    blocks: int = _option(4, "conv: number of conv blocks")
    # The tasks
    ways: int = _option(5, "classes per task (N)")
    shots: int = _option(1, "support examples per class (K)")
    queries: int = _option(5, "query examples per class, used for the outer loss")
    split: str = _option("lake", "lake (background/evaluation alphabets) or maml-paper (1200/423 characters)",
                         ("lake", "maml-paper"))
    augment: str = _option("none", "random changes to each meta-training drawing: none, or affine (shift up to "
                                   "2 pixels, scale by 0.9 to 1.1, rotate up to 10 degrees)", ("none", "affine"))
    data_root: str = _option("", "folder holding omniglot-py/ (default: env FEWSHOT_DATA, ./data/omniglot, ../shared/omniglot)")
    # The inner loop: theta'_i = theta - inner_lr * grad L_Ti(theta), inner_steps times
    inner_steps: int = _option(1, "gradient steps on each task's support set while meta-training")
    inner_lr: float = _option(0.4, "inner-loop learning rate (alpha)")
    # The outer loop: theta <- Adam(theta, grad sum_i L_Ti(theta'_i))
    outer_lr: float = _option(0.001, "Adam learning rate of the meta-update (beta)")
    meta_batch: int = _option(32, "tasks per meta-update")
    iterations: int = _option(1000, "meta-updates in total")
    engine: str = _option("fewshot", "fewshot (torch.func, vmapped) or learn2learn (the notebook's loop)",
                          ("fewshot", "learn2learn"))
    device: str = _option("auto", "where to meta-train: auto (a CUDA GPU if torch sees one, else the CPU), cpu "
                                  "or cuda", ("auto", "cpu", "cuda"))
    seed: int = _option(0, "seed of the initial weights and of the task sequence")
    init_from: str = _option("", "checkpoint whose weights start the run instead of random ones; a classifier "
                                 "for another number of ways starts random (default: none)")
    # Monitoring
    val_every: int = _option(25, "iterations between validations")
    val_tasks: int = _option(64, "held-out tasks per validation")
    checkpoint_every: int = _option(100, "iterations between checkpoints")
    test_tasks: int = _option(600, "test tasks for the final evaluation (0 skips it)")
    test_inner_steps: int = _option(3, "inner steps at test time")

    def __post_init__(self):
        if not self.data_root:
            self.data_root = default_data_root()
        for name in ("ways", "shots", "queries", "meta_batch", "iterations", "val_every", "val_tasks",
                     "checkpoint_every", "channels", "blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("inner_steps", "test_tasks", "test_inner_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if self.shots + self.queries > 20:
            raise ValueError(f"shots + queries must be at most 20 (Omniglot has 20 drawings per character), "
                             f"got {self.shots} + {self.queries}")

    @property
    def first_order(self) -> bool:
        return self.algorithm == "fomaml"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))
