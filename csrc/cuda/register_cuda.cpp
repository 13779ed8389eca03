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

#include "ops.h"

// The GPU architectures the kernels were compiled for, e.g. sm_80,sm_90 (set by the build).
#ifndef FASTDW_CUDA_ARCHS
#define FASTDW_CUDA_ARCHS unknown
#endif
#define FASTDW_STRINGIFY_(...) #__VA_ARGS__
#define FASTDW_STRINGIFY(...) FASTDW_STRINGIFY_(__VA_ARGS__)

namespace {

// The launch policy of csrc/cuda/ops.h: CUDA tensors, on x's device and current stream.
struct Gpu {
  static constexpr const fastdw_cuda::Target& target = fastdw_cuda::kGpu;
  template <typename F>
  static decltype(auto) run(const char*, const at::Tensor& x, F&& f) {
    const c10::cuda::CUDAGuard guard(x.device());
    return f(c10::cuda::getCurrentCUDAStream().stream());
  }
};

std::string archs() { return FASTDW_STRINGIFY(FASTDW_CUDA_ARCHS); }

}  // namespace

TORCH_LIBRARY(fastdw_cuda, m) {
  fastdw_cuda::define_ops(m);
  m.def("archs() -> str", &archs);
}

TORCH_LIBRARY_IMPL(fastdw_cuda, CUDA, m) { fastdw_cuda::impl_ops<Gpu>(m); }

extern "C" PyObject* PyInit__C_cuda() {
  static PyModuleDef module = {.m_base = PyModuleDef_HEAD_INIT, .m_name = "_C_cuda",
                               .m_doc = "fastdw's CUDA kernels (ops of torch.ops.fastdw_cuda)",
                               .m_size = -1, .m_methods = nullptr};
  return PyModule_Create(&module);
}
