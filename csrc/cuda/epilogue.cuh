// What every fastdw CUDA kernel does with its fp32 results and its storage types: conversions
// between T (float, __half, __nv_bfloat16) and float, and the activations of the epilogue,
// chosen at run time (one instantiation serves every activation).
#pragma once

#include "portable.h"

namespace fastdw_cuda {

FASTDW_DEVICE float to_float(float v) { return v; }
FASTDW_DEVICE float to_float(__half v) { return __half2float(v); }
FASTDW_DEVICE float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
FASTDW_DEVICE T from_float(float v);
template <>
FASTDW_DEVICE float from_float<float>(float v) { return v; }
template <>
FASTDW_DEVICE __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
FASTDW_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// torch's activations, NaN kept: each clamp applies only where its comparison holds, and a
// comparison with NaN is false.
FASTDW_DEVICE float relu6(float v) {
  v = v < 0.f ? 0.f : v;
  return v > 6.f ? 6.f : v;
}
FASTDW_DEVICE float activate(float v, int act) {
  switch (act) {
    case kRelu: return v < 0.f ? 0.f : v;
    case kRelu6: return relu6(v);
    case kHardswish: return v * relu6(v + 3.f) * (1.f / 6.f);
    case kHardsigmoid: return relu6(v + 3.f) * (1.f / 6.f);
    case kSilu: return v / (1.f + expf(-v));
    default: return v;
  }
}

// g times d activate(z, act) / dz, as torch's backward ops (threshold_backward,
// hardtanh_backward, hardswish_backward, hardsigmoid_backward, silu_backward) give it. At a NaN
// z, as autograd's vectorised CPU kernels (and fastdw's other backends): relu passes g on,
// relu6 and hardsigmoid give 0, hardswish and silu NaN.
FASTDW_DEVICE float activate_grad(float g, float z, int act) {
  switch (act) {
    case kRelu: return z <= 0.f ? 0.f : g;
    case kRelu6: return z > 0.f && z < 6.f ? g : 0.f;
    case kHardswish: return z < -3.f ? 0.f : z <= 3.f ? g * (z / 3.f + 0.5f) : z > 3.f ? g : z;
    case kHardsigmoid: return z > -3.f && z < 3.f ? g / 6.f : 0.f;
    case kSilu: {
      const float sig = 1.f / (1.f + expf(-z));
      return g * sig * (1.f + z * (1.f - sig));
    }
    default: return g;
  }
}

}  // namespace fastdw_cuda
