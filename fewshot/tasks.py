"""N-way K-shot tasks, sampled as whole meta-batches of tensors.

A class is a (character, rotation) pair: each character rotated by 0, 90, 180 or 270 degrees is a class of
its own, as in the MAML paper. The rotation is drawn for each class of a task independently.

Tasks within one alphabet (`alphabets` given) draw all their classes from one alphabet, whose characters look
alike: Lake et al.'s one-shot benchmark, harder than classes of characters drawn from every alphabet.
"""

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

AFFINE_SHIFT, AFFINE_SCALE, AFFINE_DEGREES = 2 / 28, 0.1, 10  # shift as a fraction of the image; scale +-; degrees +-


@dataclass
class TaskBatch:
    """A meta-batch of tasks. Labels run 0..ways-1 in each task; shapes are [tasks, examples, ...]."""

    support_x: torch.Tensor  # [tasks, ways * shots, 1, 28, 28]
    support_y: torch.Tensor  # [tasks, ways * shots]
    query_x: torch.Tensor  # [tasks, ways * queries, 1, 28, 28]
    query_y: torch.Tensor  # [tasks, ways * queries]

    def to(self, dtype=None, device=None) -> "TaskBatch":
        return TaskBatch(self.support_x.to(device=device, dtype=dtype), self.support_y.to(device),
                         self.query_x.to(device=device, dtype=dtype), self.query_y.to(device))

    def task(self, i: int) -> "TaskBatch":
        """Task i alone, as a batch of one."""
        return self.tasks(i, i + 1)

    def tasks(self, start: int, stop: int) -> "TaskBatch":
        """Tasks start to stop - 1."""
        return TaskBatch(self.support_x[start:stop], self.support_y[start:stop],
                         self.query_x[start:stop], self.query_y[start:stop])

    def groups(self, size: int) -> list["TaskBatch"]:
        """The tasks in groups of `size` (the last one may be smaller), in order; size 0: all in one group."""
        size = size or len(self)
        return [self.tasks(start, start + size) for start in range(0, len(self), size)]

    def __len__(self) -> int:
        return len(self.support_x)


class TaskSampler:
    """Draws tasks from a set of characters; the same seed always gives the same tasks."""

    def __init__(self, ink: torch.Tensor, characters: list, ways: int, shots: int, queries: int,
                 rotations: bool = True, augment: str = "none", alphabets: list | None = None):
        """`ink` holds all drawings, [characters, drawings, 28, 28]; `characters` are the rows to use.

        `augment="affine"` shifts, scales and rotates every drawing a little, at random, each time it is drawn.
        `alphabets`, the alphabet of each of `characters`, makes every task's classes those of one alphabet.
        """
        self.ink, self.characters = ink, torch.as_tensor(characters)
        self.ways, self.shots, self.queries, self.augment = ways, shots, queries, augment
        self.rotations = 4 if rotations else 1
        if alphabets is None:
            if ways > len(characters) * self.rotations:
                raise ValueError(f"{ways} ways need at least {ways} classes; this split has "
                                 f"{len(characters) * self.rotations}")
            self.pools = [list(range(len(characters)))]  # the positions in `characters` a task draws from
        else:
            self.pools = alphabet_pools(alphabets, ways, self.rotations)

    def sample(self, tasks: int, seed: int) -> TaskBatch:
        """`tasks` tasks drawn from `seed`. Within one alphabet, task i takes alphabet (seed + i) mod A of the A
        pools: evaluation.py draws its chunks of tasks from seeds seed, seed + 100, ..., so that task k of an
        evaluation takes alphabet (seed + k) mod A, and the alphabets take turns over its tasks."""
        generator = torch.Generator().manual_seed(seed)
        support, query = [], []
        for task in range(tasks):
            pool = self.pools[(seed + task) % len(self.pools)]
            classes = torch.randperm(len(pool) * self.rotations, generator=generator)[:self.ways]
            drawings = [self._drawings(pool[c // self.rotations], c % self.rotations, generator)
                        for c in classes.tolist()]  # each [shots + queries, 28, 28]
            support.append(torch.stack([d[:self.shots] for d in drawings]))
            query.append(torch.stack([d[self.shots:] for d in drawings]))
        support_x, query_x = torch.stack(support), torch.stack(query)  # [tasks, ways, examples, 28, 28]
        return TaskBatch(support_x.flatten(1, 2).unsqueeze(2), self._labels(tasks, self.shots),
                         query_x.flatten(1, 2).unsqueeze(2), self._labels(tasks, self.queries))

    def _drawings(self, character: int, quarter_turns: int, generator: torch.Generator) -> torch.Tensor:
        """Shots + queries distinct drawings of `characters[character]`, turned by `quarter_turns`."""
        chosen = torch.randperm(self.ink.shape[1], generator=generator)[:self.shots + self.queries]
        images = torch.rot90(self.ink[self.characters[character], chosen], quarter_turns, dims=(-2, -1))
        return random_affine(images, generator) if self.augment == "affine" else images

    def _labels(self, tasks: int, per_class: int) -> torch.Tensor:
        return torch.arange(self.ways).repeat_interleave(per_class).expand(tasks, -1).contiguous()


def alphabet_pools(alphabets: list, ways: int, rotations: int = 1) -> list[list[int]]:
    """The positions of each alphabet's characters in `alphabets` (the alphabet of each character), alphabet by
    alphabet in the order of their names, for the alphabets with `ways` classes or more (`rotations` classes
    per character): those from which an N-way task within one alphabet can be drawn."""
    positions = {}
    for position, alphabet in enumerate(alphabets):
        positions.setdefault(alphabet, []).append(position)
    pools = [positions[alphabet] for alphabet in sorted(positions) if len(positions[alphabet]) * rotations >= ways]
    if not pools:
        largest = max(sorted(positions), key=lambda alphabet: len(positions[alphabet]))
        raise ValueError(f"{ways} ways within one alphabet need {ways} classes from one alphabet; the largest "
                         f"here, {largest}, has {len(positions[largest]) * rotations}")
    return pools


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each of `images` [n, 28, 28] shifted, scaled and rotated a little, by its own random amounts."""
    def uniform() -> torch.Tensor:  # one draw in [-1, 1] per image
        return 2 * torch.rand(len(images), generator=generator) - 1

    angle, scale = uniform() * math.radians(AFFINE_DEGREES), 1 + uniform() * AFFINE_SCALE
    shift_x, shift_y = uniform() * 2 * AFFINE_SHIFT, uniform() * 2 * AFFINE_SHIFT  # grid coordinates span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, [len(images), 1, 28, 28], align_corners=False)
    return F.grid_sample(images.unsqueeze(1), grid, align_corners=False).squeeze(1)
