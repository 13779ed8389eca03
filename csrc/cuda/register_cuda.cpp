// The CUDA backend's GPU build: `import fastdw.kernels._C_cuda` loads this library (with the
// kernels nvcc compiled from csrc/cuda/kernels.cu), which registers the ops of namespace
// fastdw_cuda for CUDA tensors. fastdw/kernels/cuda.py calls them; setup.py builds the library
// where nvcc is found (fastdw/kernels/cpp_build.py says how). Loading it touches no CUDA API
// (the CUDA runtime is linked statically and starts on the first launch), so it imports on a
// machine with no GPU or driver.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "host_ops.h"

// The GPU architectures the kernels were compiled for, e.g. sm_80,sm_90 (set by the build).
#ifndef FASTDW_CUDA_ARCHS
#define FASTDW_CUDA_ARCHS unknown
#endif
#define FASTDW_STRINGIFY_(...) #__VA_ARGS__
#define FASTDW_STRINGIFY(...) FASTDW_STRINGIFY_(__VA_ARGS__)

namespace {

// The argument checks and the launch of csrc/cuda/host_ops.h, on x's device and current stream.
at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, int64_t stride, int64_t padding,
                         int64_t dilation, c10::string_view act) {
  const auto call = fastdw_cuda::check_dwconv_bn_act(x, weight, scale, shift, stride, padding,
                                                     dilation, act, fastdw_cuda::kGpu);
  const c10::cuda::CUDAGuard guard(x.device());
  return fastdw_cuda::run_dwconv_bn_act(call, c10::cuda::getCurrentCUDAStream().stream());
}

std::vector<at::Tensor> dwconv_bn_act_backward(const at::Tensor& grad, const at::Tensor& x,
                                               const at::Tensor& weight, const at::Tensor& scale,
                                               const at::Tensor& shift, int64_t stride,
                                               int64_t padding, int64_t dilation,
                                               c10::string_view act) {
  const auto call = fastdw_cuda::check_dwconv_bn_act(x, weight, scale, shift, stride, padding,
                                                     dilation, act, fastdw_cuda::kGpu);
  const c10::cuda::CUDAGuard guard(x.device());
  return fastdw_cuda::run_dwconv_bn_act_backward(call, grad, fastdw_cuda::kGpu,
                                                 c10::cuda::getCurrentCUDAStream().stream());
}

at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, c10::string_view act,
                         const c10::optional<at::Tensor>& residual) {
  const auto call = fastdw_cuda::check_pwconv_bn_act(x, weight, scale, shift, act, residual,
                                                     fastdw_cuda::kGpu);
  const c10::cuda::CUDAGuard guard(x.device());
  return fastdw_cuda::run_pwconv_bn_act(call, c10::cuda::getCurrentCUDAStream().stream());
}

at::Tensor inverted_residual(const at::Tensor& x,
                             const c10::List<std::optional<at::Tensor>>& weights, int64_t stride,
                             c10::string_view act, bool residual, c10::string_view se_act,
                             c10::string_view se_gate) {
  const auto call = fastdw_cuda::check_inverted_residual(x, weights, stride, act, residual, se_act,
                                                         se_gate, fastdw_cuda::kGpu);
  const c10::cuda::CUDAGuard guard(x.device());
  return fastdw_cuda::run_inverted_residual(call, c10::cuda::getCurrentCUDAStream().stream());
}

std::string archs() { return FASTDW_STRINGIFY(FASTDW_CUDA_ARCHS); }

}  // namespace

TORCH_LIBRARY(fastdw_cuda, m) {
  m.def(fastdw_cuda::kDwconvBnActSchema);
  m.def(fastdw_cuda::kDwconvBnActBackwardSchema);
  m.def(fastdw_cuda::kPwconvBnActSchema);
  m.def(fastdw_cuda::kInvertedResidualSchema);
  m.def("archs() -> str", &archs);
}

TORCH_LIBRARY_IMPL(fastdw_cuda, CUDA, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act);
  m.impl("dwconv_bn_act_backward", &dwconv_bn_act_backward);
  m.impl("pwconv_bn_act", &pwconv_bn_act);
  m.impl("inverted_residual", &inverted_residual);
}

extern "C" PyObject* PyInit__C_cuda() {
  static PyModuleDef module = {.m_base = PyModuleDef_HEAD_INIT, .m_name = "_C_cuda",
                               .m_doc = "fastdw's CUDA kernels (ops of torch.ops.fastdw_cuda)",
                               .m_size = -1, .m_methods = nullptr};
  return PyModule_Create(&module);
}
