// The vectorised CPU loops, written once and compiled once per instruction set. Each including
// file sets FASTDW_ISA (namespace name), FASTDW_VW (fp32 lanes of the widest vector) and a
// `#pragma GCC target` before including this header; standard headers are included here first,
// before that pragma takes effect on anything they define, and all code lives in the ISA's own
// namespace, so no inline function compiled for AVX-512 can be merged by the linker into code
// that runs on an AVX2 machine (the ODR trap that turns per-ISA builds into SIGILL).
//
// Vectors are GCC vector extensions: the same source gives 16-lane AVX-512, 8-lane AVX2 and
// 4-lane SSE2 code, with 1-lane vectors for channel tails.
#ifndef FASTDW_ISA
#error "include through one of csrc/cpu/isa/{avx512,avx2,baseline}.cpp"
#endif
#include "../kernels.h"

namespace fastdw_cpu {
namespace FASTDW_ISA {

template <int N> struct Lanes {
  typedef float F __attribute__((vector_size(4 * N)));
  typedef int32_t I __attribute__((vector_size(4 * N)));
  typedef uint32_t U __attribute__((vector_size(4 * N)));
  typedef uint16_t H __attribute__((vector_size(2 * N)));
};

// Storage types: float, or bfloat16 kept as its raw 16 bits.
struct bf16 { uint16_t bits; };

template <int N> inline typename Lanes<N>::F load(const float* p) {
  typename Lanes<N>::F v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
// bf16 -> fp32 is exact: the 16 bits are the high half of the float.
template <int N> inline typename Lanes<N>::F load(const bf16* p) {
  typename Lanes<N>::H h;
  __builtin_memcpy(&h, p, sizeof h);
  typename Lanes<N>::U u = __builtin_convertvector(h, typename Lanes<N>::U) << 16;
  return (typename Lanes<N>::F)u;
}
template <int N> inline void store(float* p, typename Lanes<N>::F v) {
  __builtin_memcpy(p, &v, sizeof v);
}
// fp32 -> bf16 rounds to nearest even (what torch's .to(bfloat16) does): add 0x7fff plus the
// lowest kept bit, then truncate; NaN becomes a quiet NaN instead of rounding into infinity.
template <int N> inline void store(bf16* p, typename Lanes<N>::F v) {
  using U = typename Lanes<N>::U;
  U u = (U)v;
  U r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  r = (v != v) ? (U)(r * 0u + 0x7fc0u) : r;
  typename Lanes<N>::H h = __builtin_convertvector(r, typename Lanes<N>::H);
  __builtin_memcpy(p, &h, sizeof h);
}

// e^u lane-wise, for silu: EfficientNet applies it to every expanded pixel, where a scalar
// libm call per lane keeps the loop from vectorising. Range reduction u = n ln2 + r with
// n = round(u / ln2), |r| <= ln2 / 2, ln2 split in two so n * ln2 is exact to 32 bits; then
// e^r = 1 + r + r^2/2 + ... to degree 7 in Horner form (truncation error |r|^8 / 8! below
// float rounding); then 2^n through the exponent bits. Within 2 ulp of e^u where that is a
// normal float (tests/ops check silu against float64). Beyond it: 0 below ln(FLT_MIN) and +inf
// above 127.5 ln2 (2^128 does not fit the exponent; e^u > 2.4e38 there), so silu(-inf) is
// -inf / inf = NaN as in torch. A NaN lane stays NaN.
template <int N> inline typename Lanes<N>::F exp_lanes(typename Lanes<N>::F u) {
  using F = typename Lanes<N>::F;
  using I = typename Lanes<N>::I;
  const F zero{}, lo = zero - 87.3365447f, hi = zero + 88.3762626f;  // ln(FLT_MIN), 127.5 ln2
  const F t = u < lo ? lo : u > hi ? hi : u;  // NaN lanes keep NaN (both comparisons false)
  const F half = t < zero ? zero - 0.5f : zero + 0.5f;
  const I n = __builtin_convertvector(t * 1.44269504f + half, I);  // round half away from 0
  const F nf = __builtin_convertvector(n, F);
  const F r = (t - nf * 0.693359375f) + nf * 2.12194440e-4f;  // ln2 = 0.693359375 - 2.1219e-4
  F p = zero + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  F e = p * (F)((n + 127) << 23);  // 2^n for n in [-126, 127]
  e = u < lo ? zero : e;
  e = u > hi ? zero + __builtin_inff() : e;
  return u != u ? u : e;
}

// The activations of fastdw.contract.ACTIVATIONS, lane-wise, with torch's NaN semantics: a NaN
// lane stays NaN, so each clamp selects the bound only where the comparison with it holds (a
// comparison with NaN is false).
template <int A, int N> inline typename Lanes<N>::F activate(typename Lanes<N>::F v) {
  using F = typename Lanes<N>::F;
  const F zero{}, six = zero + 6.f;  // constants (not v * 0.f, which costs a multiply)
  auto relu6 = [&](F t) { t = t < zero ? zero : t; return t > six ? six : t; };
  if constexpr (A == kRelu) return v < zero ? zero : v;
  else if constexpr (A == kRelu6) return relu6(v);
  else if constexpr (A == kHardswish) return v * relu6(v + 3.f) * (1.f / 6.f);
  else if constexpr (A == kHardsigmoid) return relu6(v + 3.f) * (1.f / 6.f);
  else if constexpr (A == kSilu) return v / (1.f + exp_lanes<N>(-v));  // x * sigmoid(x)
  else return v;
}

// The output columns [lo, hi) whose window (k taps from ow*s - pad, dilation d) lies inside the
// row [0, W): ow*s - pad >= 0 and ow*s - pad + (k-1)*d <= W-1. Empty (lo == hi) if none.
inline void inside_columns(int64_t W, int64_t OW, int64_t k, int64_t s, int64_t pad, int64_t d,
                           int64_t& lo, int64_t& hi) {
  const int64_t last = W - 1 - (k - 1) * d + pad;  // the largest ow*s that fits
  lo = (pad + s - 1) / s;
  hi = last >= 0 ? last / s + 1 : 0;
  hi = hi < OW ? hi : OW;
  lo = lo < hi ? lo : hi;
}

// Depthwise conv + affine + act for one output row (n, oh) and N channels starting at c0.
//   y[n, oh, ow, c] = act( scale[c] * sum_{i,j < k} x[n, oh*s - p + i*d, ow*s - p + j*d, c]
//                          * w[i*k+j, c] + shift[c] ),
// taps outside the image contribute 0 (zero padding). K and S are compile-time for the common
// 3x3 / 5x5, stride 1 / 2 cases (fully unrolled taps, weights in registers); 0 means "read
// p.k / p.stride at run time". Output pixels whose whole window is inside the image take the
// branch-free loop; the image border takes the checked loop.
template <class T, int N, int K, int S, int A>
void dw_chunk(const DwParams& p, int64_t n, int64_t oh, int64_t c0) {
  using F = typename Lanes<N>::F;
  const int64_t k = K ? K : p.k, s = S ? S : p.stride, d = p.dil, C = p.C;
  const T* x = static_cast<const T*>(p.x) + n * p.xs_n + c0;
  T* y = static_cast<T*>(p.y) + n * p.ys_n + (oh - p.y_h0) * p.ys_h + c0;
  const int64_t ih0 = oh * s - p.pad;
  const F scale = load<N>(p.scale + c0), shift = load<N>(p.shift + c0);

  F wreg[K ? K * K : 1];
  if constexpr (K != 0)
    for (int t = 0; t < K * K; ++t) wreg[t] = load<N>(p.w + t * C + c0);
  auto weight = [&](int64_t t) -> F {
    if constexpr (K != 0) return wreg[t];
    else return load<N>(p.w + t * C + c0);
  };

  auto checked = [&](int64_t ow) {
    F acc{};
    const int64_t iw0 = ow * s - p.pad;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t ih = ih0 + i * d;
      if (ih < 0 || ih >= p.H) continue;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t iw = iw0 + j * d;
        if (iw < 0 || iw >= p.W) continue;
        acc += load<N>(x + (ih - p.x_h0) * p.xs_h + iw * p.xs_w) * weight(i * k + j);
      }
    }
    store<N>(y + ow * p.ys_w, activate<A, N>(acc * scale + shift));
  };

