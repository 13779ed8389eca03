// pwconv_bn_act forward on channels_last tensors: a 1x1 convolution is a GEMM over pixels,
//
//   y[m, n] = act(fmaf(sum_k x[m, k] w[n, k], scale[n], shift[n])) (+ residual[m, n])
//
// for m over the N*H*W pixels, k over the C_in input channels and n over the C_out outputs,
// every sum in fp32 (no TF32 for fp32 inputs), the activation applied before the residual is
// added and the result rounded once to T. Two kernels (launchers.h declares the launcher):
//  * pwconv_bn_act_ffma<T>: fp32 fused multiply-adds for any T and any K; the only kernel for
//    fp32 and the fallback for fp16/bf16 rows that cp.async cannot copy (K % 8 != 0, or rows
//    not 16-byte aligned).
//  * pwconv_bn_act_mma<T>: fp16/bf16 tensor cores (mma.sync m16n8k16 through csrc/cuda/ptx.h),
//    tiles staged in shared memory by cp.async in two stages and loaded with ldmatrix.
// One source for nvcc (csrc/cuda/kernels.cu) and for the emulator (csrc/cuda/emulated.cpp).
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "epilogue.cuh"
#include "ptx.h"

namespace fastdw_cuda {

// The epilogue of output (m, n): scale, shift, activation, residual, one rounding to T; or, in
// the backward's recompute (p.grad set), u and gz in fp32.
template <typename T>
FASTDW_DEVICE void pw_store(const PwParams<T>& p, int64_t m, int64_t n, float acc) {
  if (m >= p.M || n >= p.Cout) return;
  if (p.grad != nullptr) {
    const int64_t e = m * p.Cout + n;
    p.u[e] = acc;
    p.gz[e] = activate_grad(to_float(p.grad[e]), fmaf(acc, p.scale[n], p.shift[n]), p.act);
    return;
  }
  float v = activate(fmaf(acc, p.scale[n], p.shift[n]), p.act);
  if (p.residual != nullptr) v += to_float(p.residual[m * p.ldr + n]);
  p.y[m * p.ldy + n] = from_float<T>(v);
}

// FFMA: a block computes a 64 x 64 tile of y with 256 threads, each a 4 x 4 sub-tile (rows
// 4 ty.., columns 4 tx..). K is walked in chunks of 16 staged in shared memory as fp32,
// transposed ([k][m], [k][n]) so that a thread's four rows (columns) are one broadcast read;
// elements past M, C_out or K read as 0. Each output sums its products in k order with fmaf.
inline constexpr int kFfmaTile = 64, kFfmaK = 16, kFfmaThreads = 256;

// One chunk of the FFMA tile product: acc[i][j] += a[q][4 ty + i] b[q][4 tx + j] for the
// kFfmaK rows q of two [q][kFfmaTile] fp32 tiles in shared memory, in q order with fmaf (the
// backward's weight tiles, csrc/cuda/pwconv_backward.cuh, use it too).
FASTDW_DEVICE void ffma_chunk(const SharedPtr<float>& as, const SharedPtr<float>& bs, int ty,
                              int tx, float (&acc)[4][4]) {
#pragma unroll 4
  for (int q = 0; q < kFfmaK; ++q) {
    float a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = as[q * kFfmaTile + ty * 4 + i];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = bs[q * kFfmaTile + tx * 4 + j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kFfmaThreads) pwconv_bn_act_ffma(const PwParams<T> p) {
  FASTDW_SHARED(float, xs, kFfmaK * kFfmaTile);  // [k][m]
  FASTDW_SHARED(float, ws, kFfmaK * kFfmaTile);  // [k][n]
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const int64_t m0 = int64_t(blockIdx.x) * kFfmaTile, n0 = int64_t(blockIdx.y) * kFfmaTile;
  // The loader: thread t copies row t / 4 of each tile at k offsets 4 (t % 4) .. + 4.
  const int lr = t / 4, lk = (t % 4) * 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int64_t k0 = 0; k0 < p.K; k0 += kFfmaK) {
    const int64_t m = m0 + lr, n = n0 + lr;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t k = k0 + lk + e;
      xs[(lk + e) * kFfmaTile + lr] = m < p.M && k < p.K ? to_float(p.x[m * p.ldx + k]) : 0.f;
      ws[(lk + e) * kFfmaTile + lr] = n < p.Cout && k < p.K ? to_float(p.w[n * p.K + k]) : 0.f;
    }
    __syncthreads();
    ffma_chunk(xs, ws, ty, tx, acc);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) pw_store(p, m0 + ty * 4 + i, n0 + tx * 4 + j, acc[i][j]);
}

// MMA: a block computes a 64 x 64 tile of y with 4 warps, each a 32 x 32 quarter (warp w:
// rows 32 (w / 2).., columns 32 (w % 2)..) as 2 x 4 tiles of m16n8. K is walked in chunks of 32:
// x's 64 rows and w's 64 rows of the chunk are copied by cp.async, 16 bytes (8 channels) per
// copy, into one of two shared stages while the other stage is multiplied; copies past M,
// C_out or K are zero-filled (K % 8 == 0, so a copy is wholly inside K or outside it). Rows are
// padded to kMmaRow elements so that the eight 16-byte rows an ldmatrix reads fall in different
// banks. Per 16-wide k step a warp loads its A fragments with ldmatrix.x4 from x's rows and its
// B fragments with ldmatrix.x2 from w's rows (w's row n is column n of B), then issues 8 mma.
inline constexpr int kMmaTile = 64, kMmaK = 32, kMmaRow = kMmaK + 8, kMmaThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) pwconv_bn_act_mma(const PwParams<T> p) {
  FASTDW_SHARED_ALIGNED(T, xs, 2 * kMmaTile * kMmaRow, 16);  // [stage][m][k]
  FASTDW_SHARED_ALIGNED(T, ws, 2 * kMmaTile * kMmaRow, 16);  // [stage][n][k]
  const int t = threadIdx.x, lane = t % 32, warp = t / 32, wm = warp / 2, wn = warp % 2;
  const int64_t m0 = int64_t(blockIdx.x) * kMmaTile, n0 = int64_t(blockIdx.y) * kMmaTile;
  const int64_t chunks = (p.K + kMmaK - 1) / kMmaK;

  // Thread t copies chunks t and t + 128 of the 256 16-byte pieces of each tile: row c / 4,
  // channels 8 (c % 4) .. + 8.
  auto load = [&](int stage, int64_t chunk) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = t + kMmaThreads * q, row = c / 4, kk = (c % 4) * 8;
      const int64_t k = chunk * kMmaK + kk, m = m0 + row, n = n0 + row;
      const bool x_in = m < p.M && k < p.K, w_in = n < p.Cout && k < p.K;
      cp_async16(xs + (stage * kMmaTile + row) * kMmaRow + kk, p.x + (x_in ? m * p.ldx + k : 0),
                 x_in);
      cp_async16(ws + (stage * kMmaTile + row) * kMmaRow + kk, p.w + (w_in ? n * p.K + k : 0),
                 w_in);
    }
  };

  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.f;

  load(0, 0);
  cp_async_commit();
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    if (chunk + 1 < chunks) load(int((chunk + 1) % 2), chunk + 1);
    cp_async_commit();     // possibly empty: one group per iteration either way
    cp_async_wait<1>();    // this chunk's copies have landed (the next one's may not have)
    __syncthreads();       // ... every thread's
    const int stage = int(chunk % 2);
