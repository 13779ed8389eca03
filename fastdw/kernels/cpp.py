"""The cpp backend: fastdw's C++ CPU kernels (csrc/cpu, built into fastdw._C).

The kernels are ops of namespace fastdw_cpp (the public "fastdw" namespace belongs to the
Python custom ops in fastdw.ops, which validate arguments and call the functions below; their
common float32 call tries torch.ops.fastdw_cpp first, see fastdw.ops._dispatch.cpp_first). Calls
these kernels do not cover go to the reference backend, so every call the public ops accept runs.
"""
import torch

from fastdw.kernels import reference

try:
    import fastdw._C  # noqa: F401  (registers torch.ops.fastdw_cpp)
    _IMPORT_ERROR = None
except ImportError as err:
    _IMPORT_ERROR = err

DEVICES = ("cpu",)
NOTES = ("float32 (+ bfloat16 for dwconv_bn_act) in C++; float16, float64, depthwise channel "
         "multiplier > 1 and all backward passes run on reference")


def unavailable():
    if _IMPORT_ERROR is not None:
        return f"fastdw._C was not built: {_IMPORT_ERROR}"
    return None


def capability():
    """The instruction set the kernels use here: "avx512", "avx2" or "baseline"."""
    return torch.ops.fastdw_cpp.capability()


def dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    if x.dtype not in (torch.float32, torch.bfloat16) or weight.shape[0] != x.shape[1]:
        return reference.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    return torch.ops.fastdw_cpp.dwconv_bn_act(x, weight, scale, shift, stride, padding,
                                              dilation, act)


def pwconv_bn_act(x, weight, scale, shift, act, residual):
    if x.dtype != torch.float32:
        return reference.pwconv_bn_act(x, weight, scale, shift, act, residual)
    return torch.ops.fastdw_cpp.pwconv_bn_act(x, weight, scale, shift, act, residual)


def inverted_residual(x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift,
                      project_w, project_scale, project_shift, stride, act,
                      se_w1, se_b1, se_w2, se_b2, residual):
    op = (torch.ops.fastdw_cpp.inverted_residual if x.dtype == torch.float32
          else reference.inverted_residual)
    return op(x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, project_w,
              project_scale, project_shift, stride, act, se_w1, se_b1, se_w2, se_b2, residual)
