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
  const float* w;       // packed weights [k*k][C]: weight[c, 0, i, j] * scale[c] at (i*k + j)*C + c
  const float* shift;   // [C]
  int64_t C, H, W, OH, OW;
  int64_t xs_n, xs_h, xs_w, x_h0;
  int64_t ys_n, ys_h, ys_w, y_h0;
  int64_t k, stride, pad, dil;
  int act;              // Act
  int dtype;            // DType of x and y
};

// C = act(A @ B + shift) (+ res) for fp32 row-major A (M x K, row stride lda), B (K x N, dense)
// and C (row stride ldc): the 1x1 convolutions (pwconv_bn_act, and inverted_residual on
// channels-last tiles), with the epilogue applied while the result is still in registers.
struct GemmParams {
  const float* a;
  const float* b;
  float* c;
  const float* shift;   // [N]
  const float* res;     // nullptr or [M][ldr]
  int64_t K, N, lda, ldc, ldr;
  int act;
};

// Each function handles output rows [begin, end) (for dw: flat index n*OH + oh; for the GEMM:
// rows of C), so the caller parallelises with at::parallel_for. Both run the widest instruction
// set this CPU supports.
void dw_rows(const DwParams& p, int64_t begin, int64_t end);
void gemm_rows(const GemmParams& p, int64_t begin, int64_t end);

// The instruction set in use: "avx512", "avx2" or "baseline". FASTDW_CPU_CAPABILITY (one of
// those names) lowers it, like ATEN_CPU_CAPABILITY does for ATen, so tests can run every variant.
const char* capability();

}  // namespace fastdw_cpu
