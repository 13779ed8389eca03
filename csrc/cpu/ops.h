// The C++ entry points of the fastdw_cpp ops (schemas in csrc/schemas.cpp), callable from other
// C++ code too (csrc/cpu/program.cpp runs them back to back). Each validates all its arguments;
// called without the dispatcher, the caller must pass plain tensors (see check_plain there).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "block_weights.h"

#include <optional>

namespace fastdw_cpu {

at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, int64_t stride, int64_t padding,
                         int64_t dilation, c10::string_view act);

at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, c10::string_view act,
                         const std::optional<at::Tensor>& residual);

// se_act / se_gate: the squeeze-excite's inner activation and gate (checked with or without SE).
at::Tensor inverted_residual(const at::Tensor& x, const BlockWeights& w, int64_t stride,
                             c10::string_view act, bool residual, c10::string_view se_act,
                             c10::string_view se_gate);

// Conv2d (groups 1) + bias + activation with C_in*k*k <= kMaxConvTaps (the stem), for programs;
// no op schema (torch's conv2d covers eager use). Returns channels-last output.
at::Tensor conv_bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         int64_t stride, int64_t padding, int64_t dilation, c10::string_view act);

}  // namespace fastdw_cpu
