"""Every fastdw op as stock ATen ops, for programs that must run without fastdw's kernels: its
decomposition is the reference backend's composite (fastdw.kernels.reference), the very code the
op runs on that backend.

Importing fastdw registers them in torch's global decomposition table
(torch_internals.register_decomposition), the table through which torch.onnx.export's default
exporter lowers the ops it has no ONNX translation for: a plain `torch.onnx.export(model, (x,))`
of a fastdw model gives standard ONNX. torch.compile and torch.export do not read that table, so
their graphs keep one fastdw op per call; decompositions() lowers an exported program.
"""
import torch

from fastdw import torch_internals
from fastdw.ops import dispatch
from fastdw.ops.inverted_residual import split_schema_arguments


def _dwconv_bn_act(*args):
    # The schema's arguments are the reference kernel's, then the backend.
    return dispatch.run_kernel("reference", "dwconv_bn_act", *args[:-1])


def _pwconv_bn_act(*args):
    return dispatch.run_kernel("reference", "pwconv_bn_act", *args[:-1])


def _inverted_residual(x, *args):
    block, options, _ = split_schema_arguments(args)
    return dispatch.run_kernel("reference", "inverted_residual", x, block, *options)


_DECOMPOSITIONS = {
    torch.ops.fastdw.dwconv_bn_act.default: _dwconv_bn_act,
    torch.ops.fastdw.pwconv_bn_act.default: _pwconv_bn_act,
    torch.ops.fastdw.inverted_residual.default: _inverted_residual,
}
for _op, _fn in _DECOMPOSITIONS.items():
    torch_internals.register_decomposition(_op, _fn)


def decompositions():
    """torch.export.default_decompositions() and the fastdw ops' decompositions: the table that
    lowers an exported fastdw program to core ATen IR, which runs where fastdw is not imported
    (an AOTInductor package loaded from C++, or by a Python process without fastdw):

        ep = torch.export.export(model.eval(), (x,)).run_decompositions(decompositions())
        torch._inductor.aoti_compile_and_package(ep)
    """
    table = torch.export.default_decompositions()
    table.update(_DECOMPOSITIONS)
    return table
