// What every transient type (TransientMap, TransientList, ...) does the same way: each operation
// runs in a critical section on the object with its `busy` flag set (see TransientObject in
// bindings.hpp for why both), finishing drops the C++ transient, and the repr tells the state.
// `Object` has the fields `transient` (a pointer, nullptr once finished) and `busy`; `name` is
// the type's name in messages.
#pragma once

#include <new>

#include "bindings.hpp"

namespace pypersistent::python {

// Runs body(transient) with the transient locked; returns `failed` with a Python error set if
// the transient is finished or in use, or if body throws.
template <class Object, class R, class F>
R locked_transient(PyObject* self, const char* name, R failed, F&& body) {
    Object* t = reinterpret_cast<Object*>(self);
    R result = failed;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (!t->transient) {
        PyErr_Format(PyExc_RuntimeError, "this %s is finished: persistent() was already called", name);
    } else if (t->busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s used from two places at once (another thread, or Python code it called: a key's __hash__/__eq__, a __del__...)", name);
    } else {
        t->busy = true;
        try {
            result = body(*t->transient);
        } catch (const python_error&) {
            result = failed;
        } catch (const std::bad_alloc&) {
            // Every trie operation is strong: the transient is unchanged and stays usable.
            PyErr_NoMemory();
            result = failed;
        }
        t->busy = false;
    }
    Py_END_CRITICAL_SECTION();
    return result;
}

// __exit__: leaving the with-block finishes the transient (if persistent() has not already).
template <class Object>
PyObject* exit_transient(PyObject* self, const char* name) {
    Object* obj = reinterpret_cast<Object*>(self);
    decltype(obj->transient) dropped = nullptr;
    bool refused = false;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (obj->busy) {
        refused = true;
    } else {
        dropped = obj->transient;
        obj->transient = nullptr;
    }
    Py_END_CRITICAL_SECTION();
    if (refused) {
        PyErr_Format(PyExc_RuntimeError, "%s is in use by another thread", name);
        return nullptr;
    }
    delete dropped;  // outside the critical section: dropping values may run arbitrary code
    Py_RETURN_FALSE;
}

template <class Object>
PyObject* repr_transient(PyObject* self, const char* name) {
    Object* obj = reinterpret_cast<Object*>(self);
    Py_ssize_t size = -1;
    bool busy = false;
    Py_BEGIN_CRITICAL_SECTION(self);
    busy = obj->busy;
    if (obj->transient && !busy) size = static_cast<Py_ssize_t>(obj->transient->size());
    Py_END_CRITICAL_SECTION();
    if (busy) return PyUnicode_FromFormat("%s(<in use>)", name);
    if (size < 0) return PyUnicode_FromFormat("%s(<finished>)", name);
    return PyUnicode_FromFormat("%s(<%zd items>)", name, size);
}

}  // namespace pypersistent::python
