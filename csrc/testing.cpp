// Ops that exist only for the tests (tests/cpp/test_kernels.py), not for fastdw itself.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>
#include <vector>

TORCH_LIBRARY_FRAGMENT(fastdw_cpp, m) {
  // How at::parallel_for, which every kernel uses, splits [0, n) with this grain: one
  // (begin, end, intra-op thread number) triple per chunk, for the threading tests (a build
  // without OpenMP runs one chunk on thread 0).
  m.def("parallel_chunks(int n, int grain) -> int[]", [](int64_t n, int64_t grain) {
    std::mutex mutex;
    std::vector<int64_t> chunks;
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      const int64_t thread = at::get_thread_num();
      std::lock_guard<std::mutex> lock(mutex);
      chunks.insert(chunks.end(), {begin, end, thread});
    });
    return chunks;
  });
}
