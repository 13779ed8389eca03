// Argument checks shared by the C++ entry points. Everything a kernel relies on is checked here,
// before any memory is touched, and every message names the argument, because these entry
// points can be called directly (torch.ops.fastdw_cpp.*) without the Python op's validation.
#pragma once
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <limits>

#include "kernels.h"

namespace fastdw_cpu {

// Sizes and hyper-parameters above this are refused: with them every product the kernels form
// (index * stride, (k-1)*dilation + padding, ...) stays far inside int64_t.
constexpr int64_t kMaxExtent = std::numeric_limits<int32_t>::max();

inline void check_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, name, " must be a dense (strided) tensor");
  TORCH_CHECK(t.has_storage() && (t.numel() == 0 || t.const_data_ptr() != nullptr), name,
              " has no data in memory (a wrapper or subclass tensor); pass a plain tensor");
  // The dispatcher resolves these lazy views before a kernel runs; a program's steps call the
  // kernels directly, and the memory of such a view holds the values before negation.
  TORCH_CHECK(!t.is_neg() && !t.is_conj(), name, " is a lazily negated or conjugated view; "
              "pass t.resolve_neg() (or resolve_conj()) instead");
  for (int64_t d = 0; d < t.dim(); ++d) {
    TORCH_CHECK(t.size(d) <= kMaxExtent, name, " has size ", t.size(d), " in dimension ", d,
                ", larger than the supported ", kMaxExtent);
    TORCH_CHECK(t.stride(d) >= 0 && t.stride(d) <= kMaxExtent * kMaxExtent, name,
                " has unsupported stride ", t.stride(d), " in dimension ", d);
  }
}

// A tensor of dtype `dtype` and exactly `shape` (-1 entries match any size).
inline void check_shape(const at::Tensor& t, const char* name, at::ScalarType dtype,
                        std::initializer_list<int64_t> shape) {
  check_tensor(t, name);
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == static_cast<int64_t>(shape.size()), name, " must be ", shape.size(),
              "-D, got shape ", t.sizes());
  int64_t d = 0;
  for (int64_t s : shape) {
    TORCH_CHECK(s < 0 || t.size(d) == s, name, " must have size ", s, " in dimension ", d,
                ", got shape ", t.sizes());
    ++d;
  }
}

// A 1x1 conv weight as the (C_out, C_in) matrix the GEMMs read: (C_out, C_in, 1, 1), as
// nn.Conv2d holds it, becomes the same memory viewed 2-D (Python's weight.flatten(1), at a
// fraction of its per-call cost); any other tensor is returned as it is, for check_shape.
inline at::Tensor as_matrix(const at::Tensor& w) {
  if (!w.defined() || w.dim() != 4 || w.size(2) != 1 || w.size(3) != 1) return w;
  return w.as_strided({w.size(0), w.size(1)}, {w.stride(0), w.stride(1)});
}

// x: a non-empty 4-D (N, C, H, W) CPU tensor of one of `dtypes`.
inline void check_feature_map(const at::Tensor& x, const char* name, bool allow_bf16) {
  check_tensor(x, name);
  TORCH_CHECK(x.scalar_type() == at::kFloat || (allow_bf16 && x.scalar_type() == at::kBFloat16),
              name, " must be float32", allow_bf16 ? " or bfloat16" : "",
              " (other dtypes run on the reference backend), got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, name, " must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.numel() > 0, name, " must not be empty, got shape ", x.sizes());
}

inline void check_range(int64_t v, const char* name, int64_t lo) {
  TORCH_CHECK(v >= lo && v <= kMaxExtent, name, " must be in [", lo, ", ", kMaxExtent, "], got ",
              v);
}

inline int64_t conv_out(int64_t size, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                        const char* name) {
  const int64_t out = (size + 2 * pad - dil * (k - 1) - 1) / stride + 1;
  TORCH_CHECK(size + 2 * pad - dil * (k - 1) - 1 >= 0 && out >= 1, name, ": input size ", size,
              " is too small for kernel ", k, " with padding ", pad, " and dilation ", dil);
  TORCH_CHECK(out <= kMaxExtent, name, ": padding ", pad, " makes an output of size ", out,
              ", larger than the supported ", kMaxExtent);
  return out;
}

// The output size of a k x k window sliding over x (N, C, H, W) with these hyper-parameters,
// each checked.
struct ConvOut {
  int64_t OH, OW;
};
inline ConvOut check_window(const at::Tensor& x, int64_t k, int64_t stride, int64_t padding,
                            int64_t dilation) {
  check_range(stride, "stride", 1);
  check_range(padding, "padding", 0);
  check_range(dilation, "dilation", 1);
  return {.OH = conv_out(x.size(2), k, stride, padding, dilation, "x (height)"),
          .OW = conv_out(x.size(3), k, stride, padding, dilation, "x (width)")};
}

// An act name of fastdw.contract.ACTIVATIONS; `name` is the argument's, for the message.
inline Act parse_act(c10::string_view act, const char* name = "act") {
  if (act == "none") return kNone;
  if (act == "relu") return kRelu;
  if (act == "relu6") return kRelu6;
  if (act == "hardswish") return kHardswish;
  if (act == "hardsigmoid") return kHardsigmoid;
  if (act == "silu") return kSilu;
  TORCH_CHECK(false, name, " must be one of none, relu, relu6, hardswish, hardsigmoid, silu; "
              "got '", std::string(act), "'");
}

// The gate of an inverted-residual block's squeeze-excite (fastdw.contract.SE_GATES).
enum class SeGate : int { kHardsigmoid = 0, kSigmoid };

inline SeGate parse_se_gate(c10::string_view gate) {
  if (gate == "hardsigmoid") return SeGate::kHardsigmoid;
  if (gate == "sigmoid") return SeGate::kSigmoid;
  TORCH_CHECK(false, "se_gate must be one of hardsigmoid, sigmoid; got '", std::string(gate),
              "'");
}

// fastdw.contract.output_memory_format: channels_last in -> channels_last out, else NCHW.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace fastdw_cpu
