// Where a kernel's output goes: a new channels-last tensor, or, while a program runs
// (program.cpp), a view into one of two buffers the program keeps between runs.
//
// Why: at batch 8 a MobileNet's block outputs are megabytes each. glibc hands blocks that large
// back to the kernel when they are freed and maps them again, page fault by page fault, on the
// next call, which costs a few percent of a whole forward (bench/README.md, "Allocator").
// A program's steps run one after another and each reads only the output of the step before,
// so two buffers taken in turns hold every output: the one a kernel writes is never the one it
// reads (that is either the last one taken or a tensor from outside the arena).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastdw_cpu {

class OutputArena {
 public:
  // An uninitialised (N, C, H, W) channels-last float tensor viewing the next buffer in turn,
  // grown when too small (a view taken earlier keeps the old storage alive).
  at::Tensor take(const at::TensorOptions& options, int64_t N, int64_t C, int64_t H, int64_t W);

  // Start a run with the first buffer, so that every run of a program puts each step's output
  // in the same buffer (otherwise a program with an odd number of takes would grow both
  // buffers to its largest output).
  void restart() { next_ = 0; }

  // Whether t's memory is one of the buffers (the program's result must not be: the next run
  // would overwrite it).
  bool holds(const at::Tensor& t) const;

 private:
  at::Tensor buffers_[2];
  int next_ = 0;
};

// The calling thread's arena for the life of this object (kernels allocate their outputs on the
// calling thread, before their parallel loops).
class UseArena {
 public:
  explicit UseArena(OutputArena* arena);
  ~UseArena();
  UseArena(const UseArena&) = delete;
  UseArena& operator=(const UseArena&) = delete;

 private:
  OutputArena* previous_;
};

// A kernel's (N, C, H, W) channels-last output with x's dtype and device: from the calling
// thread's arena for float32 while a program runs, otherwise a new tensor.
at::Tensor new_output(const at::Tensor& x, int64_t N, int64_t C, int64_t H, int64_t W);

}  // namespace fastdw_cpu