  int64_t lo, hi;
  inside_columns(p.W, p.OW, k, s, p.pad, d, lo, hi);
  const bool rows_inside = ih0 >= 0 && ih0 + (k - 1) * d < p.H;
  if (!rows_inside) lo = hi = p.OW;

  int64_t ow = 0;
  for (; ow < lo; ++ow) checked(ow);
  const T* xr = x + (ih0 - p.x_h0) * p.xs_h;
  const int64_t dh = d * p.xs_h, dw = d * p.xs_w;
  if constexpr (K == 3) {
    // Q = 4 neighbouring outputs at once (dilation 1): their windows overlap, so each input
    // column of a window row is loaded once and feeds every output whose window holds it:
    // (Q-1)*S + K loads per row instead of Q*K (stride 1: 18 loads for 36 FMAs, not 36).
    // The loops have compile-time bounds and unroll; the `if` on j is resolved at compile time.
    // Not for 5x5: its 25 weight registers plus 4 accumulators spill (measured slower).
    constexpr int Q = 4, COLS = (Q - 1) * S + K;
    if (d == 1)
      for (; ow + Q <= hi; ow += Q) {
        const T* px = xr + (ow * s - p.pad) * p.xs_w;
        F acc[Q] = {};
        for (int i = 0; i < K; ++i)
          for (int c = 0; c < COLS; ++c) {
            const F xv = load<N>(px + i * p.xs_h + c * p.xs_w);
            for (int q = 0; q < Q; ++q) {
              const int j = c - q * S;
              if (j >= 0 && j < K) acc[q] += xv * wreg[i * K + j];
            }
          }
        for (int q = 0; q < Q; ++q)
          store<N>(y + (ow + q) * p.ys_w, activate<A, N>(acc[q] * scale + shift));
      }
  }
  for (; ow < hi; ++ow) {
    const T* px = xr + (ow * s - p.pad) * p.xs_w;
    F acc{};
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) acc += load<N>(px + i * dh + j * dw) * weight(i * k + j);
    store<N>(y + ow * p.ys_w, activate<A, N>(acc * scale + shift));
  }
  for (; ow < p.OW; ++ow) checked(ow);
}

