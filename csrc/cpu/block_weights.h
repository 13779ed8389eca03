// The tensors of an inverted-residual block, named once: fastdw_cpp::inverted_residual and
// Program.add_inverted_residual take them as one list (Tensor?[] weights) in this order, which
// the Python side follows too (a test compares it with block_weight_names()).
#pragma once
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace fastdw_cpu {

// X(name, required) for each tensor, in list order. Without expand_w the block has no expand
// conv; without the se_* tensors, no squeeze-excite.
#define FASTDW_BLOCK_WEIGHTS(X)                                                          \
  X(expand_w, false) X(expand_scale, false) X(expand_shift, false)                     \
  X(dw_w, true) X(dw_scale, true) X(dw_shift, true)                                    \
  X(project_w, true) X(project_scale, true) X(project_shift, true)                     \
  X(se_w1, false) X(se_b1, false) X(se_w2, false) X(se_b2, false)

template <bool required>
using BlockWeight = std::conditional_t<required, at::Tensor, std::optional<at::Tensor>>;

struct BlockWeights {
#define FASTDW_FIELD(name, required) BlockWeight<required> name;
  FASTDW_BLOCK_WEIGHTS(FASTDW_FIELD)
#undef FASTDW_FIELD
};

// The list as a BlockWeights: exactly one entry per name, each required one present, the 1x1
// conv weights (expand_w, project_w, se_w1, se_w2) as matrices (as_matrix, csrc/cpu/checks.h).
// Shapes and dtypes are inverted_residual's to check.
BlockWeights block_weights(const c10::List<std::optional<at::Tensor>>& weights);

std::vector<std::string> block_weight_names();

}  // namespace fastdw_cpu