#pragma unroll
    for (int ks = 0; ks < kMmaK / 16; ++ks) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldmatrix<4>(a[mi], xs + (stage * kMmaTile + wm * 32 + mi * 16 + lane % 16) * kMmaRow +
                               ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
        ldmatrix<2>(b[ni], ws + (stage * kMmaTile + wn * 32 + ni * 8 + lane % 8) * kMmaRow +
                               ks * 16 + (lane / 8 % 2) * 8);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_m16n8k16<T>(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
    }
    __syncthreads();  // the stage is read by all before the next iteration copies into it
  }
  // The accumulator layout: register i of lane (g = lane / 4, q = lane % 4) holds row
  // g + 8 (i >= 2), column 2 q + (i & 1) of its m16n8 tile.
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        pw_store(p, m0 + wm * 32 + mi * 16 + g + (i >= 2 ? 8 : 0),
                 n0 + wn * 32 + ni * 8 + 2 * q + (i & 1), acc[mi][ni][i]);
}

template <typename T>
void launch_pwconv_bn_act(const PwParams<T>& p, Stream stream) {
  const int64_t gx = (p.M + kFfmaTile - 1) / kFfmaTile, gy = (p.Cout + kFfmaTile - 1) / kFfmaTile;
  static_assert(kFfmaTile == kMmaTile, "both kernels tile y alike");
  if (gx > 0x7fffffff || gy > 65535)
    throw std::invalid_argument("pwconv_bn_act: " + std::to_string(p.M) + " pixels x " +
                                std::to_string(p.Cout) + " output channels exceed the grid "
                                "limits");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  if constexpr (!std::is_same_v<T, float>) {
    if (p.mma) {
      launch(pwconv_bn_act_mma<T>, Launch{grid, dim3(kMmaThreads), 0, stream}, p);
      return;
    }
  }
  launch(pwconv_bn_act_ffma<T>, Launch{grid, dim3(kFfmaThreads), 0, stream}, p);
}

}  // namespace fastdw_cuda