// One output row, all channels: full-width vectors, then (on AVX-512) one 8-lane vector, then
// single lanes for the rest, so C need not be a multiple of anything.
template <class T, int K, int S, int A>
void dw_row(const DwParams& p, int64_t n, int64_t oh) {
  int64_t c = 0;
  for (; c + FASTDW_VW <= p.C; c += FASTDW_VW) dw_chunk<T, FASTDW_VW, K, S, A>(p, n, oh, c);
  if constexpr (FASTDW_VW > 8)
    for (; c + 8 <= p.C; c += 8) dw_chunk<T, 8, K, S, A>(p, n, oh, c);
  for (; c < p.C; ++c) dw_chunk<T, 1, K, S, A>(p, n, oh, c);
}

using RowFn = void (*)(const DwParams&, int64_t, int64_t);

template <class T, int K, int S>
RowFn pick_act(int act) {
  switch (act) {
    case kRelu: return dw_row<T, K, S, kRelu>;
    case kRelu6: return dw_row<T, K, S, kRelu6>;
    case kHardswish: return dw_row<T, K, S, kHardswish>;
    case kHardsigmoid: return dw_row<T, K, S, kHardsigmoid>;
    case kSilu: return dw_row<T, K, S, kSilu>;
    default: return dw_row<T, K, S, kNone>;
  }
}

template <class T>
RowFn pick_shape(const DwParams& p) {
  if (p.k == 3 && p.stride == 1) return pick_act<T, 3, 1>(p.act);
  if (p.k == 3 && p.stride == 2) return pick_act<T, 3, 2>(p.act);
  if (p.k == 5 && p.stride == 1) return pick_act<T, 5, 1>(p.act);
  if (p.k == 5 && p.stride == 2) return pick_act<T, 5, 2>(p.act);
  return pick_act<T, 0, 0>(p.act);
}

void dw_rows(const DwParams& p, int64_t begin, int64_t end) {
  const RowFn row = p.dtype == kBFloat16 ? pick_shape<bf16>(p) : pick_shape<float>(p);
  for (int64_t r = begin; r < end; ++r) row(p, r / p.OH, r % p.OH);
}

