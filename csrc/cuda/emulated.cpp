// The CUDA backend's device code run on the host: ops of namespace fastdw_cuda_emu that launch
// csrc/cuda's kernels through fastdw's CUDA emulator on CPU tensors. fastdw/kernels/cuda.py
// builds this file with torch.utils.cpp_extension when FASTDW_CUDA_EMULATE=1. The host side of
// each op (argument checks, layout, launch) is csrc/cuda/host_ops.h, wrapped and registered by
// csrc/cuda/ops.h as in the GPU build (csrc/cuda/register_cuda.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

// After torch: the emulator defines threadIdx, warpSize, ... as macros.
#include "dwconv_backward.cuh"
#include "dwconv_bn_act.cuh"
#include "emulator/selftest.h"
#include "inverted_residual.cuh"
#include "ops.h"
#include "pwconv_backward.cuh"
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

// The launch policy of csrc/cuda/ops.h: CPU tensors, the kernels through the emulator.
struct Emulated {
  static constexpr const fastdw_cuda::Target& target = fastdw_cuda::kEmulated;
  template <typename F>
  static decltype(auto) run(const char* op, const at::Tensor&, F&& f) {
    return emulate(op, [&] { return f(nullptr); });
  }
};

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
  fastdw_cuda::define_ops(m);
  m.def("last_launch() -> str", &last_launch);
  m.def("emulator_selftest(str name, int seed, bool racecheck, int arch) -> ()",
        &emulator_selftest);
  m.def("emulator_selftest_names() -> str[]", &emulator_selftest_names);
}

TORCH_LIBRARY_IMPL(fastdw_cuda_emu, CPU, m) { fastdw_cuda::impl_ops<Emulated>(m); }
