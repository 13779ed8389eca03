// `import fastdw._C` loads this library, which registers the ops (csrc/schemas.cpp, the kernels
// in csrc/cpu). Its one Python function is the eval caches' stamp check (csrc/stamp.cpp).
#include <Python.h>

#include "stamp.h"

extern "C" PyObject* PyInit__C() {
  static PyMethodDef methods[] = {
      {.ml_name = "stamp_unchanged", .ml_meth = fastdw_stamp_unchanged, .ml_flags = METH_O,
       .ml_doc = "fastdw.nn.cache.unchanged(stamp), in C"},
      {}};  // sentinel
  static PyModuleDef module = {.m_base = PyModuleDef_HEAD_INIT, .m_name = "_C",
                               .m_doc = "fastdw C++ CPU kernels", .m_size = -1,
                               .m_methods = methods};
  return PyModule_Create(&module);
}
