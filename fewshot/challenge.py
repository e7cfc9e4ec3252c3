"""Human versus model: one-shot tasks for a student to solve, the shipped model's answers to the same tasks,
and the two scores side by side. No streamlit here; pages/challenge.py shows it, scoreboard.py stores it.

A task shows one drawing of each of N characters (the support set: N-way 1-shot) and QUERIES new drawings
of them; the student, then the model, says which character each query is. The characters come from the
lake split's test alphabets (Omniglot's images_evaluation), which the shipped models never saw. A class here
is a character as drawn, upright: the training's rotated copies would be puzzles for a person, not for the
model.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .adaptation import adapt_and_classify, adaptation_settings, ways_of
from .omniglot import Omniglot, split_characters
from .tasks import alphabet_pools

SPLIT = "lake"  # the shipped models' split: their test characters are the 20 evaluation alphabets
MODEL_FILES = {5: "maml-conv-5way.safetensors", 20: "maml-conv-20way.safetensors"}  # in checkpoints/, by ways
WAYS = tuple(MODEL_FILES)  # the levels: 5-way, then the harder 20-way
QUERIES = 5  # per task; see draw_task


@dataclass(frozen=True)
class Level:
    ways: int
    one_alphabet: bool  # all N characters from one alphabet: they look alike, much harder for both

    @property
    def label(self) -> str:
        return f"{self.ways}-way" + (", one alphabet" if self.one_alphabet else "")


@dataclass(frozen=True)
class Task:
    level: Level
    seed: int
    number: int  # task 1, 2, ... of the seed
    support: torch.Tensor  # [ways, 28, 28]: one drawing of each class, class c in row c
    queries: torch.Tensor  # [QUERIES, 28, 28]: new drawings of the classes, other than the support's
    truth: list  # the class of each query
    names: list  # each class' character, "Alphabet / characterNN"


@dataclass
class Score:
    """Right answers of the student and of the model, on the same queries."""
    queries: int = 0
    student: int = 0
    model: int = 0

    def add(self, student: list, model: list, truth: list) -> None:
        self.queries += len(truth)
        self.student += sum(s == t for s, t in zip(student, truth))
        self.model += sum(m == t for m, t in zip(model, truth))


def unseen_characters(data: Omniglot) -> Omniglot:
    """The characters tasks are drawn from, the test set of SPLIT, as an Omniglot of their own: 41 MB of
    drawings for the page to keep, rather than all 102."""
    chosen = split_characters(data, SPLIT)["test"]
    return Omniglot(ink=data.ink[chosen], characters=[data.characters[c] for c in chosen])


def task_seed(level: Level, seed: int, number: int) -> int:
    """The random seed of task `number` of `seed` at `level`: the same on every machine, unrelated between
    neighbouring numbers and between levels."""
    key = f"{seed}/{number}/{level.ways}/{int(level.one_alphabet)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1  # manual_seed takes 63 bits


def draw_task(data: Omniglot, level: Level, seed: int, number: int) -> Task:
    """Task `number` of `seed`: `level.ways` distinct characters of `data`, all of one alphabet if
    `level.one_alphabet`, one support drawing each, and QUERIES query drawings.

    Each query's class is drawn at random, independently (two queries may share a class, some class may
    have none), so that a student cannot answer the last query by elimination: the model answers each query
    alone (batch norm uses the support set's statistics), and so should the student. Five queries keep a task
    to about half a minute, so that a lesson's few minutes of play give dozens of answers per student.
    """
    generator = torch.Generator().manual_seed(task_seed(level, seed, number))
    pool = list(range(len(data.characters)))
    if level.one_alphabet:
        alphabets = alphabet_pools([data.alphabet(c) for c in pool], level.ways)
        pool = alphabets[int(torch.randint(len(alphabets), (), generator=generator))]
    if level.ways > len(pool):
        raise ValueError(f"{level.ways} ways need {level.ways} characters; there are {len(pool)}.")
    characters = torch.tensor(pool)[torch.randperm(len(pool), generator=generator)[:level.ways]]
    drawings = torch.stack([torch.randperm(data.ink.shape[1], generator=generator) for _ in characters])
    truth = torch.randint(level.ways, (QUERIES,), generator=generator)
    uses = [int((truth[:q] == truth[q]).sum()) for q in range(QUERIES)]  # earlier queries of the same class
    queries = [data.ink[characters[c], drawings[c, 1 + used]] for c, used in zip(truth, uses)]
    names = [f"{data.alphabet(c).replace('_', ' ')} / {data.characters[c].split('/')[-1]}" for c in characters]
    return Task(level, seed, number, support=data.ink[characters, drawings[:, 0]], queries=torch.stack(queries),
                truth=truth.tolist(), names=names)


def model_path(checkpoints_dir: Path, ways: int) -> Path:
    return Path(checkpoints_dir) / MODEL_FILES[ways]


def model_answers(model, metadata: dict, task: Task) -> tuple[list, list]:
    """The model's class for each query, and its probability, after adapting to the task's support set
    as the Draw page does: the checkpoint's inner learning rate and test-time steps."""
    ways = len(task.support)
    if ways_of(model) != ways:
        raise ValueError(f"This model tells {ways_of(model)} classes apart; the task has {ways}.")
    settings = adaptation_settings(metadata)
    adaptation = adapt_and_classify(model, task.support[:, None], torch.arange(ways), settings["inner_lr"],
                                    settings["steps"], task.queries[:, None])
    confidence, answers = adaptation.after.max(-1)
    return answers.tolist(), confidence.tolist()
