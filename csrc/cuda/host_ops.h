// The host side of the CUDA backend's ops, one source for both builds: the GPU one
// (csrc/cuda/register_cuda.cpp, ops of namespace fastdw_cuda on CUDA tensors) and the emulated one
// (csrc/cuda/emulated.cpp, namespace fastdw_cuda_emu on CPU tensors); csrc/cuda/ops.h wraps
// each op once for both. Each op first checks every argument (shapes, dtypes, devices, strides,
// ranges) before touching memory, naming the bad argument, then lays its tensors out for the
// kernel and calls its launcher (csrc/cuda/launchers.h).
#pragma once

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../cpu/block_weights.h"
#include "launchers.h"

namespace fastdw_cuda {

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

// x: a non-empty 4-D float32 / float16 / bfloat16 tensor, with channel stride 1
// (channels_last) unless `any_layout`.
inline void check_feature_map(const at::Tensor& x, const Target& target,
                              bool any_layout = false) {
  check_tensor(x, "x", target);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "x must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(x.dim() == 4, "x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.numel() > 0, "x must not be empty, got shape ", x.sizes());
  TORCH_CHECK(any_layout || x.stride(1) == 1 || x.size(1) == 1, "x must have channel stride 1 "
              "(channels_last), got strides ", x.strides());
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
  const int64_t out = span / stride + 1;
  TORCH_CHECK(out <= kMaxExtent, name, ": output size ", out, " exceeds ", kMaxExtent,
              " (input size ", size, ", kernel ", k, ", padding ", pad, ", stride ", stride,
              ", dilation ", dil, ")");
  return out;
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

// dwconv_bn_act: a checked call. Cout = C * mult output channels.
struct DwCall {
  at::Tensor x, weight, scale, shift;
  int64_t k, stride, padding, dilation, OH, OW;
  Act act;
  int64_t mult = 1;
};

inline DwCall check_dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& scale, const at::Tensor& shift,
                                  int64_t stride, int64_t padding, int64_t dilation,
                                  c10::string_view act, const Target& target) {
  check_feature_map(x, target, /*any_layout=*/true);
  const int64_t C = x.size(1);
  for (int d = 0; d < 4; ++d) check_range(x.size(d), "x's sizes", 1);
  check_tensor(weight, "weight", target, &x);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) > 0 && weight.size(0) % C == 0 &&
                  weight.size(1) == 1 && weight.size(2) == weight.size(3),
              "weight must be (C*m, 1, k, k) with C = ", C, " and a channel multiplier m >= 1, "
              "got shape ", weight.sizes());
  const int64_t Cout = weight.size(0);
  check_range(Cout, "weight's output channels", 1);
  const int64_t k = weight.size(2);
  check_range(k, "weight's kernel size", 1);
  for (const auto& [t, name] : {std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    check_tensor(*t, name, target, &x);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == Cout, name, " must have shape (", Cout,
                "), got ", t->sizes());
  }
  check_range(stride, "stride", 1);
  check_range(padding, "padding", 0);
  check_range(dilation, "dilation", 1);
  const int64_t OH = conv_out(x.size(2), k, stride, padding, dilation, "x (height)");
  const int64_t OW = conv_out(x.size(3), k, stride, padding, dilation, "x (width)");
  return {x, weight, scale, shift, k, stride, padding, dilation, OH, OW, parse_act(act),
          Cout / C};
}

// x read through channels_last kernels: itself where its channel stride is 1, else a
// channels_last copy.
inline at::Tensor as_channels_last(const at::Tensor& x) {
  return x.stride(1) == 1 || x.size(1) == 1 ? x : x.contiguous(at::MemoryFormat::ChannelsLast);
}

