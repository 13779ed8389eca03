// fastdw._C.stamp_unchanged, registered by csrc/ops.cpp's module.
#pragma once
#include <Python.h>

PyObject* fastdw_stamp_unchanged(PyObject* module, PyObject* stamp);
