// The extension module: PEP 489 multi-phase initialisation through pybind11, one set of types
// per (sub)interpreter, no per-process Python state.
#include <pybind11/pybind11.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "bindings.hpp"

namespace py = pybind11;
using namespace pypersistent::python;

namespace {

void destroy_state(PyObject* capsule) {
    delete static_cast<module_state*>(PyCapsule_GetPointer(capsule, state_capsule_name));
}

PyTypeObject* make_type(py::module_& m, PyType_Spec& spec) {
    PyObject* type = PyType_FromModuleAndSpec(m.ptr(), &spec, nullptr);
    if (!type) throw py::error_already_set();
    return reinterpret_cast<PyTypeObject*>(type);
}

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

// `holder`'s dict keeps `held` alive.
void keep_alive(PyTypeObject* holder, const char* name, PyObject* held) {
    if (PyDict_SetItemString(holder->tp_dict, name, held) < 0) throw py::error_already_set();
}

}  // namespace

PYBIND11_MODULE(_pypersistent, m, py::mod_gil_not_used(), py::multiple_interpreters::per_interpreter_gil()) {
    m.doc() = "C++ core of pypersistent: PersistentMap, PersistentSortedDict and the other structures.";

    auto* state = new module_state();
    PyObject* raw_capsule = PyCapsule_New(state, state_capsule_name, destroy_state);
    if (!raw_capsule) {
        delete state;
        throw py::error_already_set();
    }
    py::object capsule = py::reinterpret_steal<py::object>(raw_capsule);

    // Every type of the module: adding one is one row here (and its spec and state slot).
    struct type_row {
        PyType_Spec* spec;
        PyTypeObject* module_state::*slot;
        const char* exported_as;  // module attribute
    };
    static const type_row type_table[] = {
        {&map_spec, &module_state::map_type, "PersistentMap"},
        {&transient_spec, &module_state::transient_type, "TransientMap"},
        {&iterator_spec, &module_state::iterator_type, "PersistentMapIterator"},
        {&keys_spec, &module_state::keys_type, "PersistentMapKeys"},
        {&values_spec, &module_state::values_type, "PersistentMapValues"},
        {&items_spec, &module_state::items_type, "PersistentMapItems"},
        {&atom_spec, &module_state::atom_type, "Atom"},
        {&list_spec, &module_state::list_type, "PersistentList"},
        {&transient_list_spec, &module_state::transient_list_type, "TransientList"},
        {&list_iterator_spec, &module_state::list_iterator_type, "PersistentListIterator"},
        {&set_spec, &module_state::set_type, "PersistentSet"},
        {&transient_set_spec, &module_state::transient_set_type, "TransientSet"},
        {&set_iterator_spec, &module_state::set_iterator_type, "PersistentSetIterator"},
        {&shared_map_spec, &module_state::shared_map_type, "SharedMap"},
        {&shared_map_iterator_spec, &module_state::shared_map_iterator_type, "SharedMapIterator"},
        {&transient_shared_map_spec, &module_state::transient_shared_map_type, "TransientSharedMap"},
        {&shared_atom_spec, &module_state::shared_atom_type, "SharedAtom"},
        {&sorted_map_spec, &module_state::sorted_map_type, "PersistentSortedDict"},
        {&transient_sorted_spec, &module_state::transient_sorted_type, "TransientSortedDict"},
        {&sorted_iterator_spec, &module_state::sorted_iterator_type, "PersistentSortedDictIterator"},
        {&sorted_keys_spec, &module_state::sorted_keys_type, "PersistentSortedDictKeys"},
        {&sorted_values_spec, &module_state::sorted_values_type, "PersistentSortedDictValues"},
        {&sorted_items_spec, &module_state::sorted_items_type, "PersistentSortedDictItems"},
    };
    std::vector<py::object> types;
    for (const type_row& row : type_table) {
        types.push_back(py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(make_type(m, *row.spec))));
        state->*row.slot = reinterpret_cast<PyTypeObject*>(types.back().ptr());
    }
    // Each type keeps the state and all its sibling types alive through its own dict, so
    // module_state's borrowed pointers stay valid for as long as any instance can use them.
    py::tuple siblings(types.size());
    for (std::size_t i = 0; i < types.size(); ++i) siblings[i] = types[i];
    for (const py::object& t : types) {
        auto* type = reinterpret_cast<PyTypeObject*>(t.ptr());
        keep_alive(type, "_state", capsule.ptr());
        keep_alive(type, "_types", siblings.ptr());
        PyType_Modified(type);
    }

    // The named tuples diff() returns: struct sequences, one pair of types per interpreter.
    static PyStructSequence_Field map_diff_fields[] = {
        {"added", "PersistentMap of the entries only the newer map has"},
        {"removed", "PersistentMap of the entries only the older map has"},
        {"changed", "PersistentMap of key -> (old value, new value) for the values that differ"},
        {nullptr, nullptr},
    };
    static PyStructSequence_Field set_diff_fields[] = {
        {"added", "PersistentSet of the elements only the newer set has"},
        {"removed", "PersistentSet of the elements only the older set has"},
        {nullptr, nullptr},
    };
    static PyStructSequence_Desc map_diff_desc = {
        "pypersistent.MapDiff", "What PersistentMap.diff() found: (added, removed, changed).", map_diff_fields, 3};
    static PyStructSequence_Desc set_diff_desc = {
        "pypersistent.SetDiff", "What PersistentSet.diff() found: (added, removed).", set_diff_fields, 2};
    for (auto [desc, slot, name, held_as] :
         {std::tuple{&map_diff_desc, &module_state::map_diff_type, "MapDiff", "_map_diff_type"},
          std::tuple{&set_diff_desc, &module_state::set_diff_type, "SetDiff", "_set_diff_type"}}) {
        PyTypeObject* type = PyStructSequence_NewType(desc);
        if (!type) throw py::error_already_set();
        py::object owned = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(type));
        state->*slot = type;
        keep_alive(state->map_type, held_as, owned.ptr());  // lives as long as the map type
        m.attr(name) = owned;
    }

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

    // The process-wide registry of SharedAtom's named cells, for C++ hosts that share cells with
    // Python (python_bridge.hpp: import_shared_registry). Every interpreter's module exports the
    // same registry; the export itself is static, as the registry is.
    static const shared_registry_export shared_registry =
        make_shared_registry_export(&pypersistent::shared_cell_registry::instance());
    m.attr("_shared_registry") = py::reinterpret_steal<py::object>(PyCapsule_New(
        const_cast<shared_registry_export*>(&shared_registry), "pypersistent._pypersistent._shared_registry", nullptr));

    // The census learns from gc.callbacks when a collection runs (gc_census.cpp). The callback
    // holds the capsule, so the state lives as long as the gc module keeps the callback.
    py::object census = py::reinterpret_steal<py::object>(PyCFunction_New(&census_callback_def, capsule.ptr()));
    if (!census) throw py::error_already_set();
    // Appended through the C API, not pybind11's object call: in builds without NDEBUG (the TSan
    // build) that call asks PyGILState_Check(), which reads a runtime-wide flag that creating a
    // subinterpreter writes without a lock (see PYBIND11_NO_ASSERT_GIL_HELD_INCREF_DECREF in
    // src/CMakeLists.txt), a race TSan reports when interpreters are created while others import us.
    py::object gc_callbacks = py::module_::import("gc").attr("callbacks");
    py::object appended = py::reinterpret_steal<py::object>(
        PyObject_CallMethod(gc_callbacks.ptr(), "append", "O", census.ptr()));
    if (!appended) throw py::error_already_set();

    // SharedMap moves to other interpreters by reference where CPython allows it.
    if (!register_cross_interpreter_sharing(state->shared_map_type)) throw py::error_already_set();

    for (std::size_t i = 0; i < types.size(); ++i) m.attr(type_table[i].exported_as) = types[i];
    m.attr("__version__") = PYPERSISTENT_VERSION;
#ifdef Py_GIL_DISABLED
    m.attr("FREE_THREADED_BUILD") = true;
#else
    m.attr("FREE_THREADED_BUILD") = false;
#endif
}
