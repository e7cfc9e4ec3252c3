"""The original notebook's meta-training loop, with learn2learn: clone the model and adapt it, task by task.

Selected with `--engine learn2learn`. It computes the same meta-gradient as `maml.meta_backward` (a test
checks this), one task at a time instead of all tasks at once.
"""

import learn2learn as l2l
import torch
from torch.nn import functional as F

from .tasks import TaskBatch


def notebook_model(ways: int, channels: int, blocks: int) -> torch.nn.Module:
    """The notebook's network: learn2learn's OmniglotCNN, strided convs with torch's own BatchNorm."""
    return l2l.vision.models.OmniglotCNN(output_size=ways, hidden_size=channels, layers=blocks)


def logits_with_support_statistics(learner, support_x, query_x):
    """This library's models: the queries are normalised by the support set's batch-norm statistics."""
    return learner(torch.cat([support_x, query_x]), len(support_x))[len(support_x):]


def logits_with_own_statistics(learner, support_x, query_x):
    """The notebook's OmniglotCNN: torch's BatchNorm in training mode normalises the queries by their own batch."""
    return learner(query_x)


def meta_backward(model, batch: TaskBatch, inner_lr: float, steps: int, first_order: bool,
                  query_logits=logits_with_support_statistics):
    """Accumulates the task-averaged meta-gradient into .grad; returns mean query loss and accuracy."""
    maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)
    total_loss, total_accuracy = 0.0, 0.0
    for i in range(len(batch)):
        support_x, support_y = batch.support_x[i], batch.support_y[i]
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(support_x), support_y))
        logits = query_logits(learner, support_x, batch.query_x[i])
        query_loss = F.cross_entropy(logits, batch.query_y[i]) / len(batch)
        query_loss.backward()
        total_loss += query_loss.item()
        total_accuracy += (logits.argmax(-1) == batch.query_y[i]).float().mean().item() / len(batch)
    return total_loss, total_accuracy
