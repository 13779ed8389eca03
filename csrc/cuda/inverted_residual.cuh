// inverted_residual forward on channels_last tensors, one fused kernel: the kernel and its host
// launcher (declared with its parameters in csrc/cuda/launchers.h), one source for nvcc
// (csrc/cuda/kernels.cu) and for the emulator (csrc/cuda/emulated.cpp).
//
// The block, for x (N, H, W, C_in), hidden channels h, C_out outputs, a k x k depthwise window
// (k odd, padding p = (k - 1) / 2) at stride s:
//
//   e[n,iy,ix,c] = act(fmaf(sum_ci x[n,iy,ix,ci] We[c,ci], es[c], eb[c]))  (e = x if no expand)
//   d[n,oy,ox,c] = act(fmaf(sum_{i,j<k} e[n, oy*s - p + i, ox*s - p + j, c] Wd[i,j,c],
//                           ds[c], db[c]))                     (e read as 0 outside the image)
//   y[n,oy,ox,co] = fmaf(sum_c d[n,oy,ox,c] Wp[co,c], ps[co], pb[co]) (+ x[n,oy,ox,co])
//
// every sum in fp32 in index order with fmaf (no TF32), e kept in fp32; fp16/bf16 inputs feed
// the tensor cores (mma.sync m16n8k16, csrc/cuda/ptx.h), for which d is rounded to T once, and
// y is rounded to T once.
//
// A block of kIrThreads threads (4 warps) owns an 8 x 8 tile of output pixels (64 GEMM rows) and
// kIrCout output channels, and walks the hidden channels in chunks of kIrChunk:
//   1. expand: the tile's input window (the tile plus its halo, ((8-1)s + k)^2 pixels, each
//      once) in blocks of 64 pixels, C_in in chunks of kIrChunk staged in shared memory, into
//      `hid` (fp32, shared); without an expand, x's window is copied there;
//   2. depthwise: each output pixel's k x k taps read from `hid`, BN and act, into `dws`;
//   3. project: `dws` times the chunk's project weights folded into the fp32 accumulators that
//      stay in registers for the whole walk.
// The epilogue applies the project's BN, adds the residual and stores y. A block computes the
// hidden map of its tile once per kIrCout output channels: wider outputs take more blocks that
// each recompute it.
//
// Both GEMMs (expand, project) share one warp-level step (ir_warp_gemm): a warp multiplies its
// 16 rows of A by a kIrChunk-deep slice of B, both rows of kIrRow elements in shared memory,
// into m16n8 accumulator tiles laid out as mma.sync's (register i of lane (g, q) = lane / 4,
// lane % 4: row g + 8 (i >= 2), column 2q + (i & 1)). fp16/bf16 run mma.sync on ldmatrix
// fragments; fp32 runs fmaf on the same accumulator layout, so both share their epilogues.
//
// Shared memory is dynamic and depends on k, s and whether there is an expand (IrShared); a
// shape whose window does not fit the GPU's per-block limit is refused by the launcher, and the
// host op (csrc/cuda/host_ops.h) then runs the building blocks (pwconv, dwconv, pwconv).
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "epilogue.cuh"
#include "ptx.h"

namespace fastdw_cuda {

inline constexpr int kIrTile = 8, kIrPixels = kIrTile * kIrTile, kIrChunk = 32,
                     kIrRow = kIrChunk + 8, kIrCout = 64, kIrThreads = 128;

// The dynamic shared memory of one block, as byte offsets (each 16-byte aligned) of:
//   xs  [64][kIrRow] T       x's pixels of one expand block, one C_in chunk (expand only)
//   wes [kIrChunk][kIrRow] T  the expand weights of the chunk (expand only)
//   hid [halo][kIrChunk] fp32 the expanded window of the hidden chunk
//   dws [64][kIrRow] T       the depthwise output of the hidden chunk (A of the project)
//   wps [kIrCout][kIrRow] T  the project weights of the hidden chunk (B of the project)
// Rows of kIrRow elements put the eight 16-byte rows an ldmatrix reads in different banks.
struct IrShared {
  int halo_h, halo_w, halo;
  int64_t xs, wes, hid, dws, wps, bytes;
};

FASTDW_HOST_DEVICE IrShared ir_shared(int k, int s, bool expand, int element) {
  IrShared l{};
  l.halo_h = l.halo_w = (kIrTile - 1) * s + k;
  l.halo = l.halo_h * l.halo_w;
  auto take = [&](int64_t bytes) {
    const int64_t at = l.bytes;
    l.bytes += (bytes + 15) / 16 * 16;
    return at;
  };
  l.xs = take(expand ? int64_t(kIrPixels) * kIrRow * element : 0);
  l.wes = take(expand ? int64_t(kIrChunk) * kIrRow * element : 0);
  l.hid = take(int64_t(l.halo) * kIrChunk * 4);
  l.dws = take(int64_t(kIrPixels) * kIrRow * element);
  l.wps = take(int64_t(kIrCout) * kIrRow * element);
  return l;
}

// acc[ni] += A[16 rows][kIrChunk] x B[ni*8 .. +8 rows][kIrChunk]^T for one warp; `a` and `b`
// point at their first rows, kIrRow elements apart.
template <typename T, int NT>
FASTDW_DEVICE void ir_warp_gemm(float (&acc)[NT][4], const SharedPtr<T>& a,
                                const SharedPtr<T>& b, int lane) {
  if constexpr (std::is_same_v<T, float>) {
    const int g = lane / 4, q = lane % 4;
    for (int kk = 0; kk < kIrChunk; ++kk) {
      const float a0 = a[g * kIrRow + kk], a1 = a[(g + 8) * kIrRow + kk];
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
        const float b0 = b[(ni * 8 + 2 * q) * kIrRow + kk];
        const float b1 = b[(ni * 8 + 2 * q + 1) * kIrRow + kk];
        acc[ni][0] = fmaf(a0, b0, acc[ni][0]);
        acc[ni][1] = fmaf(a0, b1, acc[ni][1]);
        acc[ni][2] = fmaf(a1, b0, acc[ni][2]);
        acc[ni][3] = fmaf(a1, b1, acc[ni][3]);
      }
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < kIrChunk / 16; ++ks) {
      uint32_t af[4];
      ldmatrix<4>(af, a + (lane % 16) * kIrRow + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int ni = 0; ni < NT; ++ni) {
        uint32_t bf[2];
        ldmatrix<2>(bf, b + (ni * 8 + lane % 8) * kIrRow + ks * 16 + (lane / 8 % 2) * 8);
        mma_m16n8k16<T>(acc[ni], af, bf, acc[ni]);
      }
    }
  }
}

