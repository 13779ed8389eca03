// fastdw._C.stamp_unchanged, registered by csrc/module.cpp.
#pragma once
#include <Python.h>

PyObject* fastdw_stamp_unchanged(PyObject* module, PyObject* stamp);
