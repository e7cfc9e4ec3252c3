"""How far first-order MAML's meta-gradient is from MAML's, measured on the meta-batch a MAML run trains on.

With one inner step, theta'_i = theta - alpha * grad L_Ti(theta) on task i's support set, and the chain rule
gives MAML's meta-gradient (Finn et al., 2017, Eq. 2, averaged over the meta-batch):

    g2 = mean_i (I - alpha * H_i) grad L_Ti(theta'_i)        H_i: the Hessian of task i's support loss at theta
    g1 = mean_i grad L_Ti(theta'_i)                          first-order MAML: the Hessian dropped

(with more inner steps, one such factor per step). The dropped second-order term is g2 - g1
= -alpha * mean_i H_i grad L_Ti(theta'_i). The probe compares the two vectors, over all weights and layer by
layer: their cosine (1: first order points where MAML points), |g1| / |g2| (1: as long a step), and
|g2 - g1|, beside |g2| for scale.
"""

import torch

from . import maml
from .tasks import TaskBatch


def meta_gradient(model, batch: TaskBatch, inner_lr: float, steps: int, first_order: bool,
                  tasks_at_once: int = 0) -> dict:
    """Eq. 2's grad_theta, averaged over tasks, as {parameter name: tensor}, summed over groups of `tasks_at_once`
    tasks (0: all at once) as maml.meta_backward sums it; the .grad of the weights is left as it was."""
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for group in batch.groups(tasks_at_once):
        losses, _ = maml.task_losses(model, group, inner_lr, steps, first_order)
        for name, gradient in zip(params, torch.autograd.grad(losses.sum() / len(batch), list(params.values()))):
            total[name] += gradient
    return total


def first_versus_second_order(model, batch: TaskBatch, inner_lr: float, steps: int, tasks_at_once: int = 0) -> dict:
    """Compares g1 with g2 on `batch`, right after maml.meta_backward(model, batch, ..., first_order=False).

    g2 is read from the weights' .grad, where that call left it: exactly the meta-gradient of the update to
    come. g1 is computed here, on the same tasks, `tasks_at_once` at a time; .grad is not touched.
    """
    second = {name: p.grad for name, p in model.named_parameters()}
    first = meta_gradient(model, batch, inner_lr, steps, True, tasks_at_once)
    return compare(first, second)


def compare(first: dict, second: dict) -> dict:
    """The numbers of compare_vectors over all weights, and under "layers" for each layer's weights."""
    layers = {}
    for name in second:
        layers.setdefault(layer_of(name), []).append(name)
    everything = list(second)
    overall = compare_vectors(_joined(first, everything), _joined(second, everything))
    return {**overall, "layers": {layer: compare_vectors(_joined(first, names), _joined(second, names))
                                  for layer, names in layers.items()}}


def compare_vectors(g1: torch.Tensor, g2: torch.Tensor) -> dict:
    """cosine(g1, g2), |g1| / |g2|, the dropped term's norm |g2 - g1|, and |g2|, as floats."""
    g1_norm, g2_norm = g1.norm(), g2.norm()
    return {"cosine": (g1 @ g2 / (g1_norm * g2_norm)).item(), "norm_ratio": (g1_norm / g2_norm).item(),
            "dropped_norm": (g2 - g1).norm().item(), "g2_norm": g2_norm.item()}


def layer_of(name: str) -> str:
    """The layer a parameter belongs to, as a student reads it: 'blocks.0.norm.weight' -> 'block 1' (a block's
    layer and its batch norm together), 'classifier.bias' -> 'classifier'."""
    parts = name.split(".")
    return f"block {int(parts[1]) + 1}" if parts[0] == "blocks" else parts[0]


def _joined(gradients: dict, names) -> torch.Tensor:
    """The gradients of parameters `names`, one flat float64 vector (float32 sums of squares lose digits)."""
    return torch.cat([gradients[name].flatten().double() for name in names])
