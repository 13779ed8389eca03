// inverted_residual forward on channels_last tensors: one fused kernel, or two with a
// squeeze-excite; the kernels and their host launchers (declared with their parameters in
// csrc/cuda/launchers.h), one source for nvcc (csrc/cuda/kernels.cu) and for the emulator
// (csrc/cuda/emulated.cpp).
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
// With a squeeze-excite, whose gate needs the whole of d pooled before the project,
//
//   g[n,c] = se_gate(sum_j W2[c,j] se_act(sum_c' W1[j,c'] mean_{oy,ox} d[n,oy,ox,c'] + b1[j])
//                    + b2[c]),    y from d[n,oy,ox,c] g[n,c] as above,
//
// the same kernel with kSe runs steps 1 and 2 and writes d (rounded to T) to a hidden tensor
// and, per tile and channel, the fp32 sum of d over the tile's pixels in a fixed order; then
// se_gate_project pools those sums tile by tile (the same order every run: no atomics), runs
// the gate's two small matrix-vector products in every block's prologue, and projects d g
// (rounded to T for the tensor cores) as step 3, with the same epilogue.
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

// kIrTile (the output tile's side) is in launchers.h: the host sizes the per-tile sums by it.
inline constexpr int kIrPixels = kIrTile * kIrTile, kIrChunk = 32, kIrRow = kIrChunk + 8,
                     kIrCout = 64, kIrThreads = 128;

// The dynamic shared memory of one block, as byte offsets (each 16-byte aligned) of:
//   xs  [64][kIrRow] T       x's pixels of one expand block, one C_in chunk (expand only)
//   wes [kIrChunk][kIrRow] T  the expand weights of the chunk (expand only)
//   hid [halo][kIrChunk] fp32 the expanded window of the hidden chunk
//   dws [64][kIrRow] T       the depthwise output of the hidden chunk (A of the project)
//   wps [kIrCout][kIrRow] T  the project weights of the hidden chunk (B of the project)
//   sums [kIrThreads] fp32   with kSe instead of wps: the threads' partial sums of d
// Rows of kIrRow elements put the eight 16-byte rows an ldmatrix reads in different banks.
struct IrShared {
  int halo_h, halo_w, halo;
  int64_t xs, wes, hid, dws, wps, sums, bytes;
};

FASTDW_HOST_DEVICE IrShared ir_shared(int k, int s, bool expand, bool se, int element) {
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
  l.wps = take(se ? 0 : int64_t(kIrCout) * kIrRow * element);
  l.sums = take(se ? kIrThreads * 4 : 0);
  return l;
}

template <int NT>
FASTDW_DEVICE void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int ni = 0; ni < NT; ++ni)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[ni][i] = 0.f;
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

// The epilogue of both projecting kernels: the project's BN, the residual, one rounding to T.
// at(px) gives (oy, ox) of the block's GEMM row px, with oy = -1 for a row past the image.
template <typename T, typename At>
FASTDW_DEVICE void ir_store(const float (&acc)[kIrCout / 8][4], int warp, int lane, int64_t n0,
                            int64_t Cout, const float* ps, const float* pb, const T* xn,
                            int64_t xs_h, int64_t xs_w, bool residual, T* yn, int64_t ys_h,
                            int64_t ys_w, At at) {
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int ni = 0; ni < kIrCout / 8; ++ni)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int64_t oy, ox;
      at(warp * 16 + g + (i >= 2 ? 8 : 0), oy, ox);
      const int64_t co = n0 + ni * 8 + 2 * q + (i & 1);
      if (oy < 0 || co >= Cout) continue;
      float v = fmaf(acc[ni][i], ps[co], pb[co]);
      if (residual) v += to_float(xn[oy * xs_h + ox * xs_w + co]);
      yn[oy * ys_h + ox * ys_w + co] = from_float<T>(v);
    }
}

