// Passing a SharedMap to another interpreter by reference, through CPython's cross-interpreter
// data ("XI data"): what _interpreters.set___main___attrs, the queues of _interpqueues and
// concurrent.interpreters, and Interpreter.call use to move an object between interpreters.
// CPython keeps a registry of the classes whose objects it can move that way; with SharedMap
// registered, moving one costs a reference count: the receiving interpreter gets a SharedMap over
// the very same trie, whatever its size (a SharedMap's nodes hold no PyObject*, so any
// interpreter may hold them, and outlive the one that built them).
//
// The registry is CPython's private API, and its shape changed between versions:
//   3.13      _PyCrossInterpreterData_RegisterClass(type, getdata), internal headers only;
//   3.14-3.15 _PyXIData_RegisterClass(tstate, type, {getdata, fallback}), internal headers only.
// Both fill the same struct ({data, obj, interpid, new_object, free}). The internal headers need
// Py_BUILD_CORE, so the few declarations used are repeated here for exactly those versions; the
// functions are exported (PyAPI_FUNC) by every build of them. Other versions register nothing
// and move a SharedMap by pickling it (by value); SharedAtom(name) hands over by reference on
// every version. tests/test_shared_interpreters.py checks that the trie arrives unchanged and
// uncopied on each version it runs on.
#include "shared_object.hpp"

#include <new>

namespace pypersistent::python {

#if PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x03100000
#define PYPERSISTENT_XI_DATA 1

namespace xi {

// CPython's struct _xid (3.13) / _PyXIData_t (3.14, 3.15).
struct data {
    void* shared;  // ours: a heap copy of the shared_map (one more reference to its root)
    PyObject* obj;  // an object the data stays bound to: none here
    std::int64_t interpid;
    PyObject* (*new_object)(data*);
    void (*free)(void*);
};
using getdata_fn = int (*)(PyThreadState*, PyObject*, data*);
using new_object_fn = PyObject* (*)(data*);
// 3.14's _PyXIData_getdata_t.
struct getdata_pair {
    getdata_fn basic;
    int (*fallback)(PyThreadState*, PyObject*, int, data*);
};

}  // namespace xi

extern "C" {
#if PY_VERSION_HEX < 0x030E0000
PyAPI_FUNC(int) _PyCrossInterpreterData_RegisterClass(PyTypeObject*, xi::getdata_fn);
PyAPI_FUNC(void) _PyCrossInterpreterData_Init(xi::data*, PyInterpreterState*, void*, PyObject*, xi::new_object_fn);
#else
PyAPI_FUNC(int) _PyXIData_RegisterClass(PyThreadState*, PyTypeObject*, xi::getdata_pair);
PyAPI_FUNC(void) _PyXIData_Init(xi::data*, PyInterpreterState*, void*, PyObject*, xi::new_object_fn);
#endif
}

namespace {

void release_map(void* data) noexcept { delete static_cast<shared_map*>(data); }  // no Python needed

// In the receiving interpreter: a SharedMap of that interpreter's module over the same trie.
PyObject* receive_map(xi::data* data) {
    PyObject* module = PyImport_ImportModule("pypersistent._pypersistent");
    if (!module) return nullptr;
    PyObject* type = PyObject_GetAttrString(module, "SharedMap");
    Py_DECREF(module);
    if (!type) return nullptr;
    PyObject* capsule = PyObject_GetAttrString(type, "_state");  // every type of the module holds it
    Py_DECREF(type);
    if (!capsule) return nullptr;
    // Borrowed: the module, kept in sys.modules, holds the state; the new object holds its type.
    auto* state = static_cast<module_state*>(PyCapsule_GetPointer(capsule, state_capsule_name));
    Py_DECREF(capsule);
    if (!state) return nullptr;
    return new_shared_map_object(state, *static_cast<const shared_map*>(data->shared));
}

// In the sending interpreter: the data is a new reference to the map's root.
int send_map(PyThreadState* tstate, PyObject* obj, xi::data* data) {
    const shared_map* map = shared_map_of(obj);
    if (!map) {  // the registry calls this for SharedMap only
        PyErr_Format(PyExc_TypeError, "expected a SharedMap, not %.200s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    auto* held = new (std::nothrow) shared_map(*map);
    if (!held) {
        PyErr_NoMemory();
        return -1;
    }
    PyInterpreterState* interp = PyThreadState_GetInterpreter(tstate);
#if PY_VERSION_HEX < 0x030E0000
    _PyCrossInterpreterData_Init(data, interp, held, nullptr, receive_map);
#else
    _PyXIData_Init(data, interp, held, nullptr, receive_map);
#endif
    data->free = release_map;
    return 0;
}

}  // namespace
#endif

bool register_cross_interpreter_sharing(PyTypeObject* shared_map_type) {
#if defined(PYPERSISTENT_XI_DATA)
#if PY_VERSION_HEX < 0x030E0000
    return _PyCrossInterpreterData_RegisterClass(shared_map_type, send_map) == 0;
#else
    return _PyXIData_RegisterClass(PyThreadState_Get(), shared_map_type, xi::getdata_pair{send_map, nullptr}) == 0;
#endif
#else
    (void)shared_map_type;
    return true;
#endif
}

}  // namespace pypersistent::python
