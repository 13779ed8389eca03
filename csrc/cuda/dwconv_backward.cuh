// dwconv_bn_act backward on channels_last tensors: four kernels and their host launcher
// (declared with its parameters in csrc/cuda/launchers.h), one source for nvcc
// (csrc/cuda/kernels.cu) and for the emulator (csrc/cuda/emulated.cpp).
//
// The forward (csrc/cuda/dwconv_bn_act.cuh) is y = act(z), z = u scale + shift, u the depthwise
// conv of x with taps w (zero padding p, stride s, dilation d). For the incoming gradient g:
//
//   gz[n,oh,ow,c]  = g[n,oh,ow,c] act'(z[n,oh,ow,c])        (u recomputed from x and w)
//   gshift[c]      = sum_{n,oh,ow} gz          gscale[c] = sum_{n,oh,ow} gz u
//   gu             = gz scale[c]
//   gx[n,ih,iw,c]  = sum_{i,j: ih = oh s - p + i d, iw = ow s - p + j d} gu[n,oh,ow,c] w[i,j,c]
//   gw[i,j,c]      = sum_{n,oh,ow} gu[n,oh,ow,c] x[n, oh s - p + i d, ow s - p + j d, c]
//
// in fp32 with fmaf, every sum in a fixed order: no float atomics, so the gradients are the
// same bits run to run. The sums over pixels are split into slices of kDwBackSlice
// consecutive output pixels (n, oh, ow row-major); each slice's sums go to `partial` and
// dw_backward_sum adds the slices in order:
//   1. dw_backward_z: gu, and each slice's sums of gz and gz u;
//   2. dw_backward_input: gx, each input pixel gathering the taps that read it, in (i, j) order;
//   3. dw_backward_weight: each slice's sums of gu x for every tap;
//   4. dw_backward_sum: gw, gscale, gshift from the slices.
// A thread owns one channel: blocks are 32 channels x 8 rows of threads.
#pragma once

#include <stdexcept>
#include <string>

#include "epilogue.cuh"

namespace fastdw_cuda {

inline constexpr int kDwBackChannels = 32, kDwBackRows = 8,
                     kDwBackThreads = kDwBackChannels * kDwBackRows;

// Grid: x = slices, y = channel groups of 32. Row ty of a block takes pixels ty, ty + 8, ...
// of the slice; its sums reach the slice's through shared memory in row order.
template <typename T>
__global__ void __launch_bounds__(kDwBackThreads, 1) dw_backward_z(const DwBackParams<T> p) {
  FASTDW_SHARED(float, sums, 2 * kDwBackThreads);
  const DwParams<T>& f = p.f;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.y) * kDwBackChannels + tx;
  const int64_t P = f.N * f.OH * f.OW, first = int64_t(blockIdx.x) * kDwBackSlice;
  float sum_gz = 0.f, sum_gzu = 0.f;
  if (c < f.C) {
    const float scale = f.scale[c], shift = f.shift[c];
#pragma unroll 1  // the taps' loops are the body; unrolling the pixels only costs registers
    for (int r = ty; r < kDwBackSlice && first + r < P; r += kDwBackRows) {
      const int64_t pixel = first + r;
      const int64_t ow = pixel % f.OW, oh = pixel / f.OW % f.OH, n = pixel / (f.OW * f.OH);
      float u = 0.f;
      for (int i = 0; i < f.k; ++i) {
        const int64_t ih = oh * f.stride - f.pad + int64_t(i) * f.dil;
        if (ih < 0 || ih >= f.H) continue;
        for (int j = 0; j < f.k; ++j) {
          const int64_t iw = ow * f.stride - f.pad + int64_t(j) * f.dil;
          if (iw < 0 || iw >= f.W) continue;
          u = fmaf(to_float(f.x[n * f.xs_n + ih * f.xs_h + iw * f.xs_w + c]),
                   f.w[(int64_t(i) * f.k + j) * f.C + c], u);
        }
      }
      const float gz = activate_grad(to_float(p.grad[pixel * f.C + c]), fmaf(u, scale, shift),
                                     f.act);
      sum_gz += gz;
      sum_gzu = fmaf(gz, u, sum_gzu);
      p.gu[pixel * f.C + c] = gz * scale;
    }
  }
  sums[ty * kDwBackChannels + tx] = sum_gz;
  sums[kDwBackThreads + ty * kDwBackChannels + tx] = sum_gzu;
  __syncthreads();
  if (ty == 0 && c < f.C) {
    float gz = 0.f, gzu = 0.f;
    for (int r = 0; r < kDwBackRows; ++r) {
      gz += sums[r * kDwBackChannels + tx];
      gzu += sums[kDwBackThreads + r * kDwBackChannels + tx];
    }
    const int64_t taps = int64_t(f.k) * f.k;
    p.partial[(int64_t(blockIdx.x) * (taps + 2) + taps) * f.C + c] = gzu;
    p.partial[(int64_t(blockIdx.x) * (taps + 2) + taps + 1) * f.C + c] = gz;
  }
}

