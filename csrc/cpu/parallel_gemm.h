// The GEMM of csrc/cpu/isa/loops.h over the intra-op threads (inline when already inside a
// parallel region, e.g. inverted_residual's loop over units).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>

#include "kernels.h"

namespace fastdw_cpu {

// Work items are (row block, column panel) pairs, handed to threads in contiguous ranges. When A
// (M x K) is the larger operand, items go row by row and each thread reads its own rows of A
// and all of B; when B (K x N) is larger (few rows: 7x7 and 14x14 layers at batch 1), they go
// panel by panel and each thread reads only its share of B's panels, the operand that costs.
inline void parallel_gemm(const GemmParams& g, int64_t M) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  // Below ~64k multiply-adds a chunk does not pay for waking a thread, so fewer than two chunks'
  // worth (M*K*N < 2*kMinChunk, tested without forming M*K*N) run here. A single row can be
  // worth splitting (by column panels): a classifier layer at batch 1 is ~1M.
  constexpr int64_t kMinChunk = int64_t{1} << 16;
  const int64_t kn = std::max<int64_t>(1, g.K * g.N);
  const int64_t min_rows = std::max<int64_t>(1, kMinChunk / kn);
  if (threads == 1 || M < (2 * kMinChunk + kn - 1) / kn) return gemm(g, 0, M, 0, g.N);
  if (M >= g.N) {
    const int64_t blocks = (M + 3) / 4;  // whole 4-row register blocks
    at::parallel_for(0, blocks, (min_rows + 3) / 4, [&](int64_t b, int64_t e) {
      gemm(g, 4 * b, std::min(M, 4 * e), 0, g.N);
    });
    return;
  }
  const int64_t P = gemm_panel_width(), panels = (g.N + P - 1) / P;
  // Enough row blocks for ~4 items per thread, each a multiple of 4 rows.
  const int64_t want = std::min((M + 3) / 4, (4 * threads + panels - 1) / panels);
  const int64_t rows = ((M + want - 1) / want + 3) / 4 * 4, row_blocks = (M + rows - 1) / rows;
  at::parallel_for(0, panels * row_blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t q = i / row_blocks, m0 = (i % row_blocks) * rows;
      gemm(g, m0, std::min(M, m0 + rows), q * P, std::min(g.N, (q + 1) * P));
    }
  });
}

}  // namespace fastdw_cpu
