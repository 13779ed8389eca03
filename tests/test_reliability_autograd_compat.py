"""A fastdw model where PyTorch's tools and edge cases meet it: an empty batch, against
torchvision's MobileNetV2 holding the same weights, run in float64."""

import pytest
import torch
import torchvision

import fastdw.models


@pytest.fixture
def pair(randomize_bn):
    """(fastdw mobilenet_v2, torchvision mobilenet_v2 with the same weights, in float64)."""
    ours = randomize_bn(fastdw.models.mobilenet_v2())
    stock = torchvision.models.mobilenet_v2()
    stock.load_state_dict(ours.state_dict())
    return ours, stock.double()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_empty_batch_gives_empty_logits_and_gradients(pair, mode):
    ours, stock = (getattr(m, mode)() for m in pair)
    x = torch.randn(0, 3, 64, 64)
    with torch.no_grad():  # eval: the eval program's route
        assert ours(x).shape == (0, 1000)
    x_ours, x_stock = x.clone().requires_grad_(), x.double().requires_grad_()
    out, ref = ours(x_ours), stock(x_stock)
    assert out.shape == ref.shape == (0, 1000)
    out.sum().backward()
    ref.sum().backward()
    assert x_ours.grad.shape == x.shape
    for (name, p), q in zip(ours.named_parameters(), stock.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad.float(), rtol=0, atol=0, msg=name)
