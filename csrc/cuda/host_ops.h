// The host side of the CUDA backend's ops, one source for both registrations: the GPU one
// (csrc/cuda/register_cuda.cpp, ops of namespace fastdw_cuda on CUDA tensors) and the emulated one
// (csrc/cuda/emulated.cpp, namespace fastdw_cuda_emu on CPU tensors). Each op first checks every
// argument (shapes, dtypes, devices, strides, ranges) before touching memory, naming the bad
// argument, then lays its tensors out for the kernel and calls its launcher
// (csrc/cuda/launchers.h). The registrations differ only in the device they require and in how
// they launch (a device guard and the current stream, or the emulator).
#pragma once

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "launchers.h"

namespace fastdw_cuda {

// The ops' schemas, defined by each registration in its own namespace.
inline constexpr const char* kDwconvBnActSchema =
    "dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, "
    "int padding, int dilation, str act) -> Tensor";

inline constexpr const char* kPwconvBnActSchema =
    "pwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, str act, "
    "Tensor? residual) -> Tensor";

inline constexpr int64_t kMaxExtent = 2147483647;  // hyper-parameters reach the kernel as int

// The device the op's tensors must be on, and how a message names it.
struct Target {
  c10::DeviceType type;
  const char* why;  // the end of "x must be a <type> tensor (<why>)"
};
inline constexpr Target kGpu{c10::DeviceType::CUDA, "the cuda backend's kernels run on the GPU"};
inline constexpr Target kEmulated{c10::DeviceType::CPU,
                                  "the emulated CUDA backend runs on CPU tensors"};

// A dense floating-point tensor on `on` (the device of the op's first tensor where given).
inline void check_tensor(const at::Tensor& t, const char* name, const Target& target,
                         const at::Tensor* on = nullptr) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.device().type() == target.type, name, " must be a ",
              c10::DeviceTypeName(target.type, /*lower_case=*/true), " tensor (", target.why,
              "), got device ", t.device());
  TORCH_CHECK(on == nullptr || t.device() == on->device(), name, " must be on x's device ",
              on->device(), ", got ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, name, " must be a dense (strided) tensor");
  TORCH_CHECK(!t.is_neg() && !t.is_conj(), name, " is a lazily negated or conjugated view");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

inline void check_range(int64_t v, const char* name, int64_t lo) {
  TORCH_CHECK(v >= lo && v <= kMaxExtent, name, " must be in [", lo, ", ", kMaxExtent, "], got ",
              v);
}

inline int64_t conv_out(int64_t size, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                        const char* name) {
  const int64_t span = size + 2 * pad - dil * (k - 1) - 1;
  TORCH_CHECK(span >= 0, name, ": input size ", size, " is too small for kernel ", k,
              " with padding ", pad, " and dilation ", dil);
  return span / stride + 1;
}

inline Act parse_act(c10::string_view act) {
  const char* names[] = {"none", "relu", "relu6", "hardswish", "hardsigmoid", "silu"};
  for (int i = 0; i < 6; ++i)
    if (act == names[i]) return static_cast<Act>(i);
  TORCH_CHECK(false, "act must be one of none, relu, relu6, hardswish, hardsigmoid, silu; got '",
              std::string(act), "'");
}

// Runs a launcher, turning its std::invalid_argument (a shape over the launch limits) into the
// same RuntimeError as the checks.
template <typename F>
decltype(auto) checked_launch(F&& run) {
  try {
    return run();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, e.what());
  }
}

// dwconv_bn_act: a checked call.
struct DwCall {
  at::Tensor x, weight, scale, shift;
  int64_t k, stride, padding, dilation, OH, OW;
  Act act;
};