template <typename T>
bool aligned16(const T* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Launches the channels_last kernel, or with `nchw` the NCHW one (false where its window does
// not fit), for x and y at any strides.
template <typename T>
bool launch_dwconv(const DwCall& a, const at::Tensor& x, const at::Tensor& taps,
                   const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y, bool nchw,
                   Stream stream) {
  constexpr int64_t V = 16 / sizeof(T);
  DwParams<T> p{
      .x = reinterpret_cast<const T*>(x.const_data_ptr()),
      .w = taps.const_data_ptr<float>(), .scale = scale.const_data_ptr<float>(),
      .shift = shift.const_data_ptr<float>(), .y = reinterpret_cast<T*>(y.mutable_data_ptr()),
      .N = x.size(0), .C = y.size(1), .H = x.size(2), .W = x.size(3),
      .OH = y.size(2), .OW = y.size(3),
      .xs_n = x.stride(0), .xs_h = x.stride(2), .xs_w = x.stride(3),
      .ys_n = y.stride(0), .ys_h = y.stride(2), .ys_w = y.stride(3),
      .k = static_cast<int>(a.k), .stride = static_cast<int>(a.stride),
      .pad = static_cast<int>(a.padding), .dil = static_cast<int>(a.dilation), .act = a.act,
      .vector = false, .xs_c = x.stride(1), .ys_c = y.stride(1),
      .mult = static_cast<int>(a.mult)};
  if (nchw) return checked_launch([&] { return launch_dwconv_bn_act_nchw(p, stream); });
  // 16-byte accesses need every channel group to start on a 16-byte boundary in x, y and the
  // fp32 taps / scale / shift (fresh contiguous tensors, aligned by the allocator), and one
  // input channel per output channel.
  p.vector = a.mult == 1 && p.C % V == 0 && aligned16(p.x) && aligned16(p.y) &&
             aligned16(p.w) && aligned16(p.scale) && aligned16(p.shift) && p.xs_n % V == 0 &&
             p.xs_h % V == 0 && p.xs_w % V == 0;
  checked_launch([&] { launch_dwconv_bn_act(p, stream); });
  return true;
}

// y = act(depthwise_conv2d(x, weight) * scale + shift) (the math is above the kernels in
// csrc/cuda/dwconv_bn_act.cuh), on the device of a checked call: x with channel stride 1 on
// the channels_last kernel (y channels_last), any other x on the NCHW kernel (y contiguous),
// or, where the NCHW kernel's window exceeds its shared memory (or a plane its grid), as a
// channels_last copy.
inline at::Tensor run_dwconv_bn_act(const DwCall& a, Stream stream) {
  const int64_t Cout = a.weight.size(0);
  // Tap-major fp32 weights: one 16-byte load gives a tap for a thread's channel group.
  const at::Tensor taps = a.weight.to(at::kFloat).reshape({Cout, a.k * a.k}).t().contiguous();
  const at::Tensor scale = a.scale.to(at::kFloat).contiguous();
  const at::Tensor shift = a.shift.to(at::kFloat).contiguous();
  const bool nchw = a.x.stride(1) != 1 && a.x.size(1) != 1;
  at::Tensor y = at::empty({a.x.size(0), Cout, a.OH, a.OW},
                           a.x.options().memory_format(nchw ? at::MemoryFormat::Contiguous
                                                            : at::MemoryFormat::ChannelsLast));
  auto run = [&](auto zero) {
    using T = decltype(zero);
    if (launch_dwconv<T>(a, a.x, taps, scale, shift, y, nchw, stream)) return;
    y = at::empty(y.sizes(), y.options().memory_format(at::MemoryFormat::ChannelsLast));
    launch_dwconv<T>(a, as_channels_last(a.x), taps, scale, shift, y, false, stream);
  };
  switch (a.x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(__half{}); break;
    default: run(__nv_bfloat16{});
  }
  return y;
}

// The gradients of dwconv_bn_act's x (x's dtype, channels_last; an x of another layout is read
// as a channels_last copy), weight, scale and shift
// (float32) for the incoming gradient `grad` of y (the math is above the kernels in
// csrc/cuda/dwconv_backward.cuh), on the device of a checked call.
// grad: the incoming gradient of a checked call's y.
inline void check_dwconv_grad(const DwCall& a, const at::Tensor& grad, const Target& target) {
  const at::Tensor& x = a.x;
  check_tensor(grad, "grad", target, &x);
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "grad must have x's dtype ",
              x.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(a.mult == 1, "weight must be (C, 1, k, k) with C = ", x.size(1), " for the "
              "backward (it has no channel multiplier kernel), got shape ", a.weight.sizes());
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({x.size(0), x.size(1), a.OH, a.OW}),
              "grad must have y's shape (", x.size(0), ", ", x.size(1), ", ", a.OH, ", ", a.OW,
              "), got ", grad.sizes());
}

inline std::vector<at::Tensor> run_dwconv_bn_act_backward(const DwCall& a, const at::Tensor& grad,
                                                          Stream stream) {
  const at::Tensor x = as_channels_last(a.x);  // the kernels are channels_last's
  const int64_t C = x.size(1), taps = a.k * a.k;
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor g = grad.contiguous(cl);
  const at::Tensor w = a.weight.to(at::kFloat).reshape({C, taps}).t().contiguous();
  const at::Tensor scale = a.scale.to(at::kFloat).contiguous();
  const at::Tensor shift = a.shift.to(at::kFloat).contiguous();
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(cl));
  const at::Tensor gu = at::empty({x.size(0) * a.OH * a.OW * C}, f32);
  const int64_t slices = (x.size(0) * a.OH * a.OW + kDwBackSlice - 1) / kDwBackSlice;
  const at::Tensor partial = at::empty({slices, taps + 2, C}, f32);
  at::Tensor gw = at::empty({taps, C}, f32), gscale = at::empty({C}, f32),
             gshift = at::empty({C}, f32);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const DwParams<T> f{
        .x = reinterpret_cast<const T*>(x.const_data_ptr()), .w = w.const_data_ptr<float>(),
        .scale = scale.const_data_ptr<float>(), .shift = shift.const_data_ptr<float>(),
        .y = nullptr, .N = x.size(0), .C = C, .H = x.size(2), .W = x.size(3), .OH = a.OH,
        .OW = a.OW, .xs_n = x.stride(0), .xs_h = x.stride(2), .xs_w = x.stride(3), .ys_n = 0,
        .ys_h = 0, .ys_w = 0, .k = static_cast<int>(a.k), .stride = static_cast<int>(a.stride),
        .pad = static_cast<int>(a.padding), .dil = static_cast<int>(a.dilation), .act = a.act,
        .vector = false};
    const DwBackParams<T> p{
        .f = f, .grad = reinterpret_cast<const T*>(g.const_data_ptr()),
        .gx = reinterpret_cast<T*>(gx.mutable_data_ptr()),
        .gu = gu.mutable_data_ptr<float>(), .partial = partial.mutable_data_ptr<float>(),
        .gw = gw.mutable_data_ptr<float>(), .gscale = gscale.mutable_data_ptr<float>(),
        .gshift = gshift.mutable_data_ptr<float>()};
    checked_launch([&] { launch_dwconv_bn_act_backward(p, stream); });
  };
  switch (x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(__half{}); break;
    default: run(__nv_bfloat16{});
  }
  return {gx, gw.t().reshape({C, 1, a.k, a.k}), gscale, gshift};
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
  check_feature_map(x, target);
  const auto dtype = x.scalar_type();
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

