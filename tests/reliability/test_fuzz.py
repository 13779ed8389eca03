"""Fuzzing the three ops against stock PyTorch in float64 (hypothesis): shapes, batch sizes
(0 included), kernel sizes, strides, dilations, activations, residuals, squeeze-excite and input
memory layouts drawn at random, on every CPU-testable backend. The number of examples is fixed
(no time-based deadline), so a CI run takes a bounded time; Triton's interpreter gets fewer."""
import pytest
import torch
import torch.nn.functional as F

import fastdw
from numerics import assert_close

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (the test extras)")
st = hypothesis.strategies

ACTS = ["none", "relu", "relu6", "hardswish", "hardsigmoid", "silu"]
STOCK_ACTS = {"none": lambda y: y, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
              "hardsigmoid": F.hardsigmoid, "silu": F.silu}
EXAMPLES = {"triton": 20}  # per backend; others: 150


def settings(backend_name):
    return hypothesis.settings(max_examples=EXAMPLES.get(backend_name, 150), deadline=None,
                               derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))


def feature_map(data, n, c, h, w):
    """A random (n, c, h, w) float32 tensor in a drawn memory layout."""
    layout = data.draw(st.sampled_from(["contiguous", "channels_last", "sliced"]), label="layout")
    if layout == "sliced":  # every other column of a wider tensor: no dense layout at all
        return torch.randn(n, c, h, 2 * w)[..., ::2]
    x = torch.randn(n, c, h, w)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def affine(y, scale, shift):
    return y * scale.double()[:, None, None] + shift.double()[:, None, None]


def dims(data):
    return (data.draw(st.sampled_from([1, 2, 3, 0]), label="N"),  # an empty batch now and then
            data.draw(st.integers(1, 40), label="C"),
            data.draw(st.integers(1, 12), label="H"), data.draw(st.integers(1, 12), label="W"))


@pytest.mark.parametrize("op", ["dwconv_bn_act", "pwconv_bn_act", "inverted_residual"])
def test_fuzz_against_stock_float64(op, backend_name):
    @settings(backend_name)
    @hypothesis.given(data=st.data())
    def run(data):
        torch.manual_seed(data.draw(st.integers(0, 2 ** 31 - 1), label="seed"))  # replayable
        {"dwconv_bn_act": dw, "pwconv_bn_act": pw, "inverted_residual": ir}[op](data,
                                                                                 backend_name)
    run()


def dw(data, backend_name):
    n, c, h, w = dims(data)
    k = data.draw(st.sampled_from([1, 3, 5, 7]), label="k")
    stride, dilation = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    padding = dilation * (k - 1) // 2
    hypothesis.assume(min(h, w) + 2 * padding >= dilation * (k - 1) + 1)
    act = data.draw(st.sampled_from(ACTS), label="act")
    x = feature_map(data, n, c, h, w)
    weight, scale, shift = torch.randn(c, 1, k, k), torch.rand(c) + 0.5, torch.randn(c)
    out = fastdw.ops.dwconv_bn_act(x, weight, scale, shift, stride=stride, padding=padding,
                                   dilation=dilation, act=act, backend=backend_name)
    ref = STOCK_ACTS[act](affine(F.conv2d(x.double(), weight.double(), None, stride, padding,
                                          dilation, c), scale, shift))
    check(out, ref)


def pw(data, backend_name):
    n, c, h, w = dims(data)
    c_out = data.draw(st.integers(1, 40), label="C_out")
    act = data.draw(st.sampled_from(ACTS), label="act")
    x = feature_map(data, n, c, h, w)
    weight, scale, shift = torch.randn(c_out, c), torch.rand(c_out) + 0.5, torch.randn(c_out)
    residual = torch.randn(n, c_out, h, w) if data.draw(st.booleans(), label="res") else None
    out = fastdw.ops.pwconv_bn_act(x, weight, scale, shift, act=act, residual=residual,
                                   backend=backend_name)
    ref = STOCK_ACTS[act](affine(F.conv2d(x.double(), weight.double()[:, :, None, None]), scale,
                                 shift))
    check(out, ref if residual is None else ref + residual.double())


def ir(data, backend_name):
    n, c, h, w = dims(data)
    hidden = data.draw(st.integers(1, 48), label="hidden")
    expand = data.draw(st.booleans(), label="expand")
    if not expand:
        hidden = c
    k = data.draw(st.sampled_from([3, 5]), label="k")
    stride = data.draw(st.integers(1, 2), label="stride")
    c_out = data.draw(st.sampled_from([c, data.draw(st.integers(1, 40))]), label="C_out")
    act = data.draw(st.sampled_from(["relu", "relu6", "hardswish"]), label="act")
    se = data.draw(st.booleans(), label="se")
    residual = stride == 1 and c_out == c and data.draw(st.booleans(), label="residual")
    x = feature_map(data, n, c, h, w)

    def vectors(m):
        return torch.rand(m) + 0.5, torch.randn(m)
    ew = torch.randn(hidden, c) / c ** 0.5 if expand else None
    es, eb = vectors(hidden) if expand else (None, None)
    dww, (ds, db) = torch.randn(hidden, 1, k, k) / k, vectors(hidden)
    pw_, (ps, pb) = torch.randn(c_out, hidden) / hidden ** 0.5, vectors(c_out)
    squeeze = max(1, hidden // 4)
    se_args = (dict(se_w1=torch.randn(squeeze, hidden), se_b1=torch.randn(squeeze),
                    se_w2=torch.randn(hidden, squeeze), se_b2=torch.randn(hidden))
               if se else {})
    out = fastdw.ops.inverted_residual(x, ew, es, eb, dww, ds, db, pw_, ps, pb, stride=stride,
                                       act=act, residual=residual, backend=backend_name,
                                       **se_args)
    f = STOCK_ACTS[act]
    y = x.double()
    if expand:
        y = f(affine(F.conv2d(y, ew.double()[:, :, None, None]), es, eb))
    y = f(affine(F.conv2d(y, dww.double(), None, stride, k // 2, 1, hidden), ds, db))
    if se:
        s = {name: t.double() for name, t in se_args.items()}
        pooled = y.mean((2, 3))
        gate = F.hardsigmoid(F.relu(pooled @ s["se_w1"].T + s["se_b1"]) @ s["se_w2"].T
                             + s["se_b2"])
        y = y * gate[:, :, None, None]
    y = affine(F.conv2d(y, pw_.double()[:, :, None, None]), ps, pb)
    check(out, y + x.double() if residual else y)


def check(out, ref):
    assert out.shape == ref.shape and out.dtype is torch.float32
    if ref.count_nonzero():
        assert_close(out, ref, torch.float32)
    else:  # an activation zeroed everything (a relative error is undefined): exact zeros
        assert not out.count_nonzero()