// Grid: x = input pixels / 8, y = channel groups of 32.
template <typename T>
__global__ void __launch_bounds__(kDwBackThreads) dw_backward_input(const DwBackParams<T> p) {
  const DwParams<T>& f = p.f;
  const int64_t c = int64_t(blockIdx.y) * kDwBackChannels + threadIdx.x;
  const int64_t pixel = int64_t(blockIdx.x) * kDwBackRows + threadIdx.y;
  if (c >= f.C || pixel >= f.N * f.H * f.W) return;
  const int64_t iw = pixel % f.W, ih = pixel / f.W % f.H, n = pixel / (f.W * f.H);
  float acc = 0.f;
  for (int i = 0; i < f.k; ++i) {
    const int64_t oy = ih + f.pad - int64_t(i) * f.dil;  // oh * stride
    if (oy < 0 || oy % f.stride != 0 || oy / f.stride >= f.OH) continue;
    for (int j = 0; j < f.k; ++j) {
      const int64_t ox = iw + f.pad - int64_t(j) * f.dil;
      if (ox < 0 || ox % f.stride != 0 || ox / f.stride >= f.OW) continue;
      acc = fmaf(p.gu[((n * f.OH + oy / f.stride) * f.OW + ox / f.stride) * f.C + c],
                 f.w[(int64_t(i) * f.k + j) * f.C + c], acc);
    }
  }
  p.gx[pixel * f.C + c] = from_float<T>(acc);
}

// Grid: x = slices, y = channel groups of 32, z = taps / 8 rounded up: thread (c, tap) sums the
// slice's pixels in order.
template <typename T>
__global__ void __launch_bounds__(kDwBackThreads) dw_backward_weight(const DwBackParams<T> p) {
  const DwParams<T>& f = p.f;
  const int64_t c = int64_t(blockIdx.y) * kDwBackChannels + threadIdx.x;
  const int tap = blockIdx.z * kDwBackRows + threadIdx.y, taps = f.k * f.k;
  if (c >= f.C || tap >= taps) return;
  const int i = tap / f.k, j = tap % f.k;
  const int64_t P = f.N * f.OH * f.OW, first = int64_t(blockIdx.x) * kDwBackSlice;
  float acc = 0.f;
  for (int64_t pixel = first; pixel < first + kDwBackSlice && pixel < P; ++pixel) {
    const int64_t ow = pixel % f.OW, oh = pixel / f.OW % f.OH, n = pixel / (f.OW * f.OH);
    const int64_t ih = oh * f.stride - f.pad + int64_t(i) * f.dil;
    const int64_t iw = ow * f.stride - f.pad + int64_t(j) * f.dil;
    if (ih < 0 || ih >= f.H || iw < 0 || iw >= f.W) continue;
    acc = fmaf(p.gu[pixel * f.C + c], to_float(f.x[n * f.xs_n + ih * f.xs_h + iw * f.xs_w + c]),
               acc);
  }
  p.partial[(int64_t(blockIdx.x) * (taps + 2) + tap) * f.C + c] = acc;
}

// Grid: x = (taps + 2) * C / 256 rounded up: each output element adds its slices in order.
__global__ void __launch_bounds__(kDwBackThreads) dw_backward_sum(const float* partial,
                                                                  int64_t slices, int64_t count,
                                                                  float* gw, float* gscale,
                                                                  float* gshift, int64_t C) {
  const int64_t e = int64_t(blockIdx.x) * kDwBackThreads + threadIdx.x;
  if (e >= count) return;
  float acc = 0.f;
  for (int64_t s = 0; s < slices; ++s) acc += partial[s * count + e];
  const int64_t weights = count - 2 * C;
  if (e < weights) gw[e] = acc;
  else if (e < weights + C) gscale[e - weights] = acc;
  else gshift[e - weights - C] = acc;
}

// Launches dw_backward_sum over `count` = (weights per channel + 2) * C partial sums per slice.
inline void launch_slice_sum(const float* partial, int64_t slices, int64_t count, float* gw,
                             float* gscale, float* gshift, int64_t C, Stream stream) {
  launch(dw_backward_sum,
         Launch{dim3(static_cast<unsigned>((count + kDwBackThreads - 1) / kDwBackThreads)),
                dim3(kDwBackThreads), 0, stream},
         partial, slices, count, gw, gscale, gshift, C);
}

template <typename T>
void launch_dwconv_bn_act_backward(const DwBackParams<T>& p, Stream stream) {
  const DwParams<T>& f = p.f;
  const int64_t slices = (f.N * f.OH * f.OW + kDwBackSlice - 1) / kDwBackSlice;
  const int64_t groups = (f.C + kDwBackChannels - 1) / kDwBackChannels;
  const int64_t inputs = (f.N * f.H * f.W + kDwBackRows - 1) / kDwBackRows;
  const int64_t taps = int64_t(f.k) * f.k, count = (taps + 2) * f.C;
  if (slices > 0x7fffffff || inputs > 0x7fffffff || groups > 65535 ||
      (taps + kDwBackRows - 1) / kDwBackRows > 65535)
    throw std::invalid_argument("dwconv_bn_act backward: the shape exceeds the grid limits");
  const dim3 block(kDwBackChannels, kDwBackRows);
  const unsigned gy = static_cast<unsigned>(groups);
  launch(dw_backward_z<T>, Launch{dim3(static_cast<unsigned>(slices), gy), block, 0, stream},
         p);
  launch(dw_backward_input<T>,
         Launch{dim3(static_cast<unsigned>(inputs), gy), block, 0, stream}, p);
  launch(dw_backward_weight<T>,
         Launch{dim3(static_cast<unsigned>(slices), gy,
                     static_cast<unsigned>((taps + kDwBackRows - 1) / kDwBackRows)),
                block, 0, stream},
         p);
  launch_slice_sum(p.partial, slices, count, p.gw, p.gscale, p.gshift, f.C, stream);
}

}  // namespace fastdw_cuda
