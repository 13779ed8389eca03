// The schemas of the C++ kernels, declared once. Namespace fastdw_cpp, not fastdw: the public
// "fastdw" ops are Python custom ops (fastdw/ops) that validate arguments and then call these
// through fastdw/kernels/cpp.py. The CPU implementations live in csrc/cpu/<op>.cpp.
#include <Python.h>
#include <torch/library.h>

#include "cpu/kernels.h"
#include "stamp.h"
#include <ATen/Parallel.h>

#include <mutex>
#include <vector>

TORCH_LIBRARY(fastdw_cpp, m) {
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, "
        "int padding, int dilation, str act) -> Tensor");
  m.def("pwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, str act, "
        "Tensor? residual) -> Tensor");
  m.def("inverted_residual(Tensor x, Tensor? expand_w, Tensor? expand_scale, "
        "Tensor? expand_shift, Tensor dw_w, Tensor dw_scale, Tensor dw_shift, Tensor project_w, "
        "Tensor project_scale, Tensor project_shift, int stride, str act, Tensor? se_w1, "
        "Tensor? se_b1, Tensor? se_w2, Tensor? se_b2, bool residual) -> Tensor");
  // Which vectorised variant runs here (avx512 / avx2 / baseline), for info() and benchmarks.
  m.def("capability() -> str", [] { return std::string(fastdw_cpu::capability()); });
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

// `import fastdw._C` loads this library, which registers the ops above. Its one Python function
// is the eval caches' stamp check (csrc/stamp.cpp).
extern "C" PyObject* PyInit__C() {
  static PyMethodDef methods[] = {
      {"stamp_unchanged", fastdw_stamp_unchanged, METH_O,
       "fastdw.nn._fold.unchanged(stamp), in C"},
      {nullptr, nullptr, 0, nullptr}};
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastdw C++ CPU kernels", -1,
                               methods};
  return PyModule_Create(&module);
}