// The GEMM's parameters for x, w, scale, shift (and residual, y where given) of a call.
template <typename T>
PwParams<T> pw_params(const PwCall& a, const at::Tensor& x, const at::Tensor& w,
                      const at::Tensor& scale, const at::Tensor& shift,
                      const at::Tensor* residual, at::Tensor* y) {
  PwParams<T> p{
      .x = reinterpret_cast<const T*>(x.const_data_ptr()),
      .w = reinterpret_cast<const T*>(w.const_data_ptr()),
      .scale = scale.const_data_ptr<float>(), .shift = shift.const_data_ptr<float>(),
      .residual = residual ? reinterpret_cast<const T*>(residual->const_data_ptr()) : nullptr,
      .y = y ? reinterpret_cast<T*>(y->mutable_data_ptr()) : nullptr,
      .M = x.size(0) * x.size(2) * x.size(3), .K = x.size(1), .Cout = a.Cout,
      .ldx = x.size(1), .ldr = a.Cout, .ldy = a.Cout, .act = a.act, .mma = false};
  // cp.async copies 16 bytes: every row of x and w must start on a 16-byte boundary.
  p.mma = !std::is_same_v<T, float> && p.K % 8 == 0 && aligned16(p.x) && aligned16(p.w);
  return p;
}

template <typename T>
void launch_pwconv(const PwCall& a, const at::Tensor& x, const at::Tensor& w,
                   const at::Tensor& scale, const at::Tensor& shift, const at::Tensor* residual,
                   at::Tensor& y, Stream stream) {
  const PwParams<T> p = pw_params<T>(a, x, w, scale, shift, residual, &y);
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

// grad: the incoming gradient of a checked call's y (without a residual: its gradient is grad).
inline void check_pwconv_grad(const PwCall& a, const at::Tensor& grad, const Target& target) {
  const at::Tensor& x = a.x;
  check_tensor(grad, "grad", target, &x);
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "grad must have x's dtype ",
              x.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({x.size(0), a.Cout, x.size(2), x.size(3)}),
              "grad must have y's shape (", x.size(0), ", ", a.Cout, ", ", x.size(2), ", ",
              x.size(3), "), got ", grad.sizes());
}

