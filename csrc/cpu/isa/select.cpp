// Runtime choice of the instruction set, once per process (the role of ATen's DispatchStub).
#include <cstdlib>
#include <cstring>

#include "../kernels.h"

namespace fastdw_cpu {

#define FASTDW_DECLARE(isa)                                              \
  namespace isa {                                                        \
  void dw_rows(const DwParams& p, int64_t begin, int64_t end);           \
  void conv_rows(const ConvParams& p, int64_t begin, int64_t end);       \
  void gemm(const GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);  \
  int64_t gemm_panel_width();                                            \
  int64_t gemm_packed_floats(int64_t N, int64_t K);                      \
  void pack_gemm_b(const float* w, int64_t ws_n, int64_t ws_k, int64_t N, int64_t K,  \
                   float* out);                                          \
  void scale_gemm_b_rows(const float* b, const float* g, int64_t N, int64_t K, float* out); \
  void column_means(const float* d, int64_t rows, int64_t cols, float* out); \
  void scale_columns(float* d, int64_t rows, int64_t cols, const float* g);  \
  }
FASTDW_DECLARE(avx512)
FASTDW_DECLARE(avx2)
FASTDW_DECLARE(baseline)
#undef FASTDW_DECLARE

namespace {

enum Isa { kBaseline, kAvx2, kAvx512 };

Isa detect() {
  // __builtin_cpu_supports reads cpuid through libgcc, which also checks that the OS saves the
  // wide registers (XCR0), so a CPU or VM without AVX-512 state never gets AVX-512 code.
  __builtin_cpu_init();
  Isa best = kBaseline;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = kAvx2;
  if (best == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = kAvx512;
  if (const char* want = std::getenv("FASTDW_CPU_CAPABILITY")) {  // may only lower the choice
    if (!std::strcmp(want, "baseline")) best = kBaseline;
    else if (!std::strcmp(want, "avx2") && best > kAvx2) best = kAvx2;
  }
  return best;
}

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

}  // namespace

// The same function of the chosen instruction set's namespace.
#define FASTDW_DISPATCH(call)              \
  switch (isa()) {                         \
    case kAvx512: return avx512::call;     \
    case kAvx2: return avx2::call;         \
    default: return baseline::call;        \
  }

void dw_rows(const DwParams& p, int64_t begin, int64_t end) {
  FASTDW_DISPATCH(dw_rows(p, begin, end))
}

void conv_rows(const ConvParams& p, int64_t begin, int64_t end) {
  FASTDW_DISPATCH(conv_rows(p, begin, end))
}

void gemm(const GemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  FASTDW_DISPATCH(gemm(p, m0, m1, n0, n1))
}
int64_t gemm_panel_width() { FASTDW_DISPATCH(gemm_panel_width()) }
int64_t gemm_packed_floats(int64_t N, int64_t K) { FASTDW_DISPATCH(gemm_packed_floats(N, K)) }
void pack_gemm_b(const float* w, int64_t ws_n, int64_t ws_k, int64_t N, int64_t K, float* out) {
  FASTDW_DISPATCH(pack_gemm_b(w, ws_n, ws_k, N, K, out))
}
void scale_gemm_b_rows(const float* b, const float* g, int64_t N, int64_t K, float* out) {
  FASTDW_DISPATCH(scale_gemm_b_rows(b, g, N, K, out))
}
void column_means(const float* d, int64_t rows, int64_t cols, float* out) {
  FASTDW_DISPATCH(column_means(d, rows, cols, out))
}
void scale_columns(float* d, int64_t rows, int64_t cols, const float* g) {
  FASTDW_DISPATCH(scale_columns(d, rows, cols, g))
}
#undef FASTDW_DISPATCH

const char* capability() {
  static const char* names[] = {"baseline", "avx2", "avx512"};
  return names[isa()];
}

}  // namespace fastdw_cpu
