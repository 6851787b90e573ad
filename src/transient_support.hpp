// What every transient type (TransientMap, TransientList, ...) does the same way: each operation
// runs in a critical section on the object with its `busy` flag set (see TransientObject in
// bindings.hpp for why both), finishing freezes the contents and drops the C++ transient, and
// the repr shows the contents. `Object` has the fields `transient` (a pointer, nullptr once
// finished), `frozen` (the persistent result once finished), `busy` and `weakreflist`; `name`
// is the type's name in messages.
#pragma once

#include <new>
#include <utility>

#include "bindings.hpp"

namespace pypersistent::python {

inline constexpr const char* transient_finished_message =
    "this %s is finished: persistent() was called or its with-block ended (persistent() returns the result)";
inline constexpr const char* transient_busy_message =
    "%s used from two places at once (another thread, or Python code it called: a key's __hash__/__eq__, a __del__...)";

// Runs body(transient) with the transient locked; returns `failed` with a Python error set if
// the transient is finished or in use, or if body throws.
template <class Object, class R, class F>
R locked_transient(PyObject* self, const char* name, R failed, F&& body) {
    Object* t = reinterpret_cast<Object*>(self);
    R result = failed;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (!t->transient) {
        PyErr_Format(PyExc_RuntimeError, transient_finished_message, name);
    } else if (t->busy) {
        PyErr_Format(PyExc_RuntimeError, transient_busy_message, name);
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

// A new transient object of `type` that takes over `t` (deleted if allocation fails).
template <class Object>
PyObject* new_transient(PyTypeObject* type, module_state* state, decltype(Object::transient) t) {
    auto* obj = reinterpret_cast<Object*>(type->tp_alloc(type, 0));
    if (!obj) {
        delete t;
        return nullptr;
    }
    obj->transient = t;
    obj->frozen = nullptr;
    obj->busy = false;
    obj->weakreflist = nullptr;
    obj->state = state;
    return reinterpret_cast<PyObject*>(obj);
}

// persistent() and the end of a with-block: the first of them freezes the contents into a
// persistent structure (`freeze(transient)`, a new reference, O(1)), keeps it in obj->frozen and
// finishes the transient: edits raise RuntimeError from then on, and every later persistent()
// returns that same structure. So leaving a with-block never loses the edits made in it.
template <class Object, class Freeze>
PyObject* finish_transient(PyObject* self, const char* name, Freeze&& freeze) {
    Object* obj = reinterpret_cast<Object*>(self);
    PyObject* result = nullptr;
    decltype(obj->transient) dropped = nullptr;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (obj->busy) {
        PyErr_Format(PyExc_RuntimeError, transient_busy_message, name);
    } else if (obj->frozen) {
        result = Py_NewRef(obj->frozen);
    } else if (!obj->transient) {  // emptied by the collector (tp_clear)
        PyErr_Format(PyExc_RuntimeError, transient_finished_message, name);
    } else {
        // Busy while the result is allocated: a collection it triggers may run finalizers that
        // reach this transient.
        obj->busy = true;
        try {
            result = freeze(*obj->transient);
        } catch (const std::bad_alloc&) {
            PyErr_NoMemory();
        }
        obj->busy = false;
        if (result) {
            obj->frozen = Py_NewRef(result);
            dropped = obj->transient;
            obj->transient = nullptr;
        }
    }
    Py_END_CRITICAL_SECTION();
    delete dropped;  // outside the critical section: dropping values may run arbitrary code
    return result;
}

// __exit__: finishes the transient as persistent() does (if it has not been already).
template <class Object, class Freeze>
PyObject* exit_transient(PyObject* self, const char* name, Freeze&& freeze) {
    PyObject* frozen = finish_transient<Object>(self, name, std::forward<Freeze>(freeze));
    if (!frozen) return nullptr;
    Py_DECREF(frozen);
    Py_RETURN_FALSE;
}

// The repr of the current contents, under the transient's name: "TransientMap({'a': 1})".
// `snapshot(self)` is a persistent copy of them (a new reference, or null with an error set).
template <class Object>
PyObject* repr_transient(PyObject* self, const char* name, PyObject* (*snapshot)(PyObject*)) {
    Object* obj = reinterpret_cast<Object*>(self);
    bool busy = false;
    bool finished = false;
    Py_BEGIN_CRITICAL_SECTION(self);
    busy = obj->busy;
    finished = !obj->transient;
    Py_END_CRITICAL_SECTION();
    if (busy) return PyUnicode_FromFormat("%s(<in use>)", name);
    if (finished) return PyUnicode_FromFormat("%s(<finished>)", name);
    // Each repr makes a new snapshot, so the snapshot's own guard cannot see a transient that
    // holds itself: this one's does.
    const int entered = Py_ReprEnter(self);
    if (entered != 0) return entered > 0 ? PyUnicode_FromFormat("%s(...)", name) : nullptr;
    PyObject* snap = snapshot(self);
    PyObject* inner = snap ? PyObject_Repr(snap) : nullptr;  // "PersistentMap({...})": from "(" on is kept
    Py_XDECREF(snap);
    Py_ReprLeave(self);
    if (!inner) return nullptr;
    PyObject* result = nullptr;
    const Py_ssize_t open = PyUnicode_FindChar(inner, '(', 0, PyUnicode_GET_LENGTH(inner), 1);
    if (open >= 0) {
        PyObject* rest = PyUnicode_Substring(inner, open, PyUnicode_GET_LENGTH(inner));
        if (rest) result = PyUnicode_FromFormat("%s%U", name, rest);
        Py_XDECREF(rest);
    } else if (open == -1) {
        result = PyUnicode_FromFormat("%s(%U)", name, inner);
    }
    Py_DECREF(inner);
    return result;
}

// tp_traverse's part for the frozen result, tp_clear and tp_dealloc of every transient type.
template <class Object>
int visit_frozen(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(reinterpret_cast<Object*>(self)->frozen);
    return 0;
}

template <class Object>
int clear_transient(PyObject* self) {
    Object* obj = reinterpret_cast<Object*>(self);
    decltype(obj->transient) dropped = obj->transient;
    obj->transient = nullptr;
    delete dropped;
    Py_CLEAR(obj->frozen);
    return 0;
}

template <class Object>
void dealloc_transient(PyObject* self, destructor dealloc) {
    Object* obj = reinterpret_cast<Object*>(self);
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    // Transients may hold transients that hold transients...: a loop, not C recursion.
    Py_TRASHCAN_BEGIN(self, dealloc)
    if (obj->weakreflist) PyObject_ClearWeakRefs(self);
    delete obj->transient;
    Py_XDECREF(obj->frozen);
    type->tp_free(self);
    Py_DECREF(type);
    Py_TRASHCAN_END
}

}  // namespace pypersistent::python
