"""The ops under torch.autocast: x and the conv weights run in the autocast dtype, as torch runs a
convolution there (per-channel vectors stay float32, float64 is left alone); so fastdw modules
and models work under autocast, forward and backward, like torchvision's."""
import copy

import pytest
import torch
import torchvision

import fastdw.models
from fastdw import ops
from numerics import rel_err

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def op_calls():
    """(op, args, kwargs) of each public op on float32 tensors."""
    x = torch.randn(2, 16, 9, 8)
    yield ops.dwconv_bn_act, (x, torch.randn(16, 1, 3, 3), torch.rand(16) + 0.5,
                              torch.randn(16)), {"stride": 2}
    yield ops.pwconv_bn_act, (x, torch.randn(24, 16), torch.rand(24) + 0.5, torch.randn(24)), {
        "act": "relu", "residual": torch.randn(2, 24, 9, 8)}
    yield ops.inverted_residual, (x, torch.randn(48, 16) / 4, None, None,
                                  torch.randn(48, 1, 3, 3) / 3, None, None,
                                  torch.randn(16, 48) / 7, None, None), {
        "act": "hardswish", "se_w1": torch.randn(12, 48) / 7, "se_b1": torch.randn(12),
        "se_w2": torch.randn(48, 12) / 4, "se_b2": torch.randn(48)}


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("index", range(3))
def test_ops_run_in_the_autocast_dtype(index, dtype):
    op, args, kwargs = list(op_calls())[index]
    with torch.autocast("cpu", dtype=dtype):
        out = op(*args, **kwargs)
    # exactly the op on inputs cast by hand: float32 per-channel vectors are not cast
    cast = [t.to(dtype) if isinstance(t, torch.Tensor) and t.dim() != 1 else t for t in args]
    cast_kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.dim() != 1 else v
                   for k, v in kwargs.items()}
    assert out.dtype == dtype
    torch.testing.assert_close(out, op(*cast, **cast_kwargs), rtol=0, atol=0)
    float64 = [t.double() if isinstance(t, torch.Tensor) else t for t in args]
    with torch.autocast("cpu", dtype=dtype):  # float64 is not autocast's business
        assert op(*float64, **{k: v.double() if isinstance(v, torch.Tensor) else v
                               for k, v in kwargs.items()}).dtype == torch.float64
        with pytest.raises(TypeError, match="float32 but x has torch.float64"):
            op(float64[0], *args[1:], **kwargs)  # the error names the dtypes passed


@pytest.mark.parametrize("index", range(3))
def test_gradients_under_autocast_are_those_of_the_cast_inputs(index):
    op, args, kwargs = list(op_calls())[index]

    def grads(autocast):
        leaves = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t
                  for t in args]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            inputs = leaves if autocast else [
                t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and t.dim() != 1 else t
                for t in leaves]
            out = op(*inputs, **{k: v.to(torch.bfloat16)
                                 if not autocast and isinstance(v, torch.Tensor)
                                 and v.dim() != 1 else v for k, v in kwargs.items()})
        torch.manual_seed(1)
        out.float().mul(torch.randn(out.shape)).sum().backward()
        return [t.grad for t in leaves if isinstance(t, torch.Tensor)]

    for under_autocast, by_hand in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(under_autocast, by_hand, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_models_under_autocast_match_torchvision(name, randomize_bn):
    tv = randomize_bn(getattr(torchvision.models, name)(num_classes=10)).eval()
    model = getattr(fastdw.models, name)(num_classes=10).eval()
    model.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, stock = model(x), tv(x)
    assert out.dtype == stock.dtype == torch.bfloat16
    # bfloat16 through the network: as far from float64 as torchvision's own autocast run,
    # within a factor 2 (both are ~1e-2 off)
    assert rel_err(out, ref) < 2 * rel_err(stock, ref)


def test_fused_modules_under_autocast_take_the_ops_path(randomize_bn):
    block = randomize_bn(fastdw.nn.InvertedResidual(16, 16, 1, 6)).eval()
    linear = fastdw.nn.Linear(16, 8)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        block(x), block(x)  # the second call would take the direct C++ path without autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
            z = linear(x.mean((2, 3)))
    assert y.dtype == torch.bfloat16 and z.dtype == torch.bfloat16


def test_training_under_autocast(randomize_bn):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 3, 32, 32))
    out.float().square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
