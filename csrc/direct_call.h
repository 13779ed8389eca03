// fastdw._C.plain_float32, registered by csrc/module.cpp.
#pragma once
#include <Python.h>

PyObject* fastdw_plain_float32(PyObject* module, PyObject* const* args, Py_ssize_t nargs);
