"""Triton launches on the current CUDA device, on torch's current stream of it: every launcher
makes its input's device current first (torch.cuda.device_of), or a tensor on cuda:1 with device
0 current would be handed to a kernel on the wrong GPU.

Without a GPU this is checked at the seam: torch.cuda.device_of is replaced by a recording guard
(that still enters the real one), and every kernel launch the interpreter runs, and every
warmup compile, must happen inside a guard entered with a tensor on the input's device. With
two GPUs the real thing runs.
"""
import math
import os

import pytest
import torch

kernels = pytest.importorskip("fastdw.kernels.triton", reason="needs triton installed")
from fastdw.contract import BlockWeights  # noqa: E402


def affine(c, device="cpu"):
    return (torch.empty(c, device=device).uniform_(0.5, 1.5),
            torch.empty(c, device=device).uniform_(-0.5, 0.5))


def block(c_in, hidden, c_out, se, device="cpu"):
    """A block's BlockWeights (k 3), with squeeze-excite (the split path) or without (fused)."""
    def weight(*shape):
        return torch.randn(*shape, device=device) / math.sqrt(math.prod(shape[1:]))

    squeeze = (weight(8, hidden), torch.randn(8, device=device) * 0.1, weight(hidden, 8),
               torch.randn(hidden, device=device) * 0.1) if se else (None,) * 4
    return BlockWeights(weight(hidden, c_in), *affine(hidden, device), weight(hidden, 1, 3, 3),
                        *affine(hidden, device), weight(c_out, hidden), *affine(c_out, device),
                        *squeeze)


def every_kernel(x):
    """Calls every launcher of the backend on x: dw forward and backward, pw, and the fused and
    split (SE) inverted-residual paths; returns their outputs."""
    c = x.shape[1]
    dw_args = (torch.randn(c, 1, 3, 3, device=x.device), *affine(c, x.device), 1, 1, 1, "relu6")
    y = kernels.dwconv_bn_act(x, *dw_args)
    grads = kernels.dwconv_bn_act_backward(torch.randn_like(y), x, *dw_args)
    p = kernels.pwconv_bn_act(x, torch.randn(24, c, device=x.device) / c ** 0.5,
                              *affine(24, x.device), "hardswish", None)
    options = (1, "relu6", True, "relu", "hardsigmoid")
    fused = kernels.inverted_residual(x, block(c, 32, c, False, x.device), *options)
    split = kernels.inverted_residual(x, block(c, 32, c, True, x.device), *options)
    return [y, *grads, p, fused, split]


@pytest.fixture
def guarded(monkeypatch):
    """(launched, active): torch.cuda.device_of replaced by a recording guard; `launched` gets
    (kernel name, warmup, devices of the active guards) at each interpreted launch or warmup,
    `active` the tensors of the guards entered and not yet left, innermost last."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("records the interpreter's launches (TRITON_INTERPRET=1)")
    from triton.runtime.interpreter import InterpretedFunction
    real_device_of = torch.cuda.device_of
    active = []
    launched = []

    class RecordingGuard:
        def __init__(self, obj):
            self.obj, self.real = obj, real_device_of(obj)

        def __enter__(self):
            active.append(self.obj)
            return self.real.__enter__()

        def __exit__(self, *exc):
            active.pop()
            return self.real.__exit__(*exc)

    run = InterpretedFunction.run

    def recording_run(self, *args, warmup, **kwargs):
        launched.append((self.__name__, warmup, [t.device for t in active]))
        return run(self, *args, warmup=warmup, **kwargs)

    monkeypatch.setattr(torch.cuda, "device_of", RecordingGuard)
    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return launched, active


def assert_guarded(launched, active, x):
    for name, _, devices in launched:
        assert devices, f"{name} launched outside a device guard"
        assert devices[-1] == x.device, f"{name} launched under a guard of {devices[-1]}"
    assert not active


def test_every_launch_runs_under_a_device_guard_of_its_input(guarded):
    launched, active = guarded
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    every_kernel(x)
    assert {name for name, _, _ in launched} == {
        "dw_forward_kernel", "dw_backward_params_kernel", "dw_backward_input_kernel",
        "pw_kernel", "ir_kernel"}
    assert_guarded(launched, active, x)


def test_block_residency_warmups_run_under_the_device_guard(guarded, monkeypatch):
    """On a GPU with more block tiles than it surely runs at once (6 single-tile images, 4 fp16
    programs by the register cap of its 1 SM) the launcher compiles both ir_kernel variants
    (warmup) to weigh them: those compiles, like the launches, run with x's device current."""
    import importlib
    ir = importlib.import_module("fastdw.kernels.triton.inverted_residual")
    monkeypatch.setattr(ir, "multiprocessors", lambda device: 1)
    launched, active = guarded
    x = torch.randn(6, 16, 6, 6).half().contiguous(memory_format=torch.channels_last)
    weights = BlockWeights(*(t if t is None else t.half() for t in block(16, 32, 16, False)))
    kernels.inverted_residual(x, weights, 1, "relu6", True, "relu", "hardsigmoid")
    assert [warmup for _, warmup, _ in launched] == [True, True, False]
    assert_guarded(launched, active, x)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_input_on_another_device_than_the_current_one():
    """x on cuda:1 with cuda:0 current gives exactly what it gives with cuda:1 current (the
    kernels are deterministic), on x's device, and leaves cuda:0 current."""
    def run(current):
        torch.manual_seed(1)
        with torch.cuda.device(current):
            outs = every_kernel(torch.randn(2, 16, 10, 10, device="cuda:1"))
            assert torch.cuda.current_device() == current
        return outs

    for out, same in zip(run(0), run(1)):
        assert out.device == torch.device("cuda:1")
        assert torch.equal(out, same)
