"""N-way K-shot tasks, sampled as whole meta-batches of tensors.

A class is a (character, rotation) pair: each character rotated by 0, 90, 180 or 270 degrees is a class of
its own, as in the MAML paper. The rotation is drawn for each class of a task independently.
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
        return TaskBatch(self.support_x[i:i + 1], self.support_y[i:i + 1],
                         self.query_x[i:i + 1], self.query_y[i:i + 1])

    def __len__(self) -> int:
        return len(self.support_x)


class TaskSampler:
    """Draws tasks from a set of characters; the same seed always gives the same tasks."""

    def __init__(self, ink: torch.Tensor, characters: list, ways: int, shots: int, queries: int,
                 rotations: bool = True, augment: str = "none"):
        """`ink` holds all drawings, [characters, drawings, 28, 28]; `characters` are the rows to use.

        `augment="affine"` shifts, scales and rotates every drawing a little, at random, each time it is drawn.
        """
        self.ink, self.characters = ink, torch.as_tensor(characters)
        self.ways, self.shots, self.queries, self.augment = ways, shots, queries, augment
        self.rotations = 4 if rotations else 1
        if ways > len(characters) * self.rotations:
            raise ValueError(f"{ways} ways need at least {ways} classes; this split has "
                             f"{len(characters) * self.rotations}")

    def sample(self, tasks: int, seed: int) -> TaskBatch:
        generator = torch.Generator().manual_seed(seed)
        support, query = [], []
        for _ in range(tasks):
            classes = torch.randperm(len(self.characters) * self.rotations, generator=generator)[:self.ways]
            drawings = [self._drawings(c, generator) for c in classes.tolist()]  # each [shots + queries, 28, 28]
            support.append(torch.stack([d[:self.shots] for d in drawings]))
            query.append(torch.stack([d[self.shots:] for d in drawings]))
        support_x, query_x = torch.stack(support), torch.stack(query)  # [tasks, ways, examples, 28, 28]
        return TaskBatch(support_x.flatten(1, 2).unsqueeze(2), self._labels(tasks, self.shots),
                         query_x.flatten(1, 2).unsqueeze(2), self._labels(tasks, self.queries))

    def _drawings(self, class_index: int, generator: torch.Generator) -> torch.Tensor:
        character, quarter_turns = divmod(class_index, self.rotations)
        chosen = torch.randperm(self.ink.shape[1], generator=generator)[:self.shots + self.queries]
        images = torch.rot90(self.ink[self.characters[character], chosen], quarter_turns, dims=(-2, -1))
        return random_affine(images, generator) if self.augment == "affine" else images

    def _labels(self, tasks: int, per_class: int) -> torch.Tensor:
        return torch.arange(self.ways).repeat_interleave(per_class).expand(tasks, -1).contiguous()


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
