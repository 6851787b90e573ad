// The extension module: PEP 489 multi-phase initialisation through pybind11, one set of types
// per (sub)interpreter, no per-process Python state.
#include <pybind11/pybind11.h>

#include <type_traits>

#include "bindings.hpp"

namespace py = pybind11;
using namespace pypersistent::python;

namespace {

constexpr const char* state_capsule_name = "pypersistent._state";

void destroy_state(PyObject* capsule) {
    delete static_cast<module_state*>(PyCapsule_GetPointer(capsule, state_capsule_name));
}

PyTypeObject* make_type(py::module_& m, PyType_Spec& spec) {
    PyObject* type = PyType_FromModuleAndSpec(m.ptr(), &spec, nullptr);
    if (!type) throw py::error_already_set();
    return reinterpret_cast<PyTypeObject*>(type);
}

// `holder`'s dict keeps `held` alive: a type whose instances make instances of another type owns
// a reference to it, so module_state's borrowed pointers stay valid for as long as they are used.
PyObject* api_wrap(const c_api* api, object_trie::node* root, std::size_t size) {
    auto* state = static_cast<module_state*>(api->module_state);
    return new_map(state->map_type, state, object_map::adopt(root, size));
}

int api_unwrap(PyObject* obj, object_trie::node** root, std::size_t* size) {
    if (!is_map(obj)) {
        PyErr_Format(PyExc_TypeError, "expected a PersistentMap, not %.200s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    const object_map& map = reinterpret_cast<MapObject*>(obj)->map;
    auto* node = const_cast<object_trie::node*>(map.root());
    if (node) object_trie::retain(node);
    *root = node;
    *size = map.size();
    return 0;
}

PyMethodDef census_callback_def = {
    "_gc_census", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(census_callback)), METH_FASTCALL,
    "gc.callbacks entry: tells pypersistent when a collection starts and stops."};

void keep_alive(PyTypeObject* holder, const char* name, PyObject* held) {
    if (PyDict_SetItemString(holder->tp_dict, name, held) < 0) throw py::error_already_set();
}

}  // namespace

PYBIND11_MODULE(_pypersistent, m, py::mod_gil_not_used(), py::multiple_interpreters::per_interpreter_gil()) {
    m.doc() = "C++ core of pypersistent: PersistentMap and TransientMap.";

    auto* state = new module_state();
    PyObject* raw_capsule = PyCapsule_New(state, state_capsule_name, destroy_state);
    if (!raw_capsule) {
        delete state;
        throw py::error_already_set();
    }
    py::object capsule = py::reinterpret_steal<py::object>(raw_capsule);

    py::object map_type = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, map_spec)));
    py::object transient_type = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, transient_spec)));
    py::object iterator_type = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, iterator_spec)));
    py::object keys_type = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, keys_spec)));
    py::object values_type = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, values_spec)));
    py::object items_type = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, items_spec)));
    py::object atom_type = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, atom_spec)));

    state->map_type = reinterpret_cast<PyTypeObject*>(map_type.ptr());
    state->transient_type = reinterpret_cast<PyTypeObject*>(transient_type.ptr());
    state->iterator_type = reinterpret_cast<PyTypeObject*>(iterator_type.ptr());
    state->keys_type = reinterpret_cast<PyTypeObject*>(keys_type.ptr());
    state->values_type = reinterpret_cast<PyTypeObject*>(values_type.ptr());
    state->items_type = reinterpret_cast<PyTypeObject*>(items_type.ptr());
    state->atom_type = reinterpret_cast<PyTypeObject*>(atom_type.ptr());

    const py::object all_types[] = {map_type, transient_type, iterator_type, keys_type, values_type, items_type, atom_type};
    for (const py::object& t : all_types) keep_alive(reinterpret_cast<PyTypeObject*>(t.ptr()), "_state", capsule.ptr());
    auto* map_t = state->map_type;
    keep_alive(map_t, "_transient_type", transient_type.ptr());
    keep_alive(map_t, "_iterator_type", iterator_type.ptr());
    keep_alive(map_t, "_keys_type", keys_type.ptr());
    keep_alive(map_t, "_values_type", values_type.ptr());
    keep_alive(map_t, "_items_type", items_type.ptr());
    keep_alive(state->transient_type, "_map_type", map_type.ptr());
    keep_alive(state->transient_type, "_iterator_type", iterator_type.ptr());
    keep_alive(state->atom_type, "_map_type", map_type.ptr());
    for (PyTypeObject* view : {state->keys_type, state->values_type, state->items_type}) {
        keep_alive(view, "_iterator_type", iterator_type.ptr());
    }
    for (const py::object& t : all_types) PyType_Modified(reinterpret_cast<PyTypeObject*>(t.ptr()));

    state->api.version = c_api_version;
    state->api.node_header_bytes = expected_node_header_bytes();
    state->api.atomic_refcounts = std::is_same<object_policy::refcount, pypersistent::atomic_refcount>::value ? 1 : 0;
    state->api.wrap = api_wrap;
    state->api.unwrap = api_unwrap;
    state->api.atom_current = atom_current_root;
    state->api.module_state = state;
    // The capsule points into the state, which lives as long as any of the types (the module
    // holds them all).
    m.attr("_C_API") = py::reinterpret_steal<py::object>(
        PyCapsule_New(&state->api, "pypersistent._pypersistent._C_API", nullptr));

    // The census learns from gc.callbacks when a collection runs (gc_census.cpp). The callback
    // holds the capsule, so the state lives as long as the gc module keeps the callback.
    py::object census = py::reinterpret_steal<py::object>(PyCFunction_New(&census_callback_def, capsule.ptr()));
    if (!census) throw py::error_already_set();
    py::module_::import("gc").attr("callbacks").attr("append")(census);

    m.attr("PersistentMap") = map_type;
    m.attr("TransientMap") = transient_type;
    m.attr("PersistentMapKeys") = keys_type;
    m.attr("PersistentMapValues") = values_type;
    m.attr("PersistentMapItems") = items_type;
    m.attr("PersistentMapIterator") = iterator_type;
    m.attr("Atom") = atom_type;
#ifdef Py_GIL_DISABLED
    m.attr("FREE_THREADED_BUILD") = true;
#else
    m.attr("FREE_THREADED_BUILD") = false;
#endif
}
