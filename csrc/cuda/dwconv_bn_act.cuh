// dwconv_bn_act forward on channels_last (NHWC) and NCHW tensors: the kernels and their host
// launchers (declared with their parameters in csrc/cuda/launchers.h), one source for nvcc
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
// with x read as 0 outside the image (x[..., c / m] with a channel multiplier m). The sum runs
// over (i, j) in row-major order, each term added with fmaf in fp32, so nvcc and g++ round
// alike. K, S > 0 fix k and the stride (dilation 1) at compile time for the common shapes, and
// run only where every channel group is whole and 16-byte aligned and m = 1 (p.vector); K = S =
// 0 is the generic path for everything else, with the element-wise accesses. Offsets are int64:
// inputs of 2^31 elements or more index correctly.
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
  const T* xn = p.x + n * p.xs_n;
  const int64_t ih0 = oh * s - p.pad, iw0 = ow * s - p.pad;  // the window's first pixel
#pragma unroll(K > 0 ? K : 1)
  for (int i = 0; i < k; ++i) {
    const int64_t ih = ih0 + int64_t(i) * d;
    if (ih < 0 || ih >= p.H) continue;
#pragma unroll(K > 0 ? K : 1)
    for (int j = 0; j < k; ++j) {
      const int64_t iw = iw0 + int64_t(j) * d;
      if (iw < 0 || iw >= p.W) continue;
      float xv[V], wv[V];
      const T* at = xn + ih * p.xs_h + iw * p.xs_w;
      if (K == 0 && p.mult > 1) {  // output channel c reads input channel c / m
#pragma unroll
        for (int v = 0; v < V; ++v) xv[v] = v < valid ? to_float(at[(c0 + v) / p.mult]) : 0.f;
      } else {
        load_channels(at + c0, full, valid, xv);
      }
      load_channels(p.w + (int64_t(i) * k + j) * p.C + c0, full, valid, wv);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = fmaf(xv[v], wv[v], acc[v]);
    }
  }
  // The padded taps' terms 0 * w, added last, on border pixels only and in a loop of its own
  // (registers): 0 for a finite w, so the order does not matter, and NaN for a NaN or infinite
  // w, which then reaches every output of its channel as in stock PyTorch.
  const int64_t reach = int64_t(k - 1) * d;
  if (ih0 < 0 || ih0 + reach >= p.H || iw0 < 0 || iw0 + reach >= p.W) {
#pragma unroll 1
    for (int t = 0; t < k * k; ++t) {
      const int64_t ih = ih0 + int64_t(t / k) * d, iw = iw0 + int64_t(t % k) * d;
      if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) continue;
      float wv[V];
      load_channels(p.w + int64_t(t) * p.C + c0, full, valid, wv);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = fmaf(0.f, wv[v], acc[v]);
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

// The NCHW kernel. A block of kNchwThreads threads computes a tile of TW x TH outputs of each of
// `planes` (n, c) planes. The input window of each plane's tile, (TH - 1) s + (k - 1) d + 1 rows
// by (TW - 1) s + (k - 1) d + 1 columns with 0 outside the image, and its k x k taps are staged
// in dynamic shared memory as fp32, loaded row by row so that consecutive threads read
// consecutive columns (coalesced along W). Thread (plane, ty, tx) then computes column tx of
// output rows ty*R .. ty*R + R - 1 of its plane's tile (R = kNchwStrip):
//
//   y[n,c,oh,ow] = act(fmaf(sum_{i,j < k} x[n, c / m, oh*s - p + i*d, ow*s - p + j*d] * w[i,j,c],
//                           scale[c], shift[c]))
//
// with each output's terms added in (i, j) row-major order with fmaf, as the channels_last
// kernel adds them. With K, S > 0 (dilation 1) the thread slides down the input rows its strip
// reads, holding one row's K values in registers and adding them to every output of the strip
// that reads that row: each window row is read from shared memory once per strip, not once per
// output. K = S = 0 reads the window from shared memory per term (any k, stride, dilation).
// The host (dwconv_nchw_shape) picks TW in {8, 16, 32} and TH from the output's size, and as
// many planes per block as fill kNchwThreads threads.
inline constexpr int kNchwThreads = 256, kNchwStrip = 4;
// An extent (window reach, stride) past which no NCHW window fits shared memory.
inline constexpr int64_t kNchwMaxExtent = 4096;

// A launch's tile: TW columns x rows (strips of R) per plane, `planes` planes per block, and
// the input window each plane stages.
struct NchwShape {
  int tw, strips, planes, in_rows, in_cols;
  FASTDW_HOST_DEVICE int th() const { return strips * kNchwStrip; }
  FASTDW_HOST_DEVICE int window() const { return in_rows * in_cols; }
};

template <typename T>
FASTDW_HOST_DEVICE NchwShape dwconv_nchw_shape(const DwParams<T>& p) {
  int tw = 8;
  while (tw < 32 && tw < p.OW) tw *= 2;
  const int64_t need = (p.OH + kNchwStrip - 1) / kNchwStrip;
  int strips = 1;
  while (strips < kNchwThreads / tw && strips < need) strips *= 2;
  const int th = strips * kNchwStrip, reach = (p.k - 1) * p.dil + 1;
  return {tw, strips, kNchwThreads / (tw * strips), (th - 1) * p.stride + reach,
          (tw - 1) * p.stride + reach};
}

template <typename T, int K, int S>
__global__ void __launch_bounds__(kNchwThreads) dwconv_bn_act_nchw(const DwParams<T> p) {
  constexpr int R = kNchwStrip;
  const NchwShape sh = dwconv_nchw_shape(p);
  const int k = K ? K : p.k, s = S ? S : p.stride, d = K ? 1 : p.dil, taps = k * k;
  FASTDW_DYNAMIC_SHARED(float, smem);
  SharedPtr<float> window = smem;                             // [planes][in_rows][in_cols]
  SharedPtr<float> wsh = smem + sh.planes * sh.window();      // [planes][k*k]
  const int tiles_w = static_cast<int>((p.OW + sh.tw - 1) / sh.tw);
  const int64_t oh0 = int64_t(blockIdx.y / tiles_w) * sh.th();
  const int64_t ow0 = int64_t(blockIdx.y % tiles_w) * sh.tw;
  const int64_t ih0 = oh0 * s - p.pad, iw0 = ow0 * s - p.pad;
  const int64_t plane0 = int64_t(blockIdx.x) * sh.planes, planes = p.N * p.C;

  // Stage every plane's window and taps (0 outside the image and past the last plane).
  const int count = sh.planes * sh.window();
  for (int e = threadIdx.x; e < count; e += kNchwThreads) {
    const int pl = e / sh.window(), r = e % sh.window() / sh.in_cols, col = e % sh.in_cols;
    const int64_t plane = plane0 + pl, ih = ih0 + r, iw = iw0 + col;
    float v = 0.f;
    if (plane < planes && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) {
      const int64_t n = plane / p.C, c = plane % p.C;
      v = to_float(p.x[n * p.xs_n + c / p.mult * p.xs_c + ih * p.xs_h + iw * p.xs_w]);
    }
    window[e] = v;
  }
  for (int e = threadIdx.x; e < sh.planes * taps; e += kNchwThreads) {
    const int64_t plane = plane0 + e / taps;
    wsh[e] = plane < planes ? p.w[int64_t(e % taps) * p.C + plane % p.C] : 0.f;
  }
  __syncthreads();

  const int per_plane = sh.tw * sh.strips;
  const int pl = threadIdx.x / per_plane, tx = threadIdx.x % sh.tw,
            ty = threadIdx.x % per_plane / sh.tw;
  const int64_t plane = plane0 + pl;
  if (pl >= sh.planes || plane >= planes) return;
  SharedPtr<float> win = window + pl * sh.window() + tx * s;  // column tx*s of row 0
  SharedPtr<float> w = wsh + pl * taps;
  const int r0 = ty * R;  // the strip's first output row in the tile
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  if constexpr (K > 0) {
    // Window row r0*S + t, t in [0, (R-1) S + K), feeds output r of the strip with tap row
    // i = t - r S where 0 <= i < K; t ascends, so each output still adds its rows in order.
#pragma unroll
    for (int t = 0; t < (R - 1) * S + K; ++t) {
      float row[K];
#pragma unroll
      for (int j = 0; j < K; ++j) row[j] = win[(r0 * S + t) * sh.in_cols + j];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int i = t - r * S;
        if (i < 0 || i >= K) continue;  // compile-time after unrolling
#pragma unroll
        for (int j = 0; j < K; ++j) acc[r] = fmaf(row[j], w[i * K + j], acc[r]);
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < k; ++i)
        for (int j = 0; j < k; ++j)
          acc[r] = fmaf(win[((r0 + r) * s + i * d) * sh.in_cols + j * d], w[i * k + j], acc[r]);
  }
  const int64_t n = plane / p.C, c = plane % p.C, ow = ow0 + tx;
  if (ow >= p.OW) return;
  const float scale = p.scale[c], shift = p.shift[c];
  T* yp = p.y + n * p.ys_n + c * p.ys_c + ow * p.ys_w;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t oh = oh0 + r0 + r;
    if (oh < p.OH) yp[oh * p.ys_h] = from_float<T>(activate(fmaf(acc[r], scale, shift), p.act));
  }
}