// The gradients of pwconv_bn_act's x (x's dtype, channels_last), weight (C_out, C_in), scale
// and shift (float32) for the incoming gradient `grad` of y (the math is above the kernels in
// csrc/cuda/pwconv_backward.cuh), on the device of a checked call and its checked grad.
inline std::vector<at::Tensor> run_pwconv_bn_act_backward(const PwCall& a, const at::Tensor& grad,
                                                          Stream stream) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = a.x.contiguous(cl), g = grad.contiguous(cl);
  const int64_t K = x.size(1), M = x.size(0) * x.size(2) * x.size(3);
  const at::Tensor w = a.weight.reshape({a.Cout, K}).contiguous();
  const at::Tensor scale = a.scale.to(at::kFloat).contiguous();
  const at::Tensor shift = a.shift.to(at::kFloat).contiguous();
  const auto f32 = x.options().dtype(at::kFloat);
  const at::Tensor wt = (w.to(at::kFloat) * scale.unsqueeze(1)).t().contiguous();
  const at::Tensor ones = at::ones({K}, f32), zeros = at::zeros({K}, f32);
  const at::Tensor gz = at::empty({M, a.Cout}, f32), u = at::empty({M, a.Cout}, f32);
  at::Tensor gx = at::empty(x.sizes(), f32.memory_format(cl));
  const int64_t slices = (M + kPwBackSlice - 1) / kPwBackSlice;
  const at::Tensor partial = at::empty({slices, K + 2, a.Cout}, f32);
  at::Tensor gw = at::empty({K, a.Cout}, f32), gscale = at::empty({a.Cout}, f32),
             gshift = at::empty({a.Cout}, f32);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    PwParams<T> f = pw_params<T>(a, x, w, scale, shift, nullptr, nullptr);
    f.grad = reinterpret_cast<const T*>(g.const_data_ptr());
    f.gz = gz.mutable_data_ptr<float>();
    f.u = u.mutable_data_ptr<float>();
    const PwBackParams<T> p{
        .f = f, .wt = wt.const_data_ptr<float>(), .ones = ones.const_data_ptr<float>(),
        .zeros = zeros.const_data_ptr<float>(), .gx = gx.mutable_data_ptr<float>(),
        .partial = partial.mutable_data_ptr<float>(), .gw = gw.mutable_data_ptr<float>(),
        .gscale = gscale.mutable_data_ptr<float>(), .gshift = gshift.mutable_data_ptr<float>()};
    checked_launch([&] { launch_pwconv_bn_act_backward(p, stream); });
  };
  switch (x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(__half{}); break;
    default: run(__nv_bfloat16{});
  }
  return {gx.to(x.scalar_type()), gw.t().contiguous(), gscale, gshift};
}

// inverted_residual: a checked call. The weights list is unpacked in the order of
// csrc/cpu/block_weights.h (FASTDW_BLOCK_WEIGHTS), the one list of the block's tensors.
struct IrCall {
  at::Tensor x;
  fastdw_cpu::BlockWeights w;
  int64_t stride, k, hidden, Cout, OH, OW, squeeze;  // squeeze 0: no squeeze-excite
  Act act, se_act;
  SeGate se_gate;
  bool residual;
};

