// The CUDA backend's device code run on the host: ops of namespace fastdw_cuda_emu that launch
// csrc/cuda's kernels through fastdw's CUDA emulator on CPU tensors. fastdw/kernels/cuda.py
// builds this file with torch.utils.cpp_extension when FASTDW_CUDA_EMULATE=1. The host side of
// each op (argument checks, layout, launch) is csrc/cuda/host_ops.h, which the GPU build
// (csrc/cuda/register_cuda.cpp) runs too.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

// After torch: the emulator defines threadIdx, warpSize, ... as macros.
#include "dwconv_backward.cuh"
#include "dwconv_bn_act.cuh"
#include "emulator/selftest.h"
#include "host_ops.h"
#include "inverted_residual.cuh"
#include "pwconv_bn_act.cuh"

namespace {

// Runs `run`, turning the emulator's reports (and a launcher's refusal) into a Python
// RuntimeError.
template <typename F>
decltype(auto) emulate(const char* op, F&& run) {
  try {
    return fastdw_cuda::checked_launch(std::forward<F>(run));
  } catch (const fastdw_emu::Error& e) {
    TORCH_CHECK(false, op, ": the CUDA emulator stopped the kernel: ", e.what());
  }
}

at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, int64_t stride, int64_t padding,
                         int64_t dilation, c10::string_view act) {
  const auto call = fastdw_cuda::check_dwconv_bn_act(x, weight, scale, shift, stride, padding,
                                                     dilation, act, fastdw_cuda::kEmulated);
  return emulate("dwconv_bn_act", [&] { return fastdw_cuda::run_dwconv_bn_act(call, nullptr); });
}

std::vector<at::Tensor> dwconv_bn_act_backward(const at::Tensor& grad, const at::Tensor& x,
                                               const at::Tensor& weight, const at::Tensor& scale,
                                               const at::Tensor& shift, int64_t stride,
                                               int64_t padding, int64_t dilation,
                                               c10::string_view act) {
  const auto call = fastdw_cuda::check_dwconv_bn_act(x, weight, scale, shift, stride, padding,
                                                     dilation, act, fastdw_cuda::kEmulated);
  return emulate("dwconv_bn_act_backward", [&] {
    return fastdw_cuda::run_dwconv_bn_act_backward(call, grad, fastdw_cuda::kEmulated, nullptr);
  });
}

at::Tensor pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, c10::string_view act,
                         const c10::optional<at::Tensor>& residual) {
  const auto call = fastdw_cuda::check_pwconv_bn_act(x, weight, scale, shift, act, residual,
                                                     fastdw_cuda::kEmulated);
  return emulate("pwconv_bn_act", [&] { return fastdw_cuda::run_pwconv_bn_act(call, nullptr); });
}

at::Tensor inverted_residual(const at::Tensor& x,
                             const c10::List<std::optional<at::Tensor>>& weights, int64_t stride,
                             c10::string_view act, bool residual, c10::string_view se_act,
                             c10::string_view se_gate) {
  const auto call = fastdw_cuda::check_inverted_residual(x, weights, stride, act, residual, se_act,
                                                         se_gate, fastdw_cuda::kEmulated);
  return emulate("inverted_residual",
                 [&] { return fastdw_cuda::run_inverted_residual(call, nullptr); });
}

// The last launch on this thread: "kernel grid=(x,y,z) block=(x,y,z) seed=s", for tests that
// check which instantiation and shape a launcher chose, and say which run failed.
std::string last_launch() {
  const auto& l = fastdw_emu::last_launch;
  return l.kernel + " grid=(" + std::to_string(l.grid.x) + "," + std::to_string(l.grid.y) + "," +
         std::to_string(l.grid.z) + ") block=(" + std::to_string(l.block.x) + "," +
         std::to_string(l.block.y) + "," + std::to_string(l.block.z) + ") seed=" +
         std::to_string(l.seed);
}

// Test only: runs the emulator's self-test case `name` (csrc/cuda/emulator/selftest.h).
void emulator_selftest(c10::string_view name, int64_t seed, bool racecheck, int64_t arch) {
  emulate("emulator_selftest", [&] {
    fastdw_emu_selftest::run(std::string(name), static_cast<uint64_t>(seed), racecheck,
                             static_cast<int>(arch));
  });
}

std::vector<std::string> emulator_selftest_names() {
  std::vector<std::string> names;
  for (const auto& entry : fastdw_emu_selftest::cases()) names.push_back(entry.first);
  return names;
}

}  // namespace

TORCH_LIBRARY(fastdw_cuda_emu, m) {
  m.def(fastdw_cuda::kDwconvBnActSchema);
  m.def(fastdw_cuda::kDwconvBnActBackwardSchema);
  m.def(fastdw_cuda::kPwconvBnActSchema);
  m.def(fastdw_cuda::kInvertedResidualSchema);
  m.def("last_launch() -> str", &last_launch);
  m.def("emulator_selftest(str name, int seed, bool racecheck, int arch) -> ()",
        &emulator_selftest);
  m.def("emulator_selftest_names() -> str[]", &emulator_selftest_names);
}

TORCH_LIBRARY_IMPL(fastdw_cuda_emu, CPU, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act);
  m.impl("dwconv_bn_act_backward", &dwconv_bn_act_backward);
  m.impl("pwconv_bn_act", &pwconv_bn_act);
  m.impl("inverted_residual", &inverted_residual);
}
