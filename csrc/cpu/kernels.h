// Torch-free interface between the op files (csrc/cpu/<op>.cpp, which include ATen) and the
// vectorised loops (csrc/cpu/isa/*.cpp, compiled once per instruction set). Keeping ATen out of the
// per-ISA translation units is what makes three ISA copies cheap to build (seconds, not minutes).
// Every index is int64_t, so no size the op files accept can overflow an index here.
#pragma once
#include <cstdint>

namespace fastdw_cpu {

enum Act : int { kNone = 0, kRelu, kRelu6, kHardswish, kHardsigmoid, kSilu };
enum DType : int { kFloat = 0, kBFloat16 = 1 };

// One depthwise conv + affine + activation problem on channels-last memory (channel stride 1).
// Input rows are addressed relative to x_h0 and output rows relative to y_h0, so a row tile of a
// larger image (the hidden tile of inverted_residual) is described by the same struct.
struct DwParams {
  const void* x;  // input (dtype): (n, c, ih, iw) at n*xs_n + (ih-x_h0)*xs_h + iw*xs_w + c
  void* y;        // output (dtype): (n, c, oh, ow) at n*ys_n + (oh-y_h0)*ys_h + ow*ys_w + c
  const float* w;       // packed taps [k*k][C]: weight[c, 0, i, j] at (i*k + j)*C + c
  const float* scale;   // [C]
  const float* shift;   // [C]
  int64_t C, H, W, OH, OW;
  int64_t xs_n, xs_h, xs_w, x_h0 = 0;  // row origins 0 unless the rows are a tile
  int64_t ys_n, ys_h, ys_w, y_h0 = 0;
  int64_t k, stride, pad, dil;
  int act;              // Act
  int dtype;            // DType of x and y
};

// C = act((A @ B) * scale + shift) (+ res) for fp32 row-major A (M x K, row stride lda) and C
// (row stride ldc), B (K x N) packed by pack_gemm_b: the 1x1 convolutions (pwconv_bn_act, and
// inverted_residual on groups of channels-last rows), with the epilogue applied while the result is
// still in registers.
struct GemmParams {
  const float* a;
  const float* b;                // pack_gemm_b's layout
  float* c;
  const float* scale = nullptr;  // [N], or nullptr for 1
  const float* shift;            // [N]
  const float* res = nullptr;    // nullptr or [M][ldr]
  int64_t K, N, lda, ldc, ldr = 0;
  int act;
};

// A direct convolution (groups 1) with bias and activation, for layers with few taps (the stem):
//   y[n, oh, ow, o] = act(sum_{c,i,j} x[n, c, oh*s - p + i*d, ow*s - p + j*d] * w[o, c, i, j]
//                         + bias[o]),
// zero padding, computed as a GEMM of the im2col matrix (C*k*k <= kMaxConvTaps columns) and B
// = w as (C_out, C*k*k) packed by pack_gemm_b. x any strides, y channels-last and dense.
constexpr int64_t kMaxConvTaps = 256;
struct ConvParams {
  const float* x;     // (n, c, ih, iw) at n*xs_n + c*xs_c + ih*xs_h + iw*xs_w
  float* y;           // (n, oh, ow, o) at ((n*OH + oh)*OW + ow)*Cout + o
  const float* w;     // pack_gemm_b's layout
  const float* bias;  // [Cout]
  int64_t C, H, W, OH, OW, Cout;
  int64_t xs_n, xs_c, xs_h, xs_w;
  int64_t k, stride, pad, dil;
  int act;
};

// The functions below run the widest instruction set this CPU supports (csrc/cpu/isa/select.cpp).

// Output rows [begin, end) (flat index n*OH + oh), so the caller parallelises with
// at::parallel_for.
void dw_rows(const DwParams& p, int64_t begin, int64_t end);
void conv_rows(const ConvParams& p, int64_t begin, int64_t end);

// B of the GEMM is stored in column panels of P = gemm_panel_width() columns (the
// micro-kernel's width): panel q holds columns [q*P, q*P + w) as a K x w' row-major block
// starting at b + q*P*K, w' being w rounded up to whole vectors (the last panel may be narrower;
// its padding columns are zero), so the K loop of a block streams contiguous memory.
// pack_gemm_b writes that layout, gemm_packed_floats(N, K) floats, from
// weight[n, k] = w[n * ws_n + k * ws_k] (a 1x1 conv weight (C_out, C_in), i.e. B transposed).
int64_t gemm_panel_width();
int64_t gemm_packed_floats(int64_t N, int64_t K);
void pack_gemm_b(const float* w, int64_t ws_n, int64_t ws_k, int64_t N, int64_t K, float* out);
// out = diag(g) B for a packed B (row k of every panel times g[k]), in the same layout.
void scale_gemm_b_rows(const float* b, const float* g, int64_t N, int64_t K, float* out);

// Squeeze-excite on d (rows x cols, dense): out[c] = mean_r d[r, c]; d[r, c] *= g[c].
void column_means(const float* d, int64_t rows, int64_t cols, float* out);
void scale_columns(float* d, int64_t rows, int64_t cols, const float* g);

// C rows [m0, m1), columns [n0, n1) with n0 a multiple of gemm_panel_width() and n1 one too or
// N, so callers can split rows, column panels or both over threads.
void gemm(const GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);

// The instruction set in use: "avx512", "avx2" or "baseline". FASTDW_CPU_CAPABILITY (one of
// those names) lowers it, like ATEN_CPU_CAPABILITY does for ATen, so tests can run every variant.
const char* capability();

}  // namespace fastdw_cpu
