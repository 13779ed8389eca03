// fastdw_cpu::parallel_for: at::parallel_for's contract (f(b, e) on disjoint chunks covering
// [begin, end), at most one chunk per intra-op thread, chunks of at least `grain` iterations,
// serial when already inside a parallel region) on the OpenMP thread pool that ATen itself uses.
//
// Why not at::parallel_for: it is a header template whose parallel branch exists only when the
// including file is compiled with -fopenmp (`#ifdef _OPENMP` in ATen/ParallelOpenMP.h); without
// that flag (setup.py does not pass it) it silently runs f(begin, end) on the calling thread, and
// every kernel here ran on one core whatever torch.set_num_threads said. Here the parallel region
// is opened through GOMP_parallel, the entry point `#pragma omp parallel` compiles to, resolved at
// load time in the libgomp that libtorch_cpu already loaded, so the threads, their count
// (torch.set_num_threads) and the nesting check are ATen's own. The symbols are weak: with a
// libtorch that has no OpenMP runtime the kernels stay correct and run serially.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

extern "C" {
void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags)
    __attribute__((weak));
int omp_get_thread_num() __attribute__((weak));
}

namespace fastdw_cpu {

template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  const int64_t n = end - begin;
  grain = std::max<int64_t>(grain, 1);
  const int64_t threads = at::get_num_threads();
  if (GOMP_parallel == nullptr || omp_get_thread_num == nullptr || n <= grain || threads < 2 ||
      at::in_parallel_region()) {
    f(begin, end);
    return;
  }
  struct Job {
    const F* f;
    int64_t begin, end, chunk;
    std::atomic_flag failed = ATOMIC_FLAG_INIT;
    std::exception_ptr error;
  } job;
  job.f = &f;
  job.begin = begin;
  job.end = end;
  const int64_t tasks = std::min(threads, (n + grain - 1) / grain);
  job.chunk = (n + tasks - 1) / tasks;
  // num_threads 0: the pool's current size, as ATen does (asking GOMP for a different count per
  // region makes it resize its pool); threads past the last chunk return at once.
  GOMP_parallel(
      [](void* data) {
        Job& j = *static_cast<Job*>(data);
        const int64_t b = j.begin + omp_get_thread_num() * j.chunk;
        if (b >= j.end) return;
        try {
          (*j.f)(b, std::min(j.end, b + j.chunk));
        } catch (...) {  // an exception must not leave an OpenMP region: rethrown below
          if (!j.failed.test_and_set()) j.error = std::current_exception();
        }
      },
      &job, 0, 0);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace fastdw_cpu
