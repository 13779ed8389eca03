"""Public functional ops. Each is a torch.library custom op in namespace "fastdw" with a fake
kernel and autograd, so torch.compile and torch.export see one real op per call.

An op's whole life: its public function, custom op, fake kernel and autograd in
fastdw/ops/<op>.py; the route every call takes in fastdw/ops/dispatch.py; the argument checks in
fastdw/ops/checks.py; each backend's kernel in fastdw/kernels (reference.py, cpp.py -> csrc/cpu/
<op>.cpp, triton/<op>.py); tests in tests/ops/test_<op>.py; benchmarks in bench/.
"""
from fastdw.contract import ACTIVATIONS, BlockWeights
from fastdw.ops import dwconv_bn_act as _dwconv_module
from fastdw.ops import inverted_residual as _inverted_residual_module
from fastdw.ops import pwconv_bn_act as _pwconv_module
from fastdw.ops.decompositions import decompositions
from fastdw.ops.dispatch import BoundOp
from fastdw.ops.dwconv_bn_act import dwconv_bn_act
from fastdw.ops.fold_bn import fold_bn
from fastdw.ops.inverted_residual import inverted_residual
from fastdw.ops.pwconv_bn_act import pwconv_bn_act

# op name -> (what a BoundOp calls with x, the op's tensors and options; the op's cpp_args)
_ROUTES = {
    "dwconv_bn_act": (dwconv_bn_act, _dwconv_module.cpp_args),
    "pwconv_bn_act": (pwconv_bn_act, _pwconv_module.cpp_args),
    "inverted_residual": (_inverted_residual_module.route, _inverted_residual_module.cpp_args),
}


def bind(name, tensors, options, in_channels) -> BoundOp:
    """Op `name` with everything but x fixed, for inputs of `in_channels` channels:
    `bind(name, tensors, options, c)(x)` equals `fastdw.ops.<name>(x, *tensors, **options)`
    (inverted_residual takes one BlockWeights as its tensors), with the arguments that never
    change between calls vetted once (fastdw.ops.dispatch.BoundOp)."""
    route, cpp_args = _ROUTES[name]
    return BoundOp(name, route, cpp_args, tensors, options, in_channels)


__all__ = ["ACTIVATIONS", "BlockWeights", "BoundOp", "bind", "dwconv_bn_act", "pwconv_bn_act",
           "inverted_residual", "fold_bn", "decompositions"]
