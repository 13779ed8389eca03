"""The triton backend: fastdw's GPU kernels, also runnable on CPU tensors under the interpreter
(TRITON_INTERPRET=1), which is how they are tested on machines without a GPU.

Functions follow the kernel contract of fastdw.kernels.reference; a call these kernels do not
handle (see NOTES) is passed to reference, so every call still returns the right answer.
"""
import os

import torch

from fastdw.kernels import reference
# The op modules, imported before the functions below rebind these package attributes to the
# kernel functions the backend loader looks up (elsewhere, import them by module path).
from fastdw.kernels.triton import dwconv_bn_act as _dw
from fastdw.kernels.triton import pwconv_bn_act as _pw
from fastdw.kernels.triton import inverted_residual as _ir

DEVICES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)
NOTES = ("float64 and depthwise channel multiplier > 1 run on reference; pwconv_bn_act and "
         "inverted_residual backward run on reference (dwconv_bn_act backward is Triton); "
         "so do pwconv_bn_act and inverted_residual on images of 2**31 - 1024 pixels or more; "
         "under TRITON_INTERPRET=1 bf16 tl.dot operands are multiplied as fp32 (Triton 3.8's "
         "interpreter computes bf16 dot wrongly)")


def unavailable():
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
    return None


def dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    if not _dw.handled(x, weight):
        return reference.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    return _dw.forward(x, weight, scale, shift, stride, padding, dilation, act)


def dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding, dilation, act):
    if not _dw.handled(x, weight):
        return reference.dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding,
                                                dilation, act)
    return _dw.backward(grad, x, weight, scale, shift, stride, padding, dilation, act)


def pwconv_bn_act(x, weight, scale, shift, act, residual):
    if not _pw.handled(x):
        return reference.pwconv_bn_act(x, weight, scale, shift, act, residual)
    return _pw.forward(x, weight, scale, shift, act, residual)


def inverted_residual(x, weights, stride, act, residual, se_act, se_gate):
    run = _ir.forward if _ir.handled(x) else reference.inverted_residual
    return run(x, weights, stride, act, residual, se_act, se_gate)
