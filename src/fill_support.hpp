// Filling a map's transient from what dict.update() accepts, for every map type of the binding
// (PersistentMap's object_transient, SharedMap's shared_transient): a dict, an object with a
// keys() method (a mapping), or an iterable of pairs, then keyword arguments. The map type
// supplies only `add(key, value)`, which stores one pair and returns false with a Python error
// set, or throws python_error / std::bad_alloc; every function here returns false with an error
// set when something failed.
#pragma once

#include <new>

#include "bindings.hpp"

namespace pypersistent::python {

// Runs add(key, value), turning its C++ exceptions into a false return with a Python error.
template <class Add>
bool add_one(Add& add, PyObject* key, PyObject* value) {
    try {
        return add(key, value);
    } catch (const python_error&) {
        return false;
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
        return false;
    }
}

// A dict's items, read under the dict's critical section. add() may run Python code (a key's
// __hash__) that changes the dict: the pair is held meanwhile, and a change of size stops the
// walk as dict iteration does.
template <class Add>
bool fill_from_dict(PyObject* dict, Add&& add) {
    bool ok = true;
    Py_BEGIN_CRITICAL_SECTION(dict);
    const Py_ssize_t size = PyDict_GET_SIZE(dict);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (ok && PyDict_Next(dict, &pos, &key, &value)) {
        Py_INCREF(key);
        Py_INCREF(value);
        ok = add_one(add, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (ok && PyDict_GET_SIZE(dict) != size) {
            PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
            ok = false;
        }
    }
    Py_END_CRITICAL_SECTION();
    return ok;
}

// A mapping that is not a dict: source[key] for each key of source.keys().
template <class Add>
bool fill_from_keys(PyObject* source, PyObject* keys_method, Add&& add) {
    PyObject* keys = PyObject_CallNoArgs(keys_method);
    if (!keys) return false;
    PyObject* it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    if (!it) return false;
    bool ok = true;
    while (ok) {
        PyObject* key = PyIter_Next(it);
        if (!key) break;
        PyObject* value = PyObject_GetItem(source, key);
        ok = value && add_one(add, key, value);
        Py_XDECREF(value);
        Py_DECREF(key);
    }
    Py_DECREF(it);
    return ok && !PyErr_Occurred();
}

// An iterable of pairs, with dict.update()'s errors for elements that are not pairs.
template <class Add>
bool fill_from_pairs(PyObject* source, Add&& add) {
    PyObject* it = PyObject_GetIter(source);
    if (!it) return false;
    bool ok = true;
    for (Py_ssize_t index = 0; ok; ++index) {
        PyObject* item = PyIter_Next(it);
        if (!item) break;
        // A tuple snapshot of the pair: another thread may be changing a list meanwhile, and
        // PySequence_Tuple copies a list under its lock.
        PyObject* pair = PyTuple_Check(item) ? Py_NewRef(item) : PySequence_Tuple(item);
        if (!pair) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Format(PyExc_TypeError, "cannot convert update sequence element #%zd to a sequence", index);
            }
            ok = false;
        } else if (PyTuple_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_ValueError, "update sequence element #%zd has length %zd; 2 is required", index,
                         PyTuple_GET_SIZE(pair));
            ok = false;
        } else {
            ok = add_one(add, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
        }
        Py_XDECREF(pair);
        Py_DECREF(item);
    }
    Py_DECREF(it);
    return ok && !PyErr_Occurred();
}

// Any source dict.update() takes: a dict, an object with keys() (as dict.update, an error looking
// keys up other than AttributeError propagates), or an iterable of pairs.
template <class Add>
bool fill_from_source(PyObject* source, Add&& add) {
    if (PyDict_Check(source)) return fill_from_dict(source, add);
    PyObject* keys_method = PyObject_GetAttrString(source, "keys");
    if (keys_method) {
        const bool ok = fill_from_keys(source, keys_method, add);
        Py_DECREF(keys_method);
        return ok;
    }
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return false;
    PyErr_Clear();
    return fill_from_pairs(source, add);
}

}  // namespace pypersistent::python
