// dwconv_bn_act forward on channels_last (NHWC) tensors: the kernel and its host launcher
// (declared with its parameters in csrc/cuda/launchers.h), one source for nvcc
// (csrc/cuda/kernels.cu) and for the emulator (csrc/cuda/emulated.cpp).
#pragma once

#include "epilogue.cuh"

namespace fastdw_cuda {

// 16 bytes of T: the unit of a vector access.
template <typename T>
struct alignas(16) Pack {
  T v[16 / sizeof(T)];
};

// out[0..V) = p[0..V) as float; whole 16-byte packs when `full`, else element by element with
// the channels from `valid` on read as 0 (the last, partial channel group).
template <int V, typename T>
FASTDW_DEVICE void load_channels(const T* p, bool full, int valid, float (&out)[V]) {
  constexpr int kPer = 16 / sizeof(T);
  if (full) {
#pragma unroll
    for (int q = 0; q < V / kPer; ++q) {
      const Pack<T> pack = load_vec<Pack<T>>(p + q * kPer);
#pragma unroll
      for (int e = 0; e < kPer; ++e) out[q * kPer + e] = to_float(pack.v[e]);
    }
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = v < valid ? to_float(p[v]) : 0.f;
  }
}

template <int V, typename T>
FASTDW_DEVICE void store_channels(T* p, bool full, int valid, const float (&in)[V]) {
  static_assert(V * sizeof(T) == 16, "a thread stores one 16-byte pack");
  if (full) {
    Pack<T> pack;
#pragma unroll
    for (int v = 0; v < V; ++v) pack.v[v] = from_float<T>(in[v]);
    store_vec(p, pack);
  } else {
#pragma unroll  // a fixed trip count keeps `in` in registers (no stack frame)
    for (int v = 0; v < V; ++v)
      if (v < valid) p[v] = from_float<T>(in[v]);
  }
}

// One thread computes one output pixel for V = 16 / sizeof(T) consecutive channels (4 fp32, 8
// fp16/bf16: one 16-byte load per tap), so a warp reads whole contiguous runs of a pixel's
// channels. A block is blockDim.x channel groups x blockDim.y consecutive output pixels.
//
//   y[n,oh,ow,c] = act(fmaf(sum_{i,j < k} x[n, oh*s - p + i*d, ow*s - p + j*d, c] * w[i,j,c],
//                           scale[c], shift[c]))
//
// with x read as 0 outside the image. The sum runs over (i, j) in row-major order, each term
// added with fmaf in fp32, so nvcc and g++ round alike. K, S > 0 fix k and the stride (dilation
// 1) at compile time for the common shapes, and run only where every channel group is whole
// and 16-byte aligned (p.vector); K = S = 0 is the generic path for everything else, with the
// element-wise accesses. Offsets are int64: inputs of 2^31 elements or more index correctly.
template <typename T, int K, int S>
__global__ void __launch_bounds__(256) dwconv_bn_act_nhwc(const DwParams<T> p) {
  constexpr int V = 16 / sizeof(T);
  const int k = K ? K : p.k, s = S ? S : p.stride, d = K ? 1 : p.dil;
  const int64_t c0 = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  const int64_t pixel = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (c0 >= p.C || pixel >= p.N * p.OH * p.OW) return;
  const int64_t ow = pixel % p.OW, oh = pixel / p.OW % p.OH, n = pixel / (p.OW * p.OH);
  const bool full = K > 0 || (p.vector && c0 + V <= p.C);  // compile-time true when K > 0
  const int valid = p.C - c0 < V ? static_cast<int>(p.C - c0) : V;

  float acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = 0.f;
  const T* xn = p.x + n * p.xs_n + c0;
#pragma unroll(K > 0 ? K : 1)
  for (int i = 0; i < k; ++i) {
    const int64_t ih = oh * s - p.pad + int64_t(i) * d;
    if (ih < 0 || ih >= p.H) continue;
#pragma unroll(K > 0 ? K : 1)
    for (int j = 0; j < k; ++j) {
      const int64_t iw = ow * s - p.pad + int64_t(j) * d;
      if (iw < 0 || iw >= p.W) continue;
      float xv[V], wv[V];
      load_channels(xn + ih * p.xs_h + iw * p.xs_w, full, valid, xv);
      load_channels(p.w + (int64_t(i) * k + j) * p.C + c0, full, valid, wv);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = fmaf(xv[v], wv[v], acc[v]);
    }
  }
  float scale[V], shift[V];
  load_channels(p.scale + c0, full, valid, scale);
  load_channels(p.shift + c0, full, valid, shift);
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = activate(fmaf(acc[v], scale[v], shift[v]), p.act);
  store_channels(p.y + n * p.ys_n + oh * p.ys_h + ow * p.ys_w + c0, full, valid, acc);
}

template <typename T>
using DwKernel = void (*)(DwParams<T>);

// The instantiation a launch runs: k in {3, 5, 7} x stride {1, 2} at dilation 1 on whole
// aligned channel groups, else generic.
template <typename T>
DwKernel<T> dwconv_bn_act_kernel(const DwParams<T>& p) {
  if (p.vector && p.dil == 1 && (p.stride == 1 || p.stride == 2)) {
    const bool s1 = p.stride == 1;
    switch (p.k) {
      case 3: return s1 ? dwconv_bn_act_nhwc<T, 3, 1> : dwconv_bn_act_nhwc<T, 3, 2>;
      case 5: return s1 ? dwconv_bn_act_nhwc<T, 5, 1> : dwconv_bn_act_nhwc<T, 5, 2>;
      case 7: return s1 ? dwconv_bn_act_nhwc<T, 7, 1> : dwconv_bn_act_nhwc<T, 7, 2>;
      default: break;
    }
  }
  return dwconv_bn_act_nhwc<T, 0, 0>;
}

// 256 threads: as many channel groups as the channels need, up to 16 (64 fp32 / 128 16-bit
// channels), the rest over pixels.
template <typename T>
Launch dwconv_bn_act_launch(const DwParams<T>& p, Stream stream) {
  constexpr int V = 16 / sizeof(T);
  const int64_t groups = (p.C + V - 1) / V, pixels = p.N * p.OH * p.OW;
  unsigned bx = 1;
  while (bx < 16 && bx < groups) bx *= 2;
  const unsigned by = 256 / bx;
  const int64_t gx = (pixels + by - 1) / by, gy = (groups + bx - 1) / bx;
  if (gx > 0x7fffffff || gy > 65535)
    throw std::invalid_argument("dwconv_bn_act: " + std::to_string(pixels) + " output pixels x " +
                                std::to_string(p.C) + " channels exceed the grid limits");
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(bx, by), 0, stream};
}

template <typename T>
void launch_dwconv_bn_act(const DwParams<T>& p, Stream stream) {
  launch(dwconv_bn_act_kernel(p), dwconv_bn_act_launch(p, stream), p);
}

}  // namespace fastdw_cuda