// Register-blocked GEMM micro-kernel: an R x (NV*L) block of C starting at (m, n),
//   C[m+r, n+j] = act(scale[n+j] * sum_k A[m+r, k] * B[k, n+j] + shift[n+j]) (+ res[m+r, n+j]),
// B[k, n+j] read at b[k*ldb + j] (b points into a column panel, ldb is the panel's padded
// width). R*NV accumulators stay in registers for the whole K loop; each k loads NV vectors of B
// and broadcasts R scalars of A. Only the first `cols` of the NV*L columns are real (a narrow
// last panel, zero-padded by pack_gemm_b): the epilogue reads and writes only those.
constexpr int kGemmNV = FASTDW_VW == 16 ? 4 : 2;  // vectors in a full panel
constexpr int64_t kPanel = kGemmNV * FASTDW_VW;

// Real columns of the panel that starts at column q of an N-column B, and the panel's width in
// memory: whole vectors, zero-padded.
inline int64_t panel_cols(int64_t N, int64_t q) { return N - q < kPanel ? N - q : kPanel; }
inline int64_t padded(int64_t cols) { return (cols + FASTDW_VW - 1) / FASTDW_VW * FASTDW_VW; }

// Rows of a block for NV vectors: enough independent accumulators to cover the FMA latency
// (~24 of AVX-512's 32 registers, 12 of AVX2's 16), with the B vectors and a broadcast beside.
template <int NV> constexpr int block_rows() {
  if constexpr (FASTDW_VW == 16) return NV == 4 ? 6 : NV == 3 ? 8 : 12;
  else return NV == 2 ? 6 : 12;
}

template <int L> inline typename Lanes<L>::F load_cols(const float* p, int64_t cols) {
  if (cols >= L) return load<L>(p);
  typename Lanes<L>::F v{};
  for (int64_t l = 0; l < cols; ++l) v[l] = p[l];
  return v;
}

