"""Offsets past 2**31 elements within one image: the kernels compute them in int32 unless the
launcher picks their INT64 path, where an int32 offset would wrap around and read or write the
wrong memory (or crash).

Two checks that need no 8 GB tensor:
  * the kernels themselves, under the interpreter, on views whose rows lie 2**28 elements apart
    (rows 8 and 9 at 2**31 and more) over an anonymous mapping of ~4.3 GB that is never touched
    except at the few pages the view covers, against the float64 oracle; a launch that does not
    take the INT64 path fails before it runs (it would read out of bounds);
  * the launchers' choices on meta tensors of real sizes (kernels replaced by recorders): INT64
    for one image of 2**31 elements or more, of any tensor the kernel indexes, and not for a
    large batch of ordinary images; pw launches a batch of 2**31 pixels or more in groups and
    hands an image of that many pixels to reference.
"""
import importlib
import mmap
import os
import sys

import pytest
import torch

from numerics import assert_close

kernels = pytest.importorskip("fastdw.kernels.triton", reason="needs triton installed")
import op_oracle  # noqa: E402  (the op tests' float64 oracle; conftest.py puts it on sys.path)
from fastdw.kernels import reference  # noqa: E402
from ir_blocks import block_weights  # noqa: E402

# By module path: the package attributes of these names are the kernel functions.
dw, pw, ir = (importlib.import_module(f"fastdw.kernels.triton.{name}") for name in
              ("dwconv_bn_act", "pwconv_bn_act", "inverted_residual"))

ROW = 2**28  # elements between two rows of a far view
H = 10       # rows of a far view: rows 8 and 9 start at 2**31 and 9 * 2**28 elements
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)