inline fastdw_cpu::BlockWeights unpack_block_weights(
    const c10::List<std::optional<at::Tensor>>& weights) {
  constexpr const char* names[] = {
#define FASTDW_NAME(name, required) #name,
      FASTDW_BLOCK_WEIGHTS(FASTDW_NAME)
#undef FASTDW_NAME
  };
  constexpr size_t count = sizeof(names) / sizeof(names[0]);
  TORCH_CHECK(weights.size() == count, "weights must have ", count, " entries (expand_w, ..., "
              "se_b2 as csrc/cpu/block_weights.h lists them), got ", weights.size());
  fastdw_cpu::BlockWeights w;
  size_t i = 0;
  auto take = [&](auto& field) {
    std::optional<at::Tensor> t = weights.get(i);
    if constexpr (std::is_same_v<std::decay_t<decltype(field)>, at::Tensor>) {
      TORCH_CHECK(t.has_value() && t->defined(), names[i], " is required (weights[", i,
                  "]), got None");
      field = *t;
    } else if (t.has_value() && t->defined()) {
      field = *t;
    }
    ++i;
  };
#define FASTDW_TAKE(name, required) take(w.name);
  FASTDW_BLOCK_WEIGHTS(FASTDW_TAKE)
#undef FASTDW_TAKE
  return w;
}

// A 1x1 conv weight, (rows, cols) or (rows, cols, 1, 1), with x's dtype, as a matrix.
inline at::Tensor check_one_by_one(const at::Tensor& w, const char* name, int64_t cols,
                                   const at::Tensor& x, const Target& target) {
  check_tensor(w, name, target, &x);
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), name, " must have x's dtype ",
              x.scalar_type(), ", got ", w.scalar_type());
  TORCH_CHECK((w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) &&
                  w.size(1) == cols && w.size(0) > 0,
              name, " must be (rows, ", cols, ") or (rows, ", cols, ", 1, 1), got shape ",
              w.sizes());
  check_range(w.size(0), name, 1);
  return w.reshape({w.size(0), cols});
}

inline void check_vector(const at::Tensor& t, const char* name, int64_t length,
                         const at::Tensor& x, const Target& target) {
  check_tensor(t, name, target, &x);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == length, name, " must have shape (", length,
              "), got ", t.sizes());
}