// Taps: A[m, k] = a[m * lda + taps[k]], a convolution's im2col matrix read straight from its
// input (conv_rows); else a dense A (taps unused). A template parameter, so the dense GEMM's
// inner loop has no branch for it.
template <int R, int NV, int L, int A, bool Taps>
void gemm_block(const GemmParams& p, int64_t m, int64_t n, int64_t cols, const float* b,
                int64_t ldb, const int64_t* taps) {
  using F = typename Lanes<L>::F;
  F acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = F{};
  const float* a = p.a + m * p.lda;
  for (int64_t k = 0; k < p.K; ++k) {
    F bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load<L>(b + k * ldb + v * L);
    const int64_t ak = Taps ? taps[k] : k;
    for (int r = 0; r < R; ++r) {
      const float av = a[r * p.lda + ak];  // vector * scalar: one broadcast, then FMAs
      for (int v = 0; v < NV; ++v) acc[r][v] += bv[v] * av;
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int64_t c0 = n + v * L, vc = cols - v * L;  // vc >= L except in the last vector
    const F shift = load_cols<L>(p.shift + c0, vc);
    const F scale = p.scale ? load_cols<L>(p.scale + c0, vc) : F{} + 1.f;
    for (int r = 0; r < R; ++r) {
      F out = activate<A, L>(acc[r][v] * scale + shift);
      if (p.res) out += load_cols<L>(p.res + (m + r) * p.ldr + c0, vc);
      float* c = p.c + (m + r) * p.ldc + c0;
      if (vc >= L) store<L>(c, out);
      else for (int64_t l = 0; l < vc; ++l) c[l] = out[l];
    }
  }
}

// One panel (NV vectors, `cols` real columns) over rows [begin, end): blocks of R rows, the
// remainder in blocks of R/2, R/4, ... rows.
template <int NV, int A, bool Taps, int R = block_rows<NV>()>
void gemm_panel(const GemmParams& p, int64_t begin, int64_t end, int64_t n, int64_t cols,
                const float* b, int64_t ldb, const int64_t* taps) {
  int64_t m = begin;
  for (; m + R <= end; m += R)
    gemm_block<R, NV, FASTDW_VW, A, Taps>(p, m, n, cols, b, ldb, taps);
  if constexpr (R > 1)
    if (m < end) gemm_panel<NV, A, Taps, R / 2>(p, m, end, n, cols, b, ldb, taps);
}

// Rows in chunks of kGemmRows; within a chunk, panels outside rows, so one panel of B is
// reused by every row of the chunk while it is in L1/L2, and the chunk's rows of A
// (kGemmRows x K) stay in L1/L2 across the panels.
constexpr int64_t kGemmRows = 48;

template <int A, bool Taps>
void gemm_act(const GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
              const int64_t* taps) {
  for (int64_t mc = m0; mc < m1; mc += kGemmRows) {
    const int64_t mc1 = mc + kGemmRows < m1 ? mc + kGemmRows : m1;
    for (int64_t q = n0; q < n1; q += kPanel) {
      const int64_t cols = panel_cols(p.N, q), ldb = padded(cols), nv = ldb / FASTDW_VW;
      const float* panel = p.b + q * p.K;
      if constexpr (kGemmNV == 4) {
        if (nv == 4) gemm_panel<4, A, Taps>(p, mc, mc1, q, cols, panel, ldb, taps);
        else if (nv == 3) gemm_panel<3, A, Taps>(p, mc, mc1, q, cols, panel, ldb, taps);
        else if (nv == 2) gemm_panel<2, A, Taps>(p, mc, mc1, q, cols, panel, ldb, taps);
        else gemm_panel<1, A, Taps>(p, mc, mc1, q, cols, panel, ldb, taps);
      } else {
        if (nv == 2) gemm_panel<2, A, Taps>(p, mc, mc1, q, cols, panel, ldb, taps);
        else gemm_panel<1, A, Taps>(p, mc, mc1, q, cols, panel, ldb, taps);
      }
    }
  }
}

// The activation is a template parameter of the micro-kernel: a run-time switch per output
// vector showed in profiles of short-K GEMMs such as MobileNet's first expand (K = 16).
template <bool Taps>
void gemm_any(const GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
              const int64_t* taps) {
  switch (p.act) {
    case kRelu: return gemm_act<kRelu, Taps>(p, m0, m1, n0, n1, taps);
    case kRelu6: return gemm_act<kRelu6, Taps>(p, m0, m1, n0, n1, taps);
    case kHardswish: return gemm_act<kHardswish, Taps>(p, m0, m1, n0, n1, taps);
    case kHardsigmoid: return gemm_act<kHardsigmoid, Taps>(p, m0, m1, n0, n1, taps);
    case kSilu: return gemm_act<kSilu, Taps>(p, m0, m1, n0, n1, taps);
    default: return gemm_act<kNone, Taps>(p, m0, m1, n0, n1, taps);
  }
}

void gemm(const GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  gemm_any<false>(p, m0, m1, n0, n1, nullptr);
}

// The im2col rows of output pixels [ow0, ow0 + count) of row (n, oh): window (c, i, j) of each
// at out[pixel * K + (c*k + i)*k + j], 0 where it falls outside the image.
inline void gather_windows(const ConvParams& p, int64_t n, int64_t oh, int64_t ow0,
                           int64_t count, int64_t K, float* out) {
  const int64_t k = p.k;
  for (int64_t q = 0; q < count; ++q)
    for (int64_t c = 0; c < p.C; ++c)
      for (int64_t i = 0; i < k; ++i) {
        const int64_t ih = oh * p.stride - p.pad + i * p.dil;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t iw = (ow0 + q) * p.stride - p.pad + j * p.dil;
          out[q * K + (c * k + i) * k + j] =
              ih >= 0 && ih < p.H && iw >= 0 && iw < p.W
                  ? p.x[n * p.xs_n + c * p.xs_c + ih * p.xs_h + iw * p.xs_w]
                  : 0.f;
        }
      }
}

