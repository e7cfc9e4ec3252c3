"""The two backbones of the original notebook, with a batch norm that normalises by the task's own data.

Every forward takes `n_stats`: batch norm computes its mean and variance over the first `n_stats` rows of
the batch only, and normalises all rows with them. MAML (Finn et al., 2017) normalises with the statistics
of the task's own batch at meta-training and test time alike, never with running averages; here that
batch is the task's support set. To classify queries we run support and queries through the network
together, with `n_stats = len(support)`, so the queries are normalised with the support's statistics: a
query's prediction never depends on the other queries, and a single drawing can be classified on its own
(with transductive batch norm a batch of one would be normalised by itself).

Every forward also takes `step`, the inner step the network is at (from 0). Only MAML++'s per-step batch norm
(`norm_steps`) uses it; the plain network is the same at every step.
"""

import torch
from torch import nn
from torch.nn import functional as F


class TaskBatchNorm(nn.Module):
    """Batch norm over the first `n_stats` rows (all rows when None); no running statistics.

    Its scale (weight, gamma) and shift (bias, beta) are one number per feature; with `steps`, MAML++'s per-step
    batch norm (Antoniou et al., 2019, "BNWB"), one row of them per inner step, [steps, features]: the network at
    inner step `step` scales and shifts with row `step`, and test-time steps beyond the learned ones with the last
    row. (MAML++ keeps running statistics per step too; this batch norm has none to keep: it always normalises
    with the task's own support set.)
    """

    def __init__(self, features: int, eps: float = 1e-5, steps: int | None = None):
        super().__init__()
        self.eps, self.steps = eps, steps
        shape = (features,) if steps is None else (steps, features)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor, n_stats: int | None = None, step: int = 0) -> torch.Tensor:
        rows = slice(n_stats)  # the rows whose statistics are used: all when n_stats is None
        dims = [0] + list(range(2, x.dim()))  # all but the feature dimension
        mean = x[rows].mean(dims, keepdim=True)
        centred = x - mean
        var = centred[rows].square().mean(dims, keepdim=True)  # on the CPU many times faster than var_mean
        weight, bias = self.weight, self.bias
        if self.steps is not None:  # per-step batch norm: this step's scale and shift
            weight, bias = weight[min(step, self.steps - 1)], bias[min(step, self.steps - 1)]
        shape = [1, -1] + [1] * (x.dim() - 2)
        return centred * (torch.rsqrt(var + self.eps) * weight.view(shape)) + bias.view(shape)


class Block(nn.Module):
    """layer -> batch norm -> ReLU."""

    def __init__(self, layer: nn.Module, features: int, norm_steps: int | None = None):
        super().__init__()
        self.layer, self.norm = layer, TaskBatchNorm(features, steps=norm_steps)

    def forward(self, x, n_stats=None, step=0):
        return F.relu(self.norm(self.layer(x), n_stats, step))


class ConvNet(nn.Module):
    """learn2learn's OmniglotCNN: blocks of 3x3 stride-2 convs, then a mean over space and a linear layer.

    The MAML paper's Omniglot net is 4 blocks of 64 channels (28 -> 14 -> 7 -> 4 -> 2 pixels).
    """

    def __init__(self, ways: int, channels: int = 64, blocks: int = 4, norm_steps: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=2, padding=1), channels, norm_steps)
            for i in range(blocks))
        self.classifier = nn.Linear(channels, ways)
        _initialise(self)

    def forward(self, x: torch.Tensor, n_stats: int | None = None, step: int = 0) -> torch.Tensor:
        x = x.view(-1, 1, 28, 28)
        for block in self.blocks:
            x = block(x, n_stats, step)
        return self.classifier(x.mean(dim=(2, 3)))


class FCNet(nn.Module):
    """learn2learn's OmniglotFC: 784-256-128-64-64 fully connected layers with batch norm."""

    SIZES = (256, 128, 64, 64)

    def __init__(self, ways: int, norm_steps: int | None = None):
        super().__init__()
        sizes = (28 * 28,) + self.SIZES
        self.blocks = nn.ModuleList(Block(nn.Linear(a, b), b, norm_steps) for a, b in zip(sizes, sizes[1:]))
        self.classifier = nn.Linear(sizes[-1], ways)
        _initialise(self)

    def forward(self, x: torch.Tensor, n_stats: int | None = None, step: int = 0) -> torch.Tensor:
        x = x.reshape(-1, 28 * 28)
        for block in self.blocks:
            x = block(x, n_stats, step)
        return self.classifier(x)


def _initialise(model: nn.Module) -> None:
    """Xavier-uniform weights and zero biases, as in the MAML reference code."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(backbone: str, ways: int, channels: int = 64, blocks: int = 4,
                norm_steps: int | None = None) -> nn.Module:
    """The network; with `norm_steps`, its batch norms have a scale and shift per inner step (TaskBatchNorm)."""
    if backbone == "conv":
        return ConvNet(ways, channels, blocks, norm_steps)
    if backbone == "fc":
        return FCNet(ways, norm_steps)
    raise ValueError(f"unknown backbone {backbone!r}; choose conv or fc")