inline IrCall check_inverted_residual(const at::Tensor& x,
                                      const c10::List<std::optional<at::Tensor>>& weights,
                                      int64_t stride, c10::string_view act, bool residual,
                                      c10::string_view se_act, c10::string_view se_gate,
                                      const Target& target) {
  check_feature_map(x, target);
  const auto dtype = x.scalar_type();
  for (int d = 0; d < 4; ++d) check_range(x.size(d), "x's sizes", 1);
  fastdw_cpu::BlockWeights w = unpack_block_weights(weights);
  const int64_t Cin = x.size(1);
  int64_t hidden = Cin;
  if (w.expand_w.has_value()) {
    w.expand_w = check_one_by_one(*w.expand_w, "expand_w", Cin, x, target);
    hidden = w.expand_w->size(0);
    for (const auto& [t, name] : {std::pair{&w.expand_scale, "expand_scale"},
                                  std::pair{&w.expand_shift, "expand_shift"}}) {
      TORCH_CHECK(t->has_value(), name, " must be a tensor of shape (", hidden, ") with "
                  "expand_w, got None");
      check_vector(**t, name, hidden, x, target);
    }
  } else {
    TORCH_CHECK(!w.expand_scale.has_value() && !w.expand_shift.has_value(),
                "expand_scale and expand_shift must be None without expand_w");
  }
  check_tensor(w.dw_w, "dw_w", target, &x);
  TORCH_CHECK(w.dw_w.scalar_type() == dtype, "dw_w must have x's dtype ", dtype, ", got ",
              w.dw_w.scalar_type());
  TORCH_CHECK(w.dw_w.dim() == 4 && w.dw_w.size(0) == hidden && w.dw_w.size(1) == 1 &&
                  w.dw_w.size(2) == w.dw_w.size(3) && w.dw_w.size(2) % 2 == 1,
              "dw_w must be (", hidden, ", 1, k, k) with k odd, got shape ", w.dw_w.sizes());
  const int64_t k = w.dw_w.size(2);
  check_range(k, "dw_w's kernel size", 1);
  check_vector(w.dw_scale, "dw_scale", hidden, x, target);
  check_vector(w.dw_shift, "dw_shift", hidden, x, target);
  w.project_w = check_one_by_one(w.project_w, "project_w", hidden, x, target);
  const int64_t Cout = w.project_w.size(0);
  check_vector(w.project_scale, "project_scale", Cout, x, target);
  check_vector(w.project_shift, "project_shift", Cout, x, target);
  int64_t squeeze = 0;
  const bool se = w.se_w1.has_value() || w.se_b1.has_value() || w.se_w2.has_value() ||
                  w.se_b2.has_value();
  if (se) {
    TORCH_CHECK(w.se_w1.has_value() && w.se_b1.has_value() && w.se_w2.has_value() &&
                    w.se_b2.has_value(),
                "a squeeze-excite needs all of se_w1, se_b1, se_w2, se_b2, or none");
    check_tensor(*w.se_w1, "se_w1", target, &x);
    TORCH_CHECK((w.se_w1->dim() == 2 || (w.se_w1->dim() == 4 && w.se_w1->size(2) == 1 &&
                                         w.se_w1->size(3) == 1)) &&
                    w.se_w1->size(1) == hidden && w.se_w1->size(0) > 0,
                "se_w1 must be (squeeze, ", hidden, ") or (squeeze, ", hidden, ", 1, 1), got "
                "shape ", w.se_w1->sizes());
    squeeze = w.se_w1->size(0);
    check_range(squeeze, "se_w1", 1);
    w.se_w1 = w.se_w1->reshape({squeeze, hidden});
    check_vector(*w.se_b1, "se_b1", squeeze, x, target);
    check_tensor(*w.se_w2, "se_w2", target, &x);
    TORCH_CHECK((w.se_w2->dim() == 2 || (w.se_w2->dim() == 4 && w.se_w2->size(2) == 1 &&
                                         w.se_w2->size(3) == 1)) &&
                    w.se_w2->size(0) == hidden && w.se_w2->size(1) == squeeze,
                "se_w2 must be (", hidden, ", ", squeeze, ") or (", hidden, ", ", squeeze,
                ", 1, 1), got shape ", w.se_w2->sizes());
    w.se_w2 = w.se_w2->reshape({hidden, squeeze});
    check_vector(*w.se_b2, "se_b2", hidden, x, target);
  }
  check_range(stride, "stride", 1);
  const Act a = parse_act(act);
  const Act inner = parse_act(se_act);
  TORCH_CHECK(se_gate == "hardsigmoid" || se_gate == "sigmoid",
              "se_gate must be one of hardsigmoid, sigmoid; got '", std::string(se_gate), "'");
  const SeGate gate = se_gate == "sigmoid" ? kGateSigmoid : kGateHardsigmoid;
  TORCH_CHECK(!residual || (stride == 1 && Cout == Cin), "residual needs stride 1 and C_out == "
              "C_in, got stride ", stride, ", C_in ", Cin, ", C_out ", Cout);
  const int64_t pad = (k - 1) / 2;
  const int64_t OH = conv_out(x.size(2), k, stride, pad, 1, "x (height)");
  const int64_t OW = conv_out(x.size(3), k, stride, pad, 1, "x (width)");
  return {x, w, stride, k, hidden, Cout, OH, OW, squeeze, a, inner, gate, residual};
}

// The fused kernel, or with d and partial defined the first kernel of a squeeze-excite block;
// false where its shared memory does not fit.
template <typename T>
bool launch_inverted(const IrCall& a, const at::Tensor& ew, const at::Tensor& es,
                     const at::Tensor& eb, const at::Tensor& taps, const at::Tensor& ds,
                     const at::Tensor& db, const at::Tensor& pw, const at::Tensor& ps,
                     const at::Tensor& pb, at::Tensor& y, at::Tensor& d, at::Tensor& partial,
                     Stream stream) {
  const at::Tensor& x = a.x;
  auto f32 = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; };
  const IrParams<T> p{
      .x = reinterpret_cast<const T*>(x.const_data_ptr()),
      .ew = ew.defined() ? reinterpret_cast<const T*>(ew.const_data_ptr()) : nullptr,
      .es = f32(es), .eb = f32(eb), .dw = f32(taps), .ds = f32(ds), .db = f32(db),
      .pw = reinterpret_cast<const T*>(pw.const_data_ptr()), .ps = f32(ps), .pb = f32(pb),
      .y = reinterpret_cast<T*>(y.mutable_data_ptr()),
      .N = x.size(0), .Cin = x.size(1), .H = x.size(2), .W = x.size(3), .hidden = a.hidden,
      .Cout = a.Cout, .OH = a.OH, .OW = a.OW,
      .xs_n = x.stride(0), .xs_h = x.stride(2), .xs_w = x.stride(3),
      .ys_n = y.stride(0), .ys_h = y.stride(2), .ys_w = y.stride(3),
      .k = static_cast<int>(a.k), .stride = static_cast<int>(a.stride),
      .pad = static_cast<int>((a.k - 1) / 2), .act = a.act, .residual = a.residual,
      .d = d.defined() ? reinterpret_cast<T*>(d.mutable_data_ptr()) : nullptr,
      .partial = partial.defined() ? partial.mutable_data_ptr<float>() : nullptr};
  return checked_launch([&] { return launch_inverted_residual(p, stream); });
}

