// The CUDA backend's device code run on the host: ops of namespace fastdw_cuda_emu that launch
// csrc/cuda's kernels through fastdw's CUDA emulator on CPU tensors. fastdw/kernels/cuda.py
// builds this file with torch.utils.cpp_extension when FASTDW_CUDA_EMULATE=1. The host side of
// each op (argument checks, layout, launch) is what a GPU build will run before its launch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

// After torch: the emulator defines threadIdx, warpSize, ... as macros.
#include "dwconv_bn_act.cuh"
#include "emulator/selftest.h"

namespace {

constexpr int64_t kMaxExtent = 2147483647;  // hyper-parameters reach the kernel as int

void check_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor (the emulated CUDA backend runs "
              "on CPU tensors), got device ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, name, " must be a dense (strided) tensor");
  TORCH_CHECK(!t.is_neg() && !t.is_conj(), name, " is a lazily negated or conjugated view");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

void check_range(int64_t v, const char* name, int64_t lo) {
  TORCH_CHECK(v >= lo && v <= kMaxExtent, name, " must be in [", lo, ", ", kMaxExtent, "], got ",
              v);
}

int64_t conv_out(int64_t size, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                 const char* name) {
  const int64_t span = size + 2 * pad - dil * (k - 1) - 1;
  TORCH_CHECK(span >= 0, name, ": input size ", size, " is too small for kernel ", k,
              " with padding ", pad, " and dilation ", dil);
  return span / stride + 1;
}

fastdw_cuda::Act parse_act(c10::string_view act) {
  const char* names[] = {"none", "relu", "relu6", "hardswish", "hardsigmoid", "silu"};
  for (int i = 0; i < 6; ++i)
    if (act == names[i]) return static_cast<fastdw_cuda::Act>(i);
  TORCH_CHECK(false, "act must be one of none, relu, relu6, hardswish, hardsigmoid, silu; got '",
              std::string(act), "'");
}

// Runs a launcher, turning the emulator's reports into a Python RuntimeError.
template <typename F>
void emulate(const char* op, F&& run) {
  try {
    run();
  } catch (const fastdw_emu::Error& e) {
    TORCH_CHECK(false, op, ": the CUDA emulator stopped the kernel: ", e.what());
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, e.what());
  }
}

template <typename T>
bool aligned16(const T* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
void run_dwconv(const at::Tensor& x, const at::Tensor& taps, const at::Tensor& scale,
                const at::Tensor& shift, at::Tensor& y, int64_t k, int64_t stride,
                int64_t padding, int64_t dilation, fastdw_cuda::Act act) {
  constexpr int64_t V = 16 / sizeof(T);
  fastdw_cuda::DwParams<T> p{
      .x = reinterpret_cast<const T*>(x.const_data_ptr()),
      .w = taps.const_data_ptr<float>(), .scale = scale.const_data_ptr<float>(),
      .shift = shift.const_data_ptr<float>(), .y = reinterpret_cast<T*>(y.mutable_data_ptr()),
      .N = x.size(0), .C = x.size(1), .H = x.size(2), .W = x.size(3),
      .OH = y.size(2), .OW = y.size(3),
      .xs_n = x.stride(0), .xs_h = x.stride(2), .xs_w = x.stride(3),
      .ys_n = y.stride(0), .ys_h = y.stride(2), .ys_w = y.stride(3),
      .k = static_cast<int>(k), .stride = static_cast<int>(stride),
      .pad = static_cast<int>(padding), .dil = static_cast<int>(dilation), .act = act,
      .vector = false};
  // 16-byte accesses need every channel group to start on a 16-byte boundary in x, y and the
  // fp32 taps / scale / shift (fresh contiguous tensors, aligned by the allocator).
  p.vector = p.C % V == 0 && aligned16(p.x) && aligned16(p.y) && aligned16(p.w) &&
             aligned16(p.scale) && aligned16(p.shift) && p.xs_n % V == 0 && p.xs_h % V == 0 &&
             p.xs_w % V == 0;
  emulate("dwconv_bn_act", [&] { fastdw_cuda::launch_dwconv_bn_act(p, nullptr); });
}

// y = act(depthwise_conv2d(x, weight) * scale + shift), channels_last in and out: the math is
// above the kernel in csrc/cuda/dwconv_bn_act.cuh.
at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, int64_t stride, int64_t padding,
                         int64_t dilation, c10::string_view act) {
  check_tensor(x, "x");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(x.dim() == 4, "x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(x.numel() > 0, "x must not be empty, got shape ", x.sizes());
  TORCH_CHECK(x.stride(1) == 1 || C == 1, "x must have channel stride 1 (channels_last), got "
              "strides ", x.strides());
  for (int d = 0; d < 4; ++d) check_range(x.size(d), "x's sizes", 1);
  check_tensor(weight, "weight");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3),
              "weight must be (C, 1, k, k) with C = ", C, ", got shape ", weight.sizes());
  const int64_t k = weight.size(2);
  check_range(k, "weight's kernel size", 1);
  for (const auto& [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    check_tensor(*t, name);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C, name, " must have shape (", C, "), got ",
                t->sizes());
  }
  check_range(stride, "stride", 1);
  check_range(padding, "padding", 0);
  check_range(dilation, "dilation", 1);
  const int64_t OH = conv_out(x.size(2), k, stride, padding, dilation, "x (height)");
  const int64_t OW = conv_out(x.size(3), k, stride, padding, dilation, "x (width)");
  const fastdw_cuda::Act a = parse_act(act);

  // Tap-major fp32 weights: one 16-byte load gives a tap for a thread's channel group.
  const at::Tensor taps = weight.to(at::kFloat).reshape({C, k * k}).t().contiguous();
  const at::Tensor sc = scale.to(at::kFloat).contiguous(), sh = shift.to(at::kFloat).contiguous();
  at::Tensor y =
      at::empty({N, C, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  switch (dtype) {
    case at::kFloat: run_dwconv<float>(x, taps, sc, sh, y, k, stride, padding, dilation, a); break;
    case at::kHalf: run_dwconv<__half>(x, taps, sc, sh, y, k, stride, padding, dilation, a); break;
    default: run_dwconv<__nv_bfloat16>(x, taps, sc, sh, y, k, stride, padding, dilation, a);
  }
  return y;
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
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, "
        "int padding, int dilation, str act) -> Tensor");
  m.def("last_launch() -> str", &last_launch);
  m.def("emulator_selftest(str name, int seed, bool racecheck, int arch) -> ()",
        &emulator_selftest);
  m.def("emulator_selftest_names() -> str[]", &emulator_selftest_names);
}

TORCH_LIBRARY_IMPL(fastdw_cuda_emu, CPU, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act);
}
