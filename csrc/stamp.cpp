// fastdw._C.stamp_unchanged(stamp): fastdw.nn._fold.unchanged() in C, the check a cached eval
// forward makes on every call (for a whole MobileNetV2, ~1,300 dicts with ~5,000 entries and
// ~310 tensors). Same answer as the Python function, which stays as the specification and the
// fallback when fastdw._C is not built; tests/nn/test_eval_program.py runs both on every edit.
// Python does the same work through generic == on dicts (a hash lookup per entry) and a method
// call per tensor; here a dict whose entries are still the very objects the stamp copied, in the
// same order, is recognised by walking both, and tensors are read through their C++ handles.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include "stamp.h"

namespace {

// 1 if d == copy, 0 if not, -1 with a Python error set (as PyObject_RichCompareBool). d is a
// module's dict or hook OrderedDict (whose == with a dict compares items, as here), or a class's
// mappingproxy; copy the dict made of it.
int dict_equal(PyObject* d, PyObject* copy) {
  if ((PyDict_CheckExact(d) || PyODict_CheckExact(d)) && PyDict_CheckExact(copy) &&
      PyDict_GET_SIZE(d) == PyDict_GET_SIZE(copy)) {
    Py_ssize_t i = 0, j = 0;
    PyObject *k1, *v1, *k2, *v2;
    bool same = true;
    while (same && PyDict_Next(d, &i, &k1, &v1))
      same = PyDict_Next(copy, &j, &k2, &v2) && k1 == k2 && v1 == v2;
    if (same) return 1;
  }
  return PyObject_RichCompareBool(d, copy, Py_EQ);  // class mappingproxies, changed dicts
}

// The checks of unchanged(); false as soon as one fails. A Python error set on the way (an
// attribute whose == raises) means changed, as in unchanged().
bool unchanged(PyObject* stamp) {
  if (!PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) != 9) return false;
  PyObject* const* s = &PyTuple_GET_ITEM(stamp, 0);
  PyObject *mods = s[0], *types = s[1], *dicts = s[2], *copies = s[3], *tensor_dicts = s[4],
           *tensors = s[5], *live = s[6], *versions = s[7], *pointers = s[8];
  for (PyObject* list : {mods, types, dicts, copies, tensor_dicts, tensors, live, versions,
                         pointers})
    if (!PyList_Check(list)) return false;
  if (PyList_GET_SIZE(types) != PyList_GET_SIZE(mods) ||
      PyList_GET_SIZE(copies) != PyList_GET_SIZE(dicts) ||
      PyList_GET_SIZE(versions) != PyList_GET_SIZE(live) ||
      PyList_GET_SIZE(pointers) != PyList_GET_SIZE(live))
    return false;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(mods); ++i)  // module.__class__ = ...
    if (reinterpret_cast<PyObject*>(Py_TYPE(PyList_GET_ITEM(mods, i))) !=
        PyList_GET_ITEM(types, i))
      return false;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dicts); ++i) {
    const int eq = dict_equal(PyList_GET_ITEM(dicts, i), PyList_GET_ITEM(copies, i));
    if (eq != 1) {
      if (eq < 0) PyErr_Clear();
      return false;
    }
  }
  // The parameters and buffers are the same objects, in the same order...
  Py_ssize_t t = 0;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tensor_dicts); ++i) {
    PyObject* d = PyList_GET_ITEM(tensor_dicts, i);
    if (!PyDict_Check(d)) return false;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(d, &pos, &key, &value))
      if (t >= PyList_GET_SIZE(tensors) || value != PyList_GET_ITEM(tensors, t++)) return false;
  }
  if (t != PyList_GET_SIZE(tensors)) return false;
  // ...with the same version counters and data pointers.
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(live); ++i) {
    PyObject* obj = PyList_GET_ITEM(live, i);
    if (!THPVariable_Check(obj)) return false;
    const at::Tensor& tensor = THPVariable_Unpack(obj);
    const long long version = PyLong_AsLongLong(PyList_GET_ITEM(versions, i));
    const void* pointer = PyLong_AsVoidPtr(PyList_GET_ITEM(pointers, i));
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    try {
      if (static_cast<long long>(tensor._version()) != version || tensor.data_ptr() != pointer)
        return false;
    } catch (const std::exception&) {  // a tensor without data (not a stamp's tensor)
      return false;
    }
  }
  return true;
}

}  // namespace

PyObject* fastdw_stamp_unchanged(PyObject* /*module*/, PyObject* stamp) {
  return PyBool_FromLong(unchanged(stamp));
}
