// The schemas of the C++ kernels, declared once. Namespace fastdw_cpp, not fastdw: the public
// "fastdw" ops are Python custom ops (fastdw/ops) that validate arguments and then call these
// through fastdw/kernels/cpp.py. The CPU implementations live in csrc/cpu/<op>.cpp.
#include <torch/library.h>

#include "cpu/block_weights.h"
#include "cpu/kernels.h"

#include <string>

TORCH_LIBRARY(fastdw_cpp, m) {
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, "
        "int padding, int dilation, str act) -> Tensor");
  // weight: (C_out, C_in) or (C_out, C_in, 1, 1); so are the 1x1 weights of inverted_residual.
  m.def("pwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, str act, "
        "Tensor? residual) -> Tensor");
  // weights: the block's tensors in the order of block_weight_names() (csrc/cpu/block_weights.h).
  // se_act / se_gate: the squeeze-excite's inner activation and gate, defaults as the public
  // op's (MobileNetV3's relu / hardsigmoid).
  m.def("inverted_residual(Tensor x, Tensor?[] weights, int stride, str act, bool residual, "
        "str se_act=\"relu\", str se_gate=\"hardsigmoid\") -> Tensor");
  // So that the Python side can check it lists the block's tensors in the same order.
  m.def("block_weight_names() -> str[]", &fastdw_cpu::block_weight_names);
  // Which vectorised variant runs here (avx512 / avx2 / baseline), for info() and benchmarks.
  m.def("capability() -> str", [] { return std::string(fastdw_cpu::capability()); });
}