// Grid: x = N * tiles (8 x 8 output pixels each, row-major within an image), y = C_out / kIrCout
// rounded up (1 with kSe). Every loop bound is uniform over the block, so each barrier is
// reached by all.
template <typename T, bool kSe>
__global__ void __launch_bounds__(kIrThreads, 1) inverted_residual_nhwc(const IrParams<T> p) {
  FASTDW_DYNAMIC_SHARED(unsigned char, smem);
  const IrShared L = ir_shared(p.k, p.stride, p.ew != nullptr, kSe, sizeof(T));
  const SharedPtr<T> xs = shared_as<T>(smem + L.xs), wes = shared_as<T>(smem + L.wes);
  const SharedPtr<float> hid = shared_as<float>(smem + L.hid);
  const SharedPtr<T> dws = shared_as<T>(smem + L.dws), wps = shared_as<T>(smem + L.wps);
  const SharedPtr<float> sums = shared_as<float>(smem + L.sums);

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
  zero(acc);

  for (int64_t h0 = 0; h0 < p.hidden; h0 += kIrChunk) {
    const bool c_in = h0 + c < p.hidden;
    // 1. The hidden chunk of the window into hid.
    if (p.ew != nullptr) {
      for (int w0 = 0; w0 < L.halo; w0 += kIrPixels) {
        float e[kIrChunk / 8][4];
        zero(e);
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
    if constexpr (!kSe)
      for (int r = r0; r < kIrCout; r += kRowStep)
        wps[r * kIrRow + c] = n0 + r < p.Cout && c_in ? p.pw[(n0 + r) * p.hidden + h0 + c]
                                                      : from_float<T>(0.f);
    __syncthreads();  // hid is whole

    // 2. Depthwise: thread t computes channel c of pixels r0 + 4 i, taps in row-major order;
    // with kSe it stores them to d and sums those in the image.
    {
      const float scale = c_in ? p.ds[h0 + c] : 0.f, shift = c_in ? p.db[h0 + c] : 0.f;
      float sum = 0.f;
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
        if constexpr (kSe) {
          const int64_t oy = oy0 + ty, ox = ox0 + tx;
          if (c_in && oy < p.OH && ox < p.OW) {
            p.d[((n * p.OH + oy) * p.OW + ox) * p.hidden + h0 + c] = from_float<T>(d);
            sum += d;
          }
        } else {
          dws[px * kIrRow + c] = from_float<T>(d);
        }
      }
      if constexpr (kSe) sums[t] = sum;
    }
    __syncthreads();  // dws and wps (or sums) are whole

    if constexpr (kSe) {
      // The tile's sum of channel c: the partial sums of threads c, c + 32, ... in that order.
      if (r0 == 0 && c_in) {
        float total = 0.f;
        for (int r = 0; r < kRowStep; ++r) total += sums[r * kIrChunk + c];
        p.partial[(n * tiles_w * tiles_h + tile) * p.hidden + h0 + c] = total;
      }
    } else {
      // 3. Project: fold the chunk into the accumulators.
      ir_warp_gemm<T>(acc, dws + warp * 16 * kIrRow, wps, lane);
    }
    __syncthreads();  // hid, dws, wps and sums are read by all before the next chunk writes them
  }

  if constexpr (!kSe)
    ir_store(acc, warp, lane, n0, p.Cout, p.ps, p.pb, xn, p.xs_h, p.xs_w, p.residual,
             p.y + n * p.ys_n, p.ys_h, p.ys_w, [&](int px, int64_t& oy, int64_t& ox) {
               oy = oy0 + px / kIrTile;
               ox = ox0 + px % kIrTile;
               if (oy >= p.OH || ox >= p.OW) oy = -1;
             });
}

// The second kernel of a block with a squeeze-excite: the gate of image n in every block's
// prologue (in shared memory: the pooled means, then the gate over them, and fc1's outputs),
// then y of 64 consecutive pixels of image n by kIrCout output channels from d g, walking the
// hidden channels in chunks of kIrChunk as the fused kernel's step 3. Grid: x = N * the image's
// pixels / 64 rounded up, y = C_out / kIrCout rounded up.
//   gate [hidden] fp32, zs [S] fp32, dws [64][kIrRow] T, wps [kIrCout][kIrRow] T
struct SeShared {
  int64_t gate, zs, dws, wps, bytes;
};

FASTDW_HOST_DEVICE SeShared se_shared(int64_t hidden, int64_t squeeze, int element) {
  SeShared l{};
  auto take = [&](int64_t bytes) {
    const int64_t at = l.bytes;
    l.bytes += (bytes + 15) / 16 * 16;
    return at;
  };
  l.gate = take(hidden * 4);
  l.zs = take(squeeze * 4);
  l.dws = take(int64_t(kIrPixels) * kIrRow * element);
  l.wps = take(int64_t(kIrCout) * kIrRow * element);
  return l;
}

FASTDW_DEVICE float se_gate(float v, int gate) {
  return gate == kGateSigmoid ? 1.f / (1.f + expf(-v)) : activate(v, kHardsigmoid);
}

template <typename T>
__global__ void __launch_bounds__(kIrThreads, 1) se_gate_project(const SeParams<T> p) {
  FASTDW_DYNAMIC_SHARED(unsigned char, smem);
  const SeShared L = se_shared(p.hidden, p.squeeze, sizeof(T));
  const SharedPtr<float> gate = shared_as<float>(smem + L.gate), zs = shared_as<float>(smem + L.zs);
  const SharedPtr<T> dws = shared_as<T>(smem + L.dws), wps = shared_as<T>(smem + L.wps);
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int64_t P = p.OH * p.OW, blocks = (P + kIrPixels - 1) / kIrPixels;
  const int64_t n = blockIdx.x / blocks, m0 = blockIdx.x % blocks * kIrPixels;
  const int64_t n0 = int64_t(blockIdx.y) * kIrCout;
  const int c = t % kIrChunk, r0 = t / kIrChunk;
  constexpr int kRowStep = kIrThreads / kIrChunk;

  // The gate: means of the tiles' sums (tile order), fc1 + se_act, fc2 + se_gate; each sum in
  // index order.
  for (int64_t h = t; h < p.hidden; h += kIrThreads) {
    float total = 0.f;
    for (int64_t i = 0; i < p.tiles; ++i) total += p.partial[(n * p.tiles + i) * p.hidden + h];
    gate[h] = total / float(P);
  }
  __syncthreads();
  for (int64_t j = t; j < p.squeeze; j += kIrThreads) {
    float z = 0.f;
    for (int64_t h = 0; h < p.hidden; ++h) z = fmaf(p.w1[j * p.hidden + h], gate[h], z);
    zs[j] = activate(z + p.b1[j], p.se_act);
  }
  __syncthreads();  // every mean is read before the gate replaces it
  for (int64_t h = t; h < p.hidden; h += kIrThreads) {
    float z = 0.f;
    for (int64_t j = 0; j < p.squeeze; ++j) z = fmaf(p.w2[h * p.squeeze + j], zs[j], z);
    gate[h] = se_gate(z + p.b2[h], p.se_gate);
  }
  __syncthreads();

  float acc[kIrCout / 8][4];
  zero(acc);
  const T* dn = p.d + n * P * p.hidden;
  for (int64_t h0 = 0; h0 < p.hidden; h0 += kIrChunk) {
    const bool c_in = h0 + c < p.hidden;
    for (int r = r0; r < kIrPixels; r += kRowStep)
      dws[r * kIrRow + c] = from_float<T>(
          m0 + r < P && c_in ? to_float(dn[(m0 + r) * p.hidden + h0 + c]) * gate[h0 + c] : 0.f);
    for (int r = r0; r < kIrCout; r += kRowStep)
      wps[r * kIrRow + c] = n0 + r < p.Cout && c_in ? p.pw[(n0 + r) * p.hidden + h0 + c]
                                                    : from_float<T>(0.f);
    __syncthreads();
    ir_warp_gemm<T>(acc, dws + warp * 16 * kIrRow, wps, lane);
    __syncthreads();  // dws and wps are read by all before the next chunk writes them
  }
  ir_store(acc, warp, lane, n0, p.Cout, p.ps, p.pb, p.x + n * p.xs_n, p.xs_h, p.xs_w,
           p.residual, p.y + n * p.ys_n, p.ys_h, p.ys_w, [&](int px, int64_t& oy, int64_t& ox) {
             const int64_t m = m0 + px;
             oy = m < P ? m / p.OW : -1;
             ox = m % p.OW;
           });
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
  const bool se = p.d != nullptr;
  const IrShared L = ir_shared(p.k, p.stride, p.ew != nullptr, se, sizeof(T));
  if (static_cast<size_t>(L.bytes) > ir_shared_limit()) return false;
  const int64_t tiles = ((p.OH + kIrTile - 1) / kIrTile) * ((p.OW + kIrTile - 1) / kIrTile);
  const int64_t gx = p.N * tiles, gy = se ? 1 : (p.Cout + kIrCout - 1) / kIrCout;
  if (gx > 0x7fffffff || gy > 65535)
    throw std::invalid_argument("inverted_residual: " + std::to_string(p.N) + " images of " +
                                std::to_string(tiles) + " tiles x " + std::to_string(p.Cout) +
                                " output channels exceed the grid limits");
  const Launch cfg{dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(kIrThreads),
                   static_cast<size_t>(L.bytes), stream};
  if (se)
    launch(inverted_residual_nhwc<T, true>, cfg, p);
  else
    launch(inverted_residual_nhwc<T, false>, cfg, p);
  return true;
}

template <typename T>
bool launch_se_gate_project(const SeParams<T>& p, Stream stream) {
  const SeShared L = se_shared(p.hidden, p.squeeze, sizeof(T));
  if (static_cast<size_t>(L.bytes) > ir_shared_limit()) return false;
  const int64_t gx = p.N * ((p.OH * p.OW + kIrPixels - 1) / kIrPixels);
  const int64_t gy = (p.Cout + kIrCout - 1) / kIrCout;
  if (gx > 0x7fffffff || gy > 65535)
    throw std::invalid_argument("inverted_residual: " + std::to_string(p.N * p.OH * p.OW) +
                                " output pixels x " + std::to_string(p.Cout) +
                                " output channels exceed the grid limits");
  launch(se_gate_project<T>,
         Launch{dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(kIrThreads),
                static_cast<size_t>(L.bytes), stream},
         p);
  return true;
}

}  // namespace fastdw_cuda