// Grid: x = N * tiles (8 x 8 output pixels each, row-major within an image), y = C_out / kIrCout
// rounded up. Every loop bound is uniform over the block, so each barrier is reached by all.
template <typename T>
__global__ void __launch_bounds__(kIrThreads, 1) inverted_residual_nhwc(const IrParams<T> p) {
  FASTDW_DYNAMIC_SHARED(unsigned char, smem);
  const IrShared L = ir_shared(p.k, p.stride, p.ew != nullptr, sizeof(T));
  const SharedPtr<T> xs = shared_as<T>(smem + L.xs), wes = shared_as<T>(smem + L.wes);
  const SharedPtr<float> hid = shared_as<float>(smem + L.hid);
  const SharedPtr<T> dws = shared_as<T>(smem + L.dws), wps = shared_as<T>(smem + L.wps);

  const int t = threadIdx.x, lane = t % 32, warp = t / 32, g = lane / 4, q = lane % 4;
  const int s = p.stride, k = p.k;
  const int64_t tiles_w = (p.OW + kIrTile - 1) / kIrTile, tiles_h = (p.OH + kIrTile - 1) / kIrTile;
  const int64_t tile = blockIdx.x % (tiles_w * tiles_h), n = blockIdx.x / (tiles_w * tiles_h);
  const int64_t oy0 = tile / tiles_w * kIrTile, ox0 = tile % tiles_w * kIrTile;
  const int64_t iy0 = oy0 * s - p.pad, ix0 = ox0 * s - p.pad;  // the window's first pixel
  const int64_t n0 = int64_t(blockIdx.y) * kIrCout;
  const T* xn = p.x + n * p.xs_n;
  const int c = t % kIrChunk, r0 = t / kIrChunk;  // the loaders: one channel, rows r0 + 4 i
  constexpr int kRowStep = kIrThreads / kIrChunk;

  // x at window pixel `w` (row-major over halo_h x halo_w), or null outside the image.
  auto window_pixel = [&](int w) -> const T* {
    const int64_t iy = iy0 + w / L.halo_w, ix = ix0 + w % L.halo_w;
    if (w >= L.halo || iy < 0 || iy >= p.H || ix < 0 || ix >= p.W) return nullptr;
    return xn + iy * p.xs_h + ix * p.xs_w;
  };

  float acc[kIrCout / 8][4];
#pragma unroll
  for (int ni = 0; ni < kIrCout / 8; ++ni)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[ni][i] = 0.f;

  for (int64_t h0 = 0; h0 < p.hidden; h0 += kIrChunk) {
    const bool c_in = h0 + c < p.hidden;
    // 1. The hidden chunk of the window into hid.
    if (p.ew != nullptr) {
      for (int w0 = 0; w0 < L.halo; w0 += kIrPixels) {
        float e[kIrChunk / 8][4];
#pragma unroll
        for (int ni = 0; ni < kIrChunk / 8; ++ni)
#pragma unroll
          for (int i = 0; i < 4; ++i) e[ni][i] = 0.f;
        for (int64_t k0 = 0; k0 < p.Cin; k0 += kIrChunk) {
          const bool k_in = k0 + c < p.Cin;
          for (int r = r0; r < kIrPixels; r += kRowStep) {
            const T* px = window_pixel(w0 + r);
            xs[r * kIrRow + c] = px != nullptr && k_in ? px[k0 + c] : from_float<T>(0.f);
          }
          for (int r = r0; r < kIrChunk; r += kRowStep)
            wes[r * kIrRow + c] = h0 + r < p.hidden && k_in ? p.ew[(h0 + r) * p.Cin + k0 + c]
                                                           : from_float<T>(0.f);
          __syncthreads();
          ir_warp_gemm<T>(e, xs + warp * 16 * kIrRow, wes, lane);
          __syncthreads();  // xs and wes are read by all before the next chunk's copies
        }
#pragma unroll
        for (int ni = 0; ni < kIrChunk / 8; ++ni)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int w = w0 + warp * 16 + g + (i >= 2 ? 8 : 0), j = ni * 8 + 2 * q + (i & 1);
            if (w >= L.halo) continue;
            hid[w * kIrChunk + j] =
                window_pixel(w) != nullptr && h0 + j < p.hidden
                    ? activate(fmaf(e[ni][i], p.es[h0 + j], p.eb[h0 + j]), p.act)
                    : 0.f;
          }
      }
    } else {
      for (int w = r0; w < L.halo; w += kRowStep) {
        const T* px = window_pixel(w);
        hid[w * kIrChunk + c] = px != nullptr && c_in ? to_float(px[h0 + c]) : 0.f;
      }
    }
    // The chunk's project weights, read after the barrier below.
    for (int r = r0; r < kIrCout; r += kRowStep)
      wps[r * kIrRow + c] = n0 + r < p.Cout && c_in ? p.pw[(n0 + r) * p.hidden + h0 + c]
                                                    : from_float<T>(0.f);
    __syncthreads();  // hid is whole

    // 2. Depthwise: thread t computes channel c of pixels r0 + 4 i, taps in row-major order.
    {
      const float scale = c_in ? p.ds[h0 + c] : 0.f, shift = c_in ? p.db[h0 + c] : 0.f;
      for (int px = r0; px < kIrPixels; px += kRowStep) {
        const int ty = px / kIrTile, tx = px % kIrTile;
        float d = 0.f;
        if (c_in) {
          for (int i = 0; i < k; ++i)
            for (int j = 0; j < k; ++j)
              d = fmaf(hid[((ty * s + i) * L.halo_w + tx * s + j) * kIrChunk + c],
                       p.dw[(int64_t(i) * k + j) * p.hidden + h0 + c], d);
          d = activate(fmaf(d, scale, shift), p.act);
        }
        dws[px * kIrRow + c] = from_float<T>(d);
      }
    }
    __syncthreads();  // dws and wps are whole

    // 3. Project: fold the chunk into the accumulators.
    ir_warp_gemm<T>(acc, dws + warp * 16 * kIrRow, wps, lane);
    __syncthreads();  // hid, dws and wps are read by all before the next chunk writes them
  }

  // Epilogue: the project's BN, the residual, one rounding to T.
