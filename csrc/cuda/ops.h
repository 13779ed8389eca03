// Every op of the CUDA backend once: its wrapper (check every argument, then run it) and its
// registration, parametrised by the build's launch policy. The GPU build
// (csrc/cuda/register_cuda.cpp) and the emulated one (csrc/cuda/emulated.cpp) differ only in that
// policy:
//
//   struct Policy {
//     static constexpr const Target& target;  // the device the tensors must be on
//     // runs f(stream) for op `name` on x's device: a CUDA guard and the current stream, or
//     // the emulator with its reports turned into RuntimeErrors
//     template <typename F> static auto run(const char* name, const at::Tensor& x, F&& f);
//   };
//
// Adding an op: its schema and wrapper here, one line in define_ops and one in impl_ops.
#pragma once

#include <torch/library.h>

#include <vector>

#include "host_ops.h"

namespace fastdw_cuda {

template <typename Policy>
struct Ops {
  static at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& scale, const at::Tensor& shift, int64_t stride,
                                  int64_t padding, int64_t dilation, c10::string_view act) {
    const auto call = check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act,
                                          Policy::target);
    return Policy::run("dwconv_bn_act", x,
                       [&](Stream stream) { return run_dwconv_bn_act(call, stream); });
  }

  static std::vector<at::Tensor> dwconv_bn_act_backward(
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
      const at::Tensor& scale, const at::Tensor& shift, int64_t stride, int64_t padding,
      int64_t dilation, c10::string_view act) {
    const auto call = check_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act,
                                          Policy::target);
    check_dwconv_grad(call, grad, Policy::target);
    return Policy::run("dwconv_bn_act_backward", x, [&](Stream stream) {
      return run_dwconv_bn_act_backward(call, grad, stream);
    });
  }

  static at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& scale, const at::Tensor& shift,
                                  c10::string_view act,
                                  const c10::optional<at::Tensor>& residual) {
    const auto call = check_pwconv_bn_act(x, weight, scale, shift, act, residual, Policy::target);
    return Policy::run("pwconv_bn_act", x,
                       [&](Stream stream) { return run_pwconv_bn_act(call, stream); });
  }

  static std::vector<at::Tensor> pwconv_bn_act_backward(const at::Tensor& grad,
                                                        const at::Tensor& x,
                                                        const at::Tensor& weight,
                                                        const at::Tensor& scale,
                                                        const at::Tensor& shift,
                                                        c10::string_view act) {
    const auto call = check_pwconv_bn_act(x, weight, scale, shift, act, c10::nullopt,
                                          Policy::target);
    check_pwconv_grad(call, grad, Policy::target);
    return Policy::run("pwconv_bn_act_backward", x, [&](Stream stream) {
      return run_pwconv_bn_act_backward(call, grad, stream);
    });
  }

  static at::Tensor inverted_residual(const at::Tensor& x,
                                      const c10::List<std::optional<at::Tensor>>& weights,
                                      int64_t stride, c10::string_view act, bool residual,
                                      c10::string_view se_act, c10::string_view se_gate) {
    const auto call = check_inverted_residual(x, weights, stride, act, residual, se_act, se_gate,
                                              Policy::target);
    return Policy::run("inverted_residual", x,
                       [&](Stream stream) { return run_inverted_residual(call, stream); });
  }
};

// The ops' schemas, in the build's namespace. se_act / se_gate: the squeeze-excite's inner
// activation and gate (fastdw.contract.SE_GATES).
inline void define_ops(torch::Library& m) {
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, "
        "int padding, int dilation, str act) -> Tensor");
  m.def("dwconv_bn_act_backward(Tensor grad, Tensor x, Tensor weight, Tensor scale, "
        "Tensor shift, int stride, int padding, int dilation, str act) -> Tensor[]");
  m.def("pwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, str act, "
        "Tensor? residual) -> Tensor");
  m.def("pwconv_bn_act_backward(Tensor grad, Tensor x, Tensor weight, Tensor scale, "
        "Tensor shift, str act) -> Tensor[]");
  m.def("inverted_residual(Tensor x, Tensor?[] weights, int stride, str act, bool residual, "
        "str se_act=\"relu\", str se_gate=\"hardsigmoid\") -> Tensor");
}

// The ops' kernels for the build's dispatch key.
template <typename Policy>
void impl_ops(torch::Library& m) {
  m.impl("dwconv_bn_act", &Ops<Policy>::dwconv_bn_act);
  m.impl("dwconv_bn_act_backward", &Ops<Policy>::dwconv_bn_act_backward);
  m.impl("pwconv_bn_act", &Ops<Policy>::pwconv_bn_act);
  m.impl("pwconv_bn_act_backward", &Ops<Policy>::pwconv_bn_act_backward);
  m.impl("inverted_residual", &Ops<Policy>::inverted_residual);
}

}  // namespace fastdw_cuda