inline DwCall check_dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& scale, const at::Tensor& shift,
                                  int64_t stride, int64_t padding, int64_t dilation,
                                  c10::string_view act, const Target& target) {
  check_tensor(x, "x", target);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(x.dim() == 4, "x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK(x.numel() > 0, "x must not be empty, got shape ", x.sizes());
  TORCH_CHECK(x.stride(1) == 1 || C == 1, "x must have channel stride 1 (channels_last), got "
              "strides ", x.strides());
  for (int d = 0; d < 4; ++d) check_range(x.size(d), "x's sizes", 1);
  check_tensor(weight, "weight", target, &x);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3),
              "weight must be (C, 1, k, k) with C = ", C, ", got shape ", weight.sizes());
  const int64_t k = weight.size(2);
  check_range(k, "weight's kernel size", 1);
  for (const auto& [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    check_tensor(*t, name, target, &x);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C, name, " must have shape (", C, "), got ",
                t->sizes());
  }
  check_range(stride, "stride", 1);
  check_range(padding, "padding", 0);
  check_range(dilation, "dilation", 1);
  const int64_t OH = conv_out(x.size(2), k, stride, padding, dilation, "x (height)");
  const int64_t OW = conv_out(x.size(3), k, stride, padding, dilation, "x (width)");
  return {x, weight, scale, shift, k, stride, padding, dilation, OH, OW, parse_act(act)};
}

template <typename T>
bool aligned16(const T* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
void launch_dwconv(const DwCall& a, const at::Tensor& taps, const at::Tensor& scale,
                   const at::Tensor& shift, at::Tensor& y, Stream stream) {
  constexpr int64_t V = 16 / sizeof(T);
  const at::Tensor& x = a.x;
  DwParams<T> p{
      .x = reinterpret_cast<const T*>(x.const_data_ptr()),
      .w = taps.const_data_ptr<float>(), .scale = scale.const_data_ptr<float>(),
      .shift = shift.const_data_ptr<float>(), .y = reinterpret_cast<T*>(y.mutable_data_ptr()),
      .N = x.size(0), .C = x.size(1), .H = x.size(2), .W = x.size(3),
      .OH = y.size(2), .OW = y.size(3),
      .xs_n = x.stride(0), .xs_h = x.stride(2), .xs_w = x.stride(3),
      .ys_n = y.stride(0), .ys_h = y.stride(2), .ys_w = y.stride(3),
      .k = static_cast<int>(a.k), .stride = static_cast<int>(a.stride),
      .pad = static_cast<int>(a.padding), .dil = static_cast<int>(a.dilation), .act = a.act,
      .vector = false};
  // 16-byte accesses need every channel group to start on a 16-byte boundary in x, y and the
  // fp32 taps / scale / shift (fresh contiguous tensors, aligned by the allocator).
  p.vector = p.C % V == 0 && aligned16(p.x) && aligned16(p.y) && aligned16(p.w) &&
             aligned16(p.scale) && aligned16(p.shift) && p.xs_n % V == 0 && p.xs_h % V == 0 &&
             p.xs_w % V == 0;
  checked_launch([&] { launch_dwconv_bn_act(p, stream); });
}

// y = act(depthwise_conv2d(x, weight) * scale + shift), channels_last in and out (the math is
// above the kernel in csrc/cuda/dwconv_bn_act.cuh), on the device of a checked call.
inline at::Tensor run_dwconv_bn_act(const DwCall& a, Stream stream) {
  const int64_t C = a.x.size(1);
  // Tap-major fp32 weights: one 16-byte load gives a tap for a thread's channel group.
  const at::Tensor taps = a.weight.to(at::kFloat).reshape({C, a.k * a.k}).t().contiguous();
  const at::Tensor scale = a.scale.to(at::kFloat).contiguous();
  const at::Tensor shift = a.shift.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({a.x.size(0), C, a.OH, a.OW},
                           a.x.options().memory_format(at::MemoryFormat::ChannelsLast));
  switch (a.x.scalar_type()) {
    case at::kFloat: launch_dwconv<float>(a, taps, scale, shift, y, stream); break;
    case at::kHalf: launch_dwconv<__half>(a, taps, scale, shift, y, stream); break;
    default: launch_dwconv<__nv_bfloat16>(a, taps, scale, shift, y, stream);
  }
  return y;
}

// pwconv_bn_act: a checked call.
struct PwCall {
  at::Tensor x, weight, scale, shift;
  c10::optional<at::Tensor> residual;
  int64_t Cout;
  Act act;
};

inline PwCall check_pwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& scale, const at::Tensor& shift,
                                  c10::string_view act,
                                  const c10::optional<at::Tensor>& residual,
                                  const Target& target) {
  check_tensor(x, "x", target);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(x.dim() == 4, "x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.numel() > 0, "x must not be empty, got shape ", x.sizes());
  TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1, "x must have channel stride 1 "
              "(channels_last), got strides ", x.strides());
  const int64_t K = x.size(1);
  check_tensor(weight, "weight", target, &x);
  TORCH_CHECK(weight.scalar_type() == dtype, "weight must have x's dtype ", dtype, ", got ",
              weight.scalar_type());
  TORCH_CHECK((weight.dim() == 2 || (weight.dim() == 4 && weight.size(2) == 1 &&
                                     weight.size(3) == 1)) && weight.size(1) == K &&
                  weight.size(0) > 0,
              "weight must be (C_out, ", K, ") or (C_out, ", K, ", 1, 1), got shape ",
              weight.sizes());
  const int64_t Cout = weight.size(0);
  check_range(Cout, "weight's output channels", 1);
  for (const auto& [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    check_tensor(*t, name, target, &x);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == Cout, name, " must have shape (", Cout,
                "), got ", t->sizes());
  }
  if (residual.has_value()) {
    check_tensor(*residual, "residual", target, &x);
    TORCH_CHECK(residual->scalar_type() == dtype, "residual must have x's dtype ", dtype,
                ", got ", residual->scalar_type());
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({x.size(0), Cout, x.size(2), x.size(3)}),
                "residual must have shape (", x.size(0), ", ", Cout, ", ", x.size(2), ", ",
                x.size(3), "), got ", residual->sizes());
  }
  return {x, weight, scale, shift, residual, Cout, parse_act(act)};
}