#pragma unroll
  for (int ni = 0; ni < kIrCout / 8; ++ni)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int px = warp * 16 + g + (i >= 2 ? 8 : 0);
      const int64_t oy = oy0 + px / kIrTile, ox = ox0 + px % kIrTile;
      const int64_t co = n0 + ni * 8 + 2 * q + (i & 1);
      if (oy >= p.OH || ox >= p.OW || co >= p.Cout) continue;
      float v = fmaf(acc[ni][i], p.ps[co], p.pb[co]);
      if (p.residual) v += to_float(xn[oy * p.xs_h + ox * p.xs_w + co]);
      p.y[n * p.ys_n + oy * p.ys_h + ox * p.ys_w + co] = from_float<T>(v);
    }
}

// The largest dynamic shared memory a block of this kernel may have on the current GPU (with
// the opt-in that launch() makes), or on the emulated architecture.
inline size_t ir_shared_limit() {
#if defined(__CUDACC__)
  int device = 0, bytes = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute");
  return static_cast<size_t>(bytes);
#else
  return ::fastdw_emu::options_from_env().arch->max_shared;
#endif
}

template <typename T>
bool launch_inverted_residual(const IrParams<T>& p, Stream stream) {
  const IrShared L = ir_shared(p.k, p.stride, p.ew != nullptr, sizeof(T));
  if (static_cast<size_t>(L.bytes) > ir_shared_limit()) return false;
  const int64_t tiles = ((p.OH + kIrTile - 1) / kIrTile) * ((p.OW + kIrTile - 1) / kIrTile);
  const int64_t gx = p.N * tiles, gy = (p.Cout + kIrCout - 1) / kIrCout;
  if (gx > 0x7fffffff || gy > 65535)
    throw std::invalid_argument("inverted_residual: " + std::to_string(p.N) + " images of " +
                                std::to_string(tiles) + " tiles x " + std::to_string(p.Cout) +
                                " output channels exceed the grid limits");
  launch(inverted_residual_nhwc<T>,
         Launch{dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(kIrThreads),
                static_cast<size_t>(L.bytes), stream},
         p);
  return true;
}

}  // namespace fastdw_cuda