// Output rows [begin, end) (flat n*OH + oh) of the direct convolution (ConvParams): a GEMM per
// row, with one A row per output pixel and one A column per tap (c, i, j). Pixels whose whole
// window lies inside the image read A from x through the taps' offsets; the others (the image
// border: a row or column of pixels at most on each side for the stem) gather their window into
// a zero-padded copy first.
void conv_rows(const ConvParams& p, int64_t begin, int64_t end) {
  const int64_t k = p.k, s = p.stride, d = p.dil, K = p.C * k * k;  // K <= kMaxConvTaps
  int64_t lo, hi;
  inside_columns(p.W, p.OW, k, s, p.pad, d, lo, hi);
  // Tap offsets, formed only when some window lies inside the image (then every one of them is
  // an offset within x, so none can overflow).
  int64_t taps[kMaxConvTaps];
  if (lo < hi && (k - 1) * d < p.H)
    for (int64_t c = 0; c < p.C; ++c)
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j)
          taps[(c * k + i) * k + j] = c * p.xs_c + i * d * p.xs_h + j * d * p.xs_w;
  constexpr int64_t kEdge = 16;  // border pixels gathered at a time
  float edge[kEdge * kMaxConvTaps];
  // The GEMM of pixels whose A rows start at a, lda apart, into C rows from c.
  auto pixels = [&](const float* a, int64_t lda, float* c) {
    return GemmParams{.a = a, .b = p.w, .c = c, .shift = p.bias, .K = K, .N = p.Cout,
                      .lda = lda, .ldc = p.Cout, .act = p.act};
  };
  // Border pixels [ow0, ow1) of row (n, oh), kEdge at a time: windows gathered (zero outside
  // the image), then a dense GEMM.
  auto border = [&](int64_t n, int64_t oh, int64_t ow0, int64_t ow1, float* out) {
    for (; ow0 < ow1; ow0 += kEdge) {
      const int64_t count = ow1 - ow0 < kEdge ? ow1 - ow0 : kEdge;
      gather_windows(p, n, oh, ow0, count, K, edge);
      gemm_any<false>(pixels(edge, K, out + ow0 * p.Cout), 0, count, 0, p.Cout, nullptr);
    }
  };
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / p.OH, oh = r % p.OH, ih0 = oh * s - p.pad;
    float* out = p.y + r * p.OW * p.Cout;
    if (ih0 < 0 || ih0 + (k - 1) * d >= p.H || lo >= hi) {
      border(n, oh, 0, p.OW, out);
      continue;
    }
    border(n, oh, 0, lo, out);
    const float* a = p.x + n * p.xs_n + ih0 * p.xs_h + (lo * s - p.pad) * p.xs_w;
    const int64_t pixel_stride = hi - lo > 1 ? s * p.xs_w : 0;  // unused for one pixel
    gemm_any<true>(pixels(a, pixel_stride, out + lo * p.Cout), 0, hi - lo, 0, p.Cout, taps);
    border(n, oh, hi, p.OW, out);
  }
}

int64_t gemm_panel_width() { return kPanel; }

int64_t gemm_packed_floats(int64_t N, int64_t K) {
  return padded(N) * K;
}

// Visits the panels of a packed B (N x K): f(first column, real columns, offset, padded width).
template <class Fn> void for_each_panel(int64_t N, int64_t K, Fn f) {
  for (int64_t q = 0; q < N; q += kPanel) {
    const int64_t cols = panel_cols(N, q);
    f(q, cols, q * K, padded(cols));
  }
}

void pack_gemm_b(const float* w, int64_t ws_n, int64_t ws_k, int64_t N, int64_t K, float* out) {
  for_each_panel(N, K, [&](int64_t q, int64_t cols, int64_t off, int64_t ldb) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < ldb; ++j)
        out[off + k * ldb + j] = j < cols ? w[(q + j) * ws_n + k * ws_k] : 0.f;
  });
}

void scale_gemm_b_rows(const float* b, const float* g, int64_t N, int64_t K, float* out) {
  for_each_panel(N, K, [&](int64_t, int64_t, int64_t off, int64_t ldb) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < ldb; ++j) out[off + k * ldb + j] = b[off + k * ldb + j] * g[k];
  });
}

// Squeeze-excite helpers on an image's d (rows x cols, dense): column means (the pooled
// vector) and d[r, c] *= g[c]. Plain loops, vectorised by the compiler for this ISA.
void column_means(const float* d, int64_t rows, int64_t cols, float* out) {
  for (int64_t c = 0; c < cols; ++c) out[c] = 0.f;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c] += d[r * cols + c];
  const float inv = 1.f / static_cast<float>(rows);
  for (int64_t c = 0; c < cols; ++c) out[c] *= inv;
}

void scale_columns(float* d, int64_t rows, int64_t cols, const float* g) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) d[r * cols + c] *= g[c];
}

}  // namespace FASTDW_ISA
}  // namespace fastdw_cpu