// The second kernel of a squeeze-excite block: y from d and the per-tile sums `partial`
// (N, tiles, hidden); false where its gate does not fit shared memory.
template <typename T>
bool launch_se(const IrCall& a, const at::Tensor& d, const at::Tensor& partial,
               const at::Tensor& pw, const at::Tensor& ps, const at::Tensor& pb, at::Tensor& y,
               Stream stream) {
  const auto& w = a.w;
  const at::Tensor w1 = w.se_w1->to(at::kFloat).contiguous(), b1 = w.se_b1->to(at::kFloat);
  const at::Tensor w2 = w.se_w2->to(at::kFloat).contiguous(), b2 = w.se_b2->to(at::kFloat);
  const at::Tensor b1c = b1.contiguous(), b2c = b2.contiguous();
  const at::Tensor& x = a.x;
  const SeParams<T> p{
      .d = reinterpret_cast<const T*>(d.const_data_ptr()),
      .partial = partial.const_data_ptr<float>(),
      .w1 = w1.const_data_ptr<float>(), .b1 = b1c.const_data_ptr<float>(),
      .w2 = w2.const_data_ptr<float>(), .b2 = b2c.const_data_ptr<float>(),
      .pw = reinterpret_cast<const T*>(pw.const_data_ptr()),
      .ps = ps.const_data_ptr<float>(), .pb = pb.const_data_ptr<float>(),
      .x = reinterpret_cast<const T*>(x.const_data_ptr()),
      .y = reinterpret_cast<T*>(y.mutable_data_ptr()),
      .N = x.size(0), .hidden = a.hidden, .squeeze = a.squeeze, .Cout = a.Cout, .OH = a.OH,
      .OW = a.OW, .tiles = partial.size(1),
      .xs_n = x.stride(0), .xs_h = x.stride(2), .xs_w = x.stride(3),
      .ys_n = y.stride(0), .ys_h = y.stride(2), .ys_w = y.stride(3),
      .se_act = a.se_act, .se_gate = a.se_gate, .residual = a.residual};
  return checked_launch([&] { return launch_se_gate_project(p, stream); });
}

// An activation (fastdw.contract.ACTIVATIONS) as ATen computes it.
inline at::Tensor activate_aten(const at::Tensor& t, Act act) {
  switch (act) {
    case kRelu: return at::relu(t);
    case kRelu6: return at::hardtanh(t, 0, 6);
    case kHardswish: return at::hardswish(t);
    case kHardsigmoid: return at::hardsigmoid(t);
    case kSilu: return at::silu(t);
    default: return t;
  }
}

// The second kernel's work on ATen ops where its gate does not fit shared memory (tens of
// thousands of hidden channels): the gate in float32 from the per-tile sums, d times the gate
// rounded to x's dtype, then the project and the residual as pwconv_bn_act.
inline at::Tensor se_in_stages(const IrCall& a, const at::Tensor& d, const at::Tensor& partial,
                               const at::Tensor& pw, const at::Tensor& ps, const at::Tensor& pb,
                               Stream stream) {
  const auto& w = a.w;
  const at::Tensor pooled = partial.sum(1) / static_cast<double>(a.OH * a.OW);  // (N, hidden)
  const at::Tensor z = activate_aten(
      at::addmm(w.se_b1->to(at::kFloat), pooled, w.se_w1->to(at::kFloat).t()), a.se_act);
  const at::Tensor s = at::addmm(w.se_b2->to(at::kFloat), z, w.se_w2->to(at::kFloat).t());
  const at::Tensor gate = a.se_gate == kGateSigmoid ? at::sigmoid(s) : at::hardsigmoid(s);
  const at::Tensor h = (d.to(at::kFloat) * gate.unsqueeze(-1).unsqueeze(-1))
                           .to(d.scalar_type())
                           .contiguous(at::MemoryFormat::ChannelsLast);
  return run_pwconv_bn_act({h, pw, ps, pb,
                            a.residual ? c10::optional<at::Tensor>(a.x) : c10::nullopt, a.Cout,
                            kNone}, stream);
}

