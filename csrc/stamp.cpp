// fastdw._C.stamp_unchanged(stamp): fastdw.nn.cache.unchanged_py() in C, the check a cached
// eval forward makes on every call (for a whole MobileNetV2, ~1,300 dicts with ~5,000 entries
// and ~310 tensors). Same answers as the Python function, which stays as the specification and
// the fallback when fastdw._C is not built; tests/nn/test_stamp.py runs both on every kind of
// edit. Python does the same work through generic == on dicts (a hash lookup per entry) and a
// method call per tensor; here a dict whose entries are still the very objects the stamp
// copied, in the same order, is recognised by walking both, and tensors are read through their
// C++ handles.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include "stamp.h"

#include <cstring>

namespace {

enum Fields { kMods, kTypes, kModuleDicts, kDicts, kCopies, kTensorDicts, kTensors, kLive,
              kViews, kValued, kValueCopies, kFields };

// 1 if d equals copy, 0 if not, -1 with a Python error set (as PyObject_RichCompareBool). d
// is a module's dict, _modules or hook dict, or a class's mappingproxy; copy what take_stamp()
// made of it: for _modules and hook dicts, whose order is the order children and hooks run in,
// a list of d's items, compared in order; else a dict, compared as == (which ignores order).
int dict_equal(PyObject* d, PyObject* copy) {
  const bool is_dict = PyDict_CheckExact(d) || PyODict_CheckExact(d);
  if (PyList_CheckExact(copy)) {
    if (!is_dict || PyDict_GET_SIZE(d) != PyList_GET_SIZE(copy)) return 0;
    Py_ssize_t i = 0, j = 0;
    PyObject *k1, *v1;
    while (PyDict_Next(d, &i, &k1, &v1)) {
      if (j >= PyList_GET_SIZE(copy)) return 0;  // an == below grew d
      PyObject* item = PyList_GET_ITEM(copy, j++);
      if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return 0;
      PyObject *k2 = PyTuple_GET_ITEM(item, 0), *v2 = PyTuple_GET_ITEM(item, 1);
      if (k1 == k2 && v1 == v2) continue;
      // Equal but not the same objects: ==, on references of our own (it may run any code).
      PyObject* held[] = {k1, v1, item};
      for (PyObject* o : held) Py_INCREF(o);
      int eq = PyObject_RichCompareBool(k1, k2, Py_EQ);
      if (eq == 1) eq = PyObject_RichCompareBool(v1, v2, Py_EQ);
      for (PyObject* o : held) Py_DECREF(o);
      if (eq != 1) return eq;
    }
    return j == PyList_GET_SIZE(copy);
  }
  if (is_dict && PyDict_CheckExact(copy) && PyDict_GET_SIZE(d) == PyDict_GET_SIZE(copy)) {
    Py_ssize_t i = 0, j = 0;
    PyObject *k1, *v1, *k2, *v2;
    bool same = true;
    while (same && PyDict_Next(d, &i, &k1, &v1))
      same = PyDict_Next(copy, &j, &k2, &v2) && k1 == k2 && v1 == v2;
    if (same) return 1;
  }
  return PyObject_RichCompareBool(d, copy, Py_EQ);  // mappingproxies, changed dicts
}

// The checks of unchanged_py(), in its order: 1 unchanged, 0 changed, -1 with a Python error
// set. Everything before the dict comparisons runs no Python code; those come last, each on
// its own references, and the lists' lengths are read again for each, because an attribute's
// == may run any code (even code that edits the stamp).
int unchanged(PyObject* stamp) {
  if (!PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != kFields) return 0;
  PyObject* f[kFields];
  for (int i = 0; i < kFields; ++i) {
    f[i] = PyTuple_GET_ITEM(stamp, i);
    if (!PyList_Check(f[i])) return 0;
  }
  const Py_ssize_t mods = PyList_GET_SIZE(f[kMods]), live = PyList_GET_SIZE(f[kLive]),
                   valued = PyList_GET_SIZE(f[kValued]);
  if (PyList_GET_SIZE(f[kTypes]) != mods || PyList_GET_SIZE(f[kModuleDicts]) != mods ||
      PyList_GET_SIZE(f[kViews]) != live || PyList_GET_SIZE(f[kValueCopies]) != valued)
    return 0;
  for (Py_ssize_t i = 0; i < mods; ++i) {
    PyObject* module = PyList_GET_ITEM(f[kMods], i);
    if (reinterpret_cast<PyObject*>(Py_TYPE(module)) != PyList_GET_ITEM(f[kTypes], i))
      return 0;  // module.__class__ = ...
    PyObject* dict = PyObject_GenericGetDict(module, nullptr);
    if (dict == nullptr) return -1;
    const bool same = dict == PyList_GET_ITEM(f[kModuleDicts], i);
    Py_DECREF(dict);
    if (!same) return 0;  // module.__dict__ = ...
  }
  // The parameters and buffers are the same objects, in the same order...
  Py_ssize_t t = 0;
  const Py_ssize_t tensors = PyList_GET_SIZE(f[kTensors]);
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(f[kTensorDicts]); ++i) {
    PyObject* d = PyList_GET_ITEM(f[kTensorDicts], i);
    if (!PyDict_Check(d)) return 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(d, &pos, &key, &value))
      if (t >= tensors || value != PyList_GET_ITEM(f[kTensors], t++)) return 0;
  }
  if (t != tensors) return 0;
  try {
    // ...laid out as they were (same memory, dtype, sizes and strides)...
    for (Py_ssize_t i = 0; i < live; ++i) {
      PyObject* obj = PyList_GET_ITEM(f[kLive], i);
      PyObject* view = PyList_GET_ITEM(f[kViews], i);
      if (!THPVariable_Check(obj) || !THPVariable_Check(view)) return 0;
      const at::Tensor& now = THPVariable_Unpack(obj);
      const at::Tensor& v = THPVariable_Unpack(view);
      if (now.scalar_type() != v.scalar_type() || now.sizes() != v.sizes() ||
          now.strides() != v.strides() || now.const_data_ptr() != v.const_data_ptr())
        return 0;
    }
    // ...holding the bytes the value was computed from (copies are contiguous)...
    for (Py_ssize_t i = 0; i < valued; ++i) {
      PyObject* obj = PyList_GET_ITEM(f[kValued], i);
      PyObject* copy = PyList_GET_ITEM(f[kValueCopies], i);
      if (!THPVariable_Check(obj) || !THPVariable_Check(copy)) return 0;
      const at::Tensor& c = THPVariable_Unpack(copy);
      const at::Tensor now = THPVariable_Unpack(obj).contiguous();
      if (now.scalar_type() != c.scalar_type() || now.sizes() != c.sizes() ||
          !c.is_contiguous() ||
          (now.nbytes() != 0 &&
           std::memcmp(now.const_data_ptr(), c.const_data_ptr(), now.nbytes()) != 0))
        return 0;
    }
  } catch (const std::exception& e) {  // a tensor without data (not a stamp's tensor)
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return -1;
  }
  // ...and the dicts equal their copies.
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(f[kDicts]); ++i) {
    if (i >= PyList_GET_SIZE(f[kCopies])) return 0;
    PyObject* d = PyList_GET_ITEM(f[kDicts], i);
    PyObject* copy = PyList_GET_ITEM(f[kCopies], i);
    Py_INCREF(d);
    Py_INCREF(copy);
    const int eq = dict_equal(d, copy);
    Py_DECREF(d);
    Py_DECREF(copy);
    if (eq != 1) return eq;
  }
  return PyList_GET_SIZE(f[kCopies]) == PyList_GET_SIZE(f[kDicts]);
}

}  // namespace

PyObject* fastdw_stamp_unchanged(PyObject* /*module*/, PyObject* stamp) {
  const int result = unchanged(stamp);
  if (result < 0) {
    // As unchanged_py: an attribute whose == raises one of these has changed; anything else
    // (KeyboardInterrupt, a KeyError from a broken __eq__) propagates.
    if (!PyErr_ExceptionMatches(PyExc_RuntimeError) && !PyErr_ExceptionMatches(PyExc_TypeError)
        && !PyErr_ExceptionMatches(PyExc_ValueError))
      return nullptr;
    PyErr_Clear();
  }
  return PyBool_FromLong(result == 1);
}