template <typename T>
void launch_pwconv(const PwCall& a, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& scale, const at::Tensor& shift, const at::Tensor* residual,
                   at::Tensor& y, Stream stream) {
  PwParams<T> p{
      .x = reinterpret_cast<const T*>(x.const_data_ptr()),
      .w = reinterpret_cast<const T*>(w.const_data_ptr()),
      .scale = scale.const_data_ptr<float>(), .shift = shift.const_data_ptr<float>(),
      .residual = residual ? reinterpret_cast<const T*>(residual->const_data_ptr()) : nullptr,
      .y = reinterpret_cast<T*>(y.mutable_data_ptr()),
      .M = x.size(0) * x.size(2) * x.size(3), .K = x.size(1), .Cout = a.Cout,
      .ldx = x.size(1), .ldr = a.Cout, .ldy = a.Cout, .act = a.act, .mma = false};
  // cp.async copies 16 bytes: every row of x and w must start on a 16-byte boundary.
  p.mma = !std::is_same_v<T, float> && p.K % 8 == 0 && aligned16(p.x) && aligned16(p.w);
  checked_launch([&] { launch_pwconv_bn_act(p, stream); });
}

// y = act(conv1x1(x, weight) * scale + shift) (+ residual), channels_last out (the math is
// above the kernels in csrc/cuda/pwconv_bn_act.cuh), on the device of a checked call. x (and
// the residual) become channels_last-contiguous: the kernels take pixels as rows.
inline at::Tensor run_pwconv_bn_act(const PwCall& a, Stream stream) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = a.x.contiguous(cl);
  const at::Tensor w = a.weight.reshape({a.Cout, a.x.size(1)}).contiguous();
  const at::Tensor scale = a.scale.to(at::kFloat).contiguous();
  const at::Tensor shift = a.shift.to(at::kFloat).contiguous();
  const at::Tensor residual = a.residual.has_value() ? a.residual->contiguous(cl) : at::Tensor();
  const at::Tensor* r = residual.defined() ? &residual : nullptr;
  at::Tensor y = at::empty({x.size(0), a.Cout, x.size(2), x.size(3)}, x.options().memory_format(cl));
  switch (x.scalar_type()) {
    case at::kFloat: launch_pwconv<float>(a, x, w, scale, shift, r, y, stream); break;
    case at::kHalf: launch_pwconv<__half>(a, x, w, scale, shift, r, y, stream); break;
    default: launch_pwconv<__nv_bfloat16>(a, x, w, scale, shift, r, y, stream);
  }
  return y;
}

}  // namespace fastdw_cuda
