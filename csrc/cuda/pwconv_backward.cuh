// pwconv_bn_act backward on channels_last tensors: three kernels of its own and two it shares,
// and their host launcher (declared with its parameters in csrc/cuda/launchers.h), one source
// for nvcc (csrc/cuda/kernels.cu) and for the emulator (csrc/cuda/emulated.cpp).
//
// The forward (csrc/cuda/pwconv_bn_act.cuh) is y = act(z), z = u scale + shift, u = x w^T over
// pixels m, input channels k, output channels n. For the incoming gradient g:
//
//   gz[m,n]    = g[m,n] act'(z[m,n])            gu[m,n] = gz[m,n] scale[n]
//   gshift[n]  = sum_m gz[m,n]                  gscale[n] = sum_m gz[m,n] u[m,n]
//   gx[m,k]    = sum_n gz[m,n] (scale[n] w[n,k])
//   gw[n,k]    = sum_m gu[m,n] x[m,k]
//
// in fp32 with fmaf, every sum over pixels in a fixed order: no float atomics, so the gradients
// are the same bits run to run. The stages:
//   1. the forward's GEMM kernels (pwconv_bn_act_ffma / _mma, tensor cores for fp16/bf16)
//      recompute u and write u and gz (PwParams::grad set);
//   2. gx: the fp32 FFMA GEMM of gz with wt = (scale w)^T;
//   3. pw_backward_bn: per slice of kPwBackSlice pixels, the sums of gz and gz u;
//   4. pw_backward_weight: per slice, the 64 x 64 tiles of gw^T, summing the slice's pixels in
//      order;
//   5. dw_backward_sum (csrc/cuda/dwconv_backward.cuh): gw^T, gscale, gshift from the slices,
//      added in slice order.
#pragma once

#include <stdexcept>
#include <string>

#include "dwconv_backward.cuh"
#include "pwconv_bn_act.cuh"

namespace fastdw_cuda {

// The weight tiles are the FFMA GEMM's: 64 x 64, chunks of 16 pixels (ffma_chunk).
inline constexpr int kPwBackThreads = 256, kPwBackTile = kFfmaTile, kPwBackChunk = kFfmaK;

// Grid: x = slices, y = output channels / 256. Thread n sums the slice's pixels in order.
__global__ void __launch_bounds__(kPwBackThreads) pw_backward_bn(const float* gz, const float* u,
                                                                 int64_t M, int64_t K,
                                                                 int64_t Cout, float* partial) {
  const int64_t n = int64_t(blockIdx.y) * kPwBackThreads + threadIdx.x;
  if (n >= Cout) return;
  const int64_t first = int64_t(blockIdx.x) * kPwBackSlice;
  float sum_gz = 0.f, sum_gzu = 0.f;
  for (int64_t m = first; m < first + kPwBackSlice && m < M; ++m) {
    const float g = gz[m * Cout + n];
    sum_gz += g;
    sum_gzu = fmaf(g, u[m * Cout + n], sum_gzu);
  }
  partial[(int64_t(blockIdx.x) * (K + 2) + K) * Cout + n] = sum_gzu;
  partial[(int64_t(blockIdx.x) * (K + 2) + K + 1) * Cout + n] = sum_gz;
}

// Grid: x = slices, y = output channels / 64, z = input channels / 64. A block computes the
// slice's 64 x 64 tile of gw^T[k, n] with 256 threads, each a 4 x 4 sub-tile (channels n 4 ty..,
// k 4 tx..). The slice's pixels are walked in chunks of 16, gu (gz scale) and x staged in shared
// memory as fp32 [pixel][channel] (both loads coalesced along the channels); each output adds
// its pixels in order with fmaf. Elements past M, Cout or K read as 0.
template <typename T>
__global__ void __launch_bounds__(kPwBackThreads) pw_backward_weight(const PwBackParams<T> p) {
  FASTDW_SHARED(float, gs, kPwBackChunk * kPwBackTile);  // [pixel][n]
  FASTDW_SHARED(float, xs, kPwBackChunk * kPwBackTile);  // [pixel][k]
  const PwParams<T>& f = p.f;
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const int64_t n0 = int64_t(blockIdx.y) * kPwBackTile, k0 = int64_t(blockIdx.z) * kPwBackTile;
  const int64_t first = int64_t(blockIdx.x) * kPwBackSlice;
  // The loader: thread t copies pixel t / 16 of the chunk, channels 4 (t % 16) .. + 4.
  const int lm = t / 16, lc = (t % 16) * 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int c = 0; c < kPwBackSlice; c += kPwBackChunk) {
    const int64_t m = first + c + lm;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t n = n0 + lc + e, k = k0 + lc + e;
      gs[lm * kPwBackTile + lc + e] =
          m < f.M && n < f.Cout ? f.gz[m * f.Cout + n] * f.scale[n] : 0.f;
      xs[lm * kPwBackTile + lc + e] = m < f.M && k < f.K ? to_float(f.x[m * f.ldx + k]) : 0.f;
    }
    __syncthreads();
    ffma_chunk(gs, xs, ty, tx, acc);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + ty * 4 + i, k = k0 + tx * 4 + j;
      if (n < f.Cout && k < f.K)
        p.partial[(int64_t(blockIdx.x) * (f.K + 2) + k) * f.Cout + n] = acc[i][j];
    }
}

template <typename T>
void launch_pwconv_bn_act_backward(const PwBackParams<T>& p, Stream stream) {
  const PwParams<T>& f = p.f;
  const int64_t slices = (f.M + kPwBackSlice - 1) / kPwBackSlice;
  const int64_t ntiles = (f.Cout + kPwBackTile - 1) / kPwBackTile,
                ktiles = (f.K + kPwBackTile - 1) / kPwBackTile;
  const int64_t count = (f.K + 2) * f.Cout;
  if (slices > 0x7fffffff || ntiles > 65535 || ktiles > 65535 ||
      (count + kDwBackThreads - 1) / kDwBackThreads > 0x7fffffff)
    throw std::invalid_argument("pwconv_bn_act backward: the shape exceeds the grid limits");
  launch_pwconv_bn_act(f, stream);  // u and gz
  const PwParams<float> gx{
      .x = f.gz, .w = p.wt, .scale = p.ones, .shift = p.zeros, .residual = nullptr, .y = p.gx,
      .M = f.M, .K = f.Cout, .Cout = f.K, .ldx = f.Cout, .ldr = 0, .ldy = f.K, .act = kNone,
      .mma = false};
  launch_pwconv_bn_act(gx, stream);
  launch(pw_backward_bn,
         Launch{dim3(static_cast<unsigned>(slices),
                     static_cast<unsigned>((f.Cout + kPwBackThreads - 1) / kPwBackThreads)),
                dim3(kPwBackThreads), 0, stream},
         f.gz, f.u, f.M, f.K, f.Cout, p.partial);
  launch(pw_backward_weight<T>,
         Launch{dim3(static_cast<unsigned>(slices), static_cast<unsigned>(ntiles),
                     static_cast<unsigned>(ktiles)),
                dim3(kPwBackThreads), 0, stream},
         p);
  launch_slice_sum(p.partial, slices, count, p.gw, p.gscale, p.gshift, f.Cout, stream);
}

}  // namespace fastdw_cuda