// k in {3, 5, 7} x stride {1, 2} at dilation 1, else generic.
template <typename T>
DwKernel<T> dwconv_bn_act_nchw_kernel(const DwParams<T>& p) {
  if (p.dil == 1 && (p.stride == 1 || p.stride == 2)) {
    const bool s1 = p.stride == 1;
    switch (p.k) {
      case 3: return s1 ? dwconv_bn_act_nchw<T, 3, 1> : dwconv_bn_act_nchw<T, 3, 2>;
      case 5: return s1 ? dwconv_bn_act_nchw<T, 5, 1> : dwconv_bn_act_nchw<T, 5, 2>;
      case 7: return s1 ? dwconv_bn_act_nchw<T, 7, 1> : dwconv_bn_act_nchw<T, 7, 2>;
      default: break;
    }
  }
  return dwconv_bn_act_nchw<T, 0, 0>;
}

template <typename T>
bool launch_dwconv_bn_act_nchw(const DwParams<T>& p, Stream stream) {
  // The window spans at least (k-1)d + 1 rows and columns and 7s more columns (TW >= 8): where
  // either reaches kNchwMaxExtent it cannot fit shared memory, and NchwShape's int arithmetic
  // must not see it (a dilation or stride near 2^31 would overflow).
  const int64_t reach = int64_t(p.k - 1) * p.dil + 1;
  if (reach >= kNchwMaxExtent || p.stride >= kNchwMaxExtent) return false;
  const NchwShape sh = dwconv_nchw_shape(p);
  const size_t bytes =
      sizeof(float) * size_t(sh.planes) * (size_t(sh.window()) + size_t(p.k) * p.k);
  if (bytes > kDefaultDynamicShared) return false;
  const int64_t blocks = (p.N * p.C + sh.planes - 1) / sh.planes;
  const int64_t tiles = ((p.OH + sh.th() - 1) / sh.th()) * ((p.OW + sh.tw - 1) / sh.tw);
  if (tiles > 65535) return false;  // grid.y's limit: a plane this large runs channels_last
  if (blocks > 0x7fffffff)
    throw std::invalid_argument("dwconv_bn_act: " + std::to_string(p.N * p.C) + " planes of " +
                                std::to_string(p.OH) + " x " + std::to_string(p.OW) +
                                " outputs exceed the grid limits");
  launch(dwconv_bn_act_nchw_kernel(p),
         Launch{dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(tiles)),
                dim3(kNchwThreads), bytes, stream},
         p);
  return true;
}

}  // namespace fastdw_cuda