def far_rows(n, c, w, dtype):
    """A random (n, c, H, w) tensor with its rows ROW elements apart (channels innermost, the
    images side by side in each row), over an untouched anonymous mapping."""
    count = (H - 1) * ROW + n * w * c
    try:
        memory = mmap.mmap(-1, count * dtype.itemsize,
                           flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    except OSError as error:
        pytest.skip(f"cannot map {count * dtype.itemsize / 2**30:.1f} GiB of address space: "
                    f"{error}")
    x = torch.frombuffer(memory, dtype=dtype).as_strided((n, c, H, w), (w * c, 1, ROW, c))
    x.copy_(torch.randn(n, c, H, w))
    assert pw.INT32_MAX < (H - 1) * ROW <= x.untyped_storage().nbytes() // dtype.itemsize
    return x


@pytest.fixture
def int64_launches(monkeypatch):
    """Every interpreted launch must take the INT64 path: one that does not raises before it
    runs. Returns the names of the kernels launched."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels under TRITON_INTERPRET=1")
    from triton.runtime.interpreter import InterpretedFunction
    names = []
    run = InterpretedFunction.run

    def checked(self, *args, **kwargs):
        assert kwargs.get("INT64") is True, f"{self.__name__} launched with int32 offsets"
        names.append(self.__name__)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", checked)
    return names


pytestmark = pytest.mark.usefixtures("poisoned")


def test_dwconv_forward_and_backward_past_int32_offsets(int64_launches):
    x = far_rows(2, 16, 12, torch.float16)
    weight, (scale, shift) = op_oracle.conv_weight((16, 1, 3, 3), torch.float16), \
        op_oracle.random_affine(16)
    conv = (1, 1, 1, "relu6")
    out = dw.forward(x, weight, scale, shift, *conv)
    leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    ref = op_oracle.dwconv_bn_act(*leaves, *conv)
    assert_close(out, ref, torch.float16)
    grad = far_rows(2, 16, 12, torch.float16)
    grads = dw.backward(grad, x, weight, scale, shift, *conv)
    for g, r in zip(grads, torch.autograd.grad(ref, leaves, grad.double())):
        assert_close(g, r, torch.float16)
    assert int64_launches == ["dw_forward_kernel", "dw_backward_params_kernel",
                              "dw_backward_input_kernel"]


def test_pwconv_past_int32_offsets(int64_launches):
    x, residual = far_rows(2, 24, 12, torch.float16), far_rows(2, 16, 12, torch.float16)
    weight, (scale, shift) = op_oracle.conv_weight((16, 24), torch.float16), \
        op_oracle.random_affine(16)
    out = pw.forward(x, weight, scale, shift, "hardswish", residual)
    ref = op_oracle.pwconv_bn_act(x, weight, scale, shift, "hardswish", residual)
    assert_close(out, ref, torch.float16)
    assert int64_launches == ["pw_kernel"]


@pytest.mark.parametrize("se", [False, True], ids=["fused", "split-se"])
def test_inverted_residual_past_int32_offsets(se, int64_launches):
    x = far_rows(2, 16, 12, torch.float16)
    weights, stages = block_weights(16, 32, 16, 3, torch.float16, se)
    out = ir.forward(x, weights, 1, "relu6", True, "relu", "hardsigmoid")
    ref = op_oracle.inverted_residual(x, *stages, 1, "relu6", True)
    assert_close(out, ref, torch.float16)
    assert int64_launches == (["ir_kernel", "pw_kernel"] if se else ["ir_kernel"])


class Recorder:
    """Stands in for a kernel: records the grid and arguments of each launch, runs nothing."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


@pytest.fixture
def recorded(monkeypatch):
    """Replaces every kernel by a Recorder; returns {kernel name: Recorder}."""
    found = {}
    for module in (dw, pw, ir):
        for name in ("dw_forward_kernel", "dw_backward_params_kernel",
                     "dw_backward_input_kernel", "pw_kernel", "ir_kernel"):
            if hasattr(module, name):
                found[name] = Recorder()
                monkeypatch.setattr(module, name, found[name])
    return found


def meta(*shape, channels_last=True):
    x = torch.empty(*shape, dtype=torch.float16, device="meta")
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def int64_flags(recorder):
    return [kwargs["INT64"] for _, _, kwargs in recorder.launches]


# (N, C, H, W, INT64): one image of 16 x 16384 x 8200 = 2.15e9 elements, and a batch of 2048
# ordinary images (96 x 112 x 112, 2.5e9 elements in all).
SHAPES = [((1, 16, 16384, 8200), True), ((2048, 96, 112, 112), False)]


@pytest.mark.parametrize("shape,int64", SHAPES, ids=["one-big-image", "big-batch"])
def test_dwconv_picks_int64_by_image_size(shape, int64, recorded):
    x = meta(*shape)
    c = shape[1]
    args = (torch.empty(c, 1, 3, 3, device="meta"), torch.empty(c, device="meta"),
            torch.empty(c, device="meta"), 1, 1, 1, "relu")
    y = dw.forward(x, *args)
    dw.backward(torch.empty_like(y), x, *args)
    assert [flag for name in ("dw_forward_kernel", "dw_backward_params_kernel",
                              "dw_backward_input_kernel")
            for flag in int64_flags(recorded[name])] == [int64] * 3


def test_dwconv_picks_int64_for_a_big_output_image_of_a_small_input(recorded):
    """Padding makes the output image larger than the input's: the output alone needs INT64."""
    x = meta(1, 16, 16380, 8190)  # 2.146e9 elements; padded by 3, the output has 2.149e9
    assert pw.INT32_MAX > 16 * 16380 * 8190 - 1 and 16 * 16386 * 8196 - 1 > pw.INT32_MAX
    c = 16
    dw.forward(x, torch.empty(c, 1, 1, 1, device="meta"), torch.empty(c, device="meta"),
               torch.empty(c, device="meta"), 1, 3, 1, "relu")
    assert int64_flags(recorded["dw_forward_kernel"]) == [True]


@pytest.mark.parametrize("shape,int64", SHAPES, ids=["one-big-image", "big-batch"])
def test_inverted_residual_picks_int64_by_image_size(shape, int64, recorded):
    c = shape[1]
    weights, _ = block_weights(c, 2 * c, c, 3, torch.float16, False)
    weights = type(weights)(*(t if t is None else t.to("meta") for t in weights))
    ir.forward(meta(*shape), weights, 1, "relu6", True, "relu", "hardsigmoid")
    assert set(int64_flags(recorded["ir_kernel"])) == {int64}


def pw_call(x, c_out, residual=False):
    c = x.shape[1]
    res = meta(x.shape[0], c_out, *x.shape[2:]) if residual else None
    return pw.forward(x, torch.empty(c_out, c, device="meta"), torch.empty(c_out, device="meta"),
                      torch.empty(c_out, device="meta"), "none", res)


def test_pwconv_picks_int64_for_any_big_image(recorded):
    pw_call(meta(1, 16, 16384, 8200), 16)  # the input's image
    pw_call(meta(1, 8, 16384, 8200), 32)   # only the output's image (4.3e9 elements)
    pw_call(meta(1, 8, 16384, 8200), 8, residual=True)  # neither (1.07e9 each)
    assert int64_flags(recorded["pw_kernel"]) == [True, True, False]


def test_pwconv_launches_a_batch_of_2_31_pixels_in_groups_of_images(recorded):
    n, h, w = 2**15, 256, 256  # N*H*W = 2**31 pixels, 16 channels: 2**20 elements an image
    pw_call(meta(n, 16, h, w), 24)
    launches = recorded["pw_kernel"].launches
    assert len(launches) == 2 and int64_flags(recorded["pw_kernel"]) == [False, False]
    images = [args[0].shape[0] for _, args, _ in launches]
    assert sum(images) == n
    for (grid, args, kwargs), count in zip(launches, images):
        pixels = args[7]  # M
        assert pixels == count * h * w
        assert grid[0] * kwargs["BLOCK_M"] - 1 <= pw.INT32_MAX  # the last pixel index fits


def test_pwconv_image_of_2_31_pixels_goes_to_reference(recorded, monkeypatch):
    x = meta(1, 1, 2**16, 2**15)
    assert not pw.handled(x) and not ir.handled(x)
    handed = []
    monkeypatch.setattr(reference, "pwconv_bn_act", lambda x, *args: handed.append(x) or x)
    args = (torch.empty(4, 1, device="meta"), torch.empty(4, device="meta"),
            torch.empty(4, device="meta"), "none", None)
    assert kernels.pwconv_bn_act(x, *args) is x
    assert handed == [x] and not recorded["pw_kernel"].launches
    assert pw.handled(meta(1, 1, 2**15, 2**15))
