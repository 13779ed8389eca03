// fastdw._C.plain_float32(tensors, plain_types, grad_enabled): the tensor test of
// fastdw.ops.dispatch.cpp_direct in C, made on every call of a public op and of a fused module.
// Same answer as the Python function dispatch.plain_and_grad_free(tensors, torch.float32),
// which stays as the specification; tests/ops/test_dispatch.py runs both on every kind of
// entry. In Python the test reads two attributes per tensor through method calls, which at
// batch 1 is a visible share of a small op's call (bench/op_overhead.py); here they are read
// through the tensors' C++ handles.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include "direct_call.h"

// True (Py_True) when every entry of `tensors` (a tuple or list) is None or an object whose
// exact type is in the set `plain_types` (the tensor types handling no ops themselves), of
// dtype float32, and, when `grad_enabled`, not requiring grad.
PyObject* fastdw_plain_float32(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyAnySet_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError,
                    "plain_float32(tensors, plain_types: set, grad_enabled: bool)");
    return nullptr;
  }
  if (!PyTuple_Check(args[0]) && !PyList_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "tensors must be a tuple or list");
    return nullptr;
  }
  // A tuple of the entries, holding a reference to each: the set lookup below may run Python
  // code (a metaclass's __hash__) that changes a list under the loop. A tuple is itself.
  PyObject* seq = PySequence_Tuple(args[0]);
  if (!seq) return nullptr;
  const int grad = PyObject_IsTrue(args[2]);
  bool plain = grad >= 0;
  for (Py_ssize_t i = 0, n = PyTuple_GET_SIZE(seq); plain && i < n; ++i) {
    PyObject* t = PyTuple_GET_ITEM(seq, i);
    if (t == Py_None) continue;
    const int known = PySet_Contains(args[1], reinterpret_cast<PyObject*>(Py_TYPE(t)));
    if (known < 0) break;
    // The set holds only tensor types; the THPVariable_Check guards the unpack regardless.
    plain = known == 1 && THPVariable_Check(t);
    if (!plain) break;
    const at::Tensor& tensor = THPVariable_Unpack(t);
    plain = tensor.scalar_type() == at::kFloat && !(grad && tensor.requires_grad());
  }
  Py_DECREF(seq);
  if (PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(plain);
}
