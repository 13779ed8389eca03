"""Random inverted-residual blocks for the Triton kernel tests, as the kernels take them
(BlockWeights) and as the float64 oracle takes them (tests/ops/op_oracle.py)."""
import torch

import op_oracle
from fastdw.contract import BlockWeights


def block_weights(c_in, hidden, c_out, k, dtype, se):
    """BlockWeights of a block (hidden None: no expansion) and the oracle's stage triples."""
    def stage(weight_shape, channels):
        return (op_oracle.conv_weight(weight_shape, dtype), *op_oracle.random_affine(channels))

    expand = None if hidden is None else stage((hidden, c_in), hidden)
    hidden = hidden or c_in
    depthwise = stage((hidden, 1, k, k), hidden)
    project = stage((c_out, hidden), c_out)
    squeeze = None
    if se:
        s = max(8, hidden // 4)
        squeeze = (op_oracle.conv_weight((s, hidden), dtype), (torch.randn(s) * 0.1).to(dtype),
                   op_oracle.conv_weight((hidden, s), dtype),
                   (torch.randn(hidden) * 0.1).to(dtype))
    weights = BlockWeights(*(expand or (None,) * 3), *depthwise, *project,
                           *(squeeze or (None,) * 4))
    return weights, (expand, depthwise, project, squeeze)