// The block's hidden map up to the depthwise through the building blocks' kernels (pwconv,
// dwconv), rounded to x's dtype between the stages: what the fused kernel's launcher refuses (a
// window over the shared-memory limit).
inline at::Tensor depthwise_in_stages(const IrCall& a, Stream stream) {
  const auto& w = a.w;
  at::Tensor h = a.x;
  if (w.expand_w.has_value())
    h = run_pwconv_bn_act({h, *w.expand_w, *w.expand_scale, *w.expand_shift, c10::nullopt,
                           a.hidden, a.act}, stream);
  const int64_t pad = (a.k - 1) / 2;
  return run_dwconv_bn_act({h, w.dw_w, w.dw_scale, w.dw_shift, a.k, a.stride, pad, 1, a.OH,
                            a.OW, a.act}, stream);
}

// The block (the math is above the kernels in csrc/cuda/inverted_residual.cuh), channels_last
// out, on the device of a checked call: the fused kernel (with a squeeze-excite, the first of
// two) where its shared memory fits, else the building blocks up to the depthwise; the second
// kernel where its gate fits, else ATen ops (se_in_stages).
inline at::Tensor run_inverted_residual(const IrCall& a, Stream stream) {
  const auto& w = a.w;
  auto f32 = [](const c10::optional<at::Tensor>& t) {
    return t.has_value() ? t->to(at::kFloat).contiguous() : at::Tensor();
  };  // absent: a null pointer for the kernel
  const at::Tensor ew = w.expand_w.has_value() ? w.expand_w->contiguous() : at::Tensor();
  const at::Tensor es = f32(w.expand_scale), eb = f32(w.expand_shift);
  // Tap-major fp32 depthwise weights, as dwconv_bn_act's.
  const at::Tensor taps = w.dw_w.to(at::kFloat).reshape({a.hidden, a.k * a.k}).t().contiguous();
  const at::Tensor ds = f32(w.dw_scale), db = f32(w.dw_shift);
  const at::Tensor pw = w.project_w.contiguous();
  const at::Tensor ps = f32(w.project_scale), pb = f32(w.project_shift);
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor y = at::empty({a.x.size(0), a.Cout, a.OH, a.OW}, a.x.options().memory_format(cl));
  // With a squeeze-excite: d (N, OH, OW, hidden) and the per-tile sums of the first kernel.
  at::Tensor d, partial;
  if (a.squeeze > 0) {
    const int64_t tiles = ((a.OH + kIrTile - 1) / kIrTile) * ((a.OW + kIrTile - 1) / kIrTile);
    d = at::empty({a.x.size(0), a.hidden, a.OH, a.OW}, a.x.options().memory_format(cl));
    partial = at::empty({a.x.size(0), tiles, a.hidden}, a.x.options().dtype(at::kFloat));
  }
  auto run = [&](auto zero) {
    using T = decltype(zero);
    if (!launch_inverted<T>(a, ew, es, eb, taps, ds, db, pw, ps, pb, y, d, partial, stream)) {
      if (a.squeeze == 0) {
        const at::Tensor h = depthwise_in_stages(a, stream);
        y = run_pwconv_bn_act({h, pw, ps, pb,
                               a.residual ? c10::optional<at::Tensor>(a.x) : c10::nullopt,
                               a.Cout, kNone}, stream);
        return;
      }
      d = depthwise_in_stages(a, stream);
      partial = d.to(at::kFloat).sum({2, 3}).unsqueeze(1);  // one "tile": the whole image
    }
    if (a.squeeze > 0 && !launch_se<T>(a, d, partial, pw, ps, pb, y, stream))
      y = se_in_stages(a, d, partial, pw, ps, pb, stream);
  };
  switch (a.x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(__half{}); break;
    default: run(__nv_bfloat16{});
  }
  return y;
}

}  // namespace fastdw_cuda
