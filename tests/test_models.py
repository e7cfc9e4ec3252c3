import pytest
import torch

from fewshot.models import ConvNet, FCNet, TaskBatchNorm, build_model


@pytest.mark.parametrize("channels, blocks", [(64, 4), (128, 3), (8, 2)])
def test_conv_shapes(channels, blocks):
    model = build_model("conv", ways=5, channels=channels, blocks=blocks)
    assert isinstance(model, ConvNet) and len(model.blocks) == blocks
    assert model(torch.rand(7, 1, 28, 28)).shape == (7, 5)
    assert model.blocks[-1].layer.out_channels == channels


def test_fc_shapes():
    model = build_model("fc", ways=20)
    assert isinstance(model, FCNet)
    assert [b.layer.out_features for b in model.blocks] == [256, 128, 64, 64]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 20)


def test_paper_conv_size():
    """The MAML paper's Omniglot net: about 112 k parameters, ~0.45 MB in float32."""
    parameters = sum(p.numel() for p in build_model("conv", 5).parameters())
    assert 100_000 < parameters < 120_000


def test_batch_norm_uses_only_the_reference_rows():
    norm = TaskBatchNorm(3)
    support, queries = torch.randn(10, 3, 4, 4), torch.randn(6, 3, 4, 4) * 5 + 2
    together = norm(torch.cat([support, queries]), n_stats=10)
    assert torch.allclose(together[:10], norm(support), atol=1e-6)
    normalised = together[:10].transpose(0, 1).flatten(1)
    assert torch.allclose(normalised.mean(1), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize("backbone", ["conv", "fc"])
def test_a_query_alone_gets_the_same_logits_as_in_a_batch(backbone):
    """The drawing page classifies one drawing at a time: that must not change its prediction. In float64: in
    float32 a matrix product of 13 rows and one of 6 round differently, by up to 4e-4 in the fc net's logits."""
    model = build_model(backbone, 5).double()
    support, queries = torch.rand(5, 1, 28, 28, dtype=torch.float64), torch.rand(8, 1, 28, 28, dtype=torch.float64)
    batch_logits = model(torch.cat([support, queries]), n_stats=5)[5:]
    single_logits = model(torch.cat([support, queries[3:4]]), n_stats=5)[5:]
    assert torch.allclose(batch_logits[3:4], single_logits, rtol=0, atol=1e-10)
