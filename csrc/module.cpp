// `import fastdw._C` loads this library, which registers the ops (csrc/schemas.cpp, the kernels
// in csrc/cpu). Its Python functions are the eval caches' stamp check (csrc/stamp.cpp) and the
// ops' test of a call's tensors for the direct kernel route (csrc/direct_call.cpp).
#include <Python.h>

#include "direct_call.h"
#include "stamp.h"

extern "C" PyObject* PyInit__C() {
  static PyMethodDef methods[] = {
      {.ml_name = "stamp_unchanged", .ml_meth = fastdw_stamp_unchanged, .ml_flags = METH_O,
       .ml_doc = "fastdw.nn.cache.unchanged(stamp), in C"},
      {.ml_name = "plain_float32",
       .ml_meth = reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fastdw_plain_float32)),
       .ml_flags = METH_FASTCALL,
       .ml_doc = "fastdw.ops.dispatch.plain_and_grad_free(tensors, torch.float32), in C"},
      {}};  // sentinel
  static PyModuleDef module = {.m_base = PyModuleDef_HEAD_INIT, .m_name = "_C",
                               .m_doc = "fastdw C++ CPU kernels", .m_size = -1,
                               .m_methods = methods};
  return PyModule_Create(&module);
}
