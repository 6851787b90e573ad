// Shared declarations of the Python binding: the trie instantiated over PyObject*, and the
// object layouts of the Python types.
//
// Why raw CPython types inside a pybind11 module: pybind11 gives us PEP 489 multi-phase
// initialisation and the GIL / subinterpreter declarations, but its dispatcher takes a global
// lock per bound call in free-threaded builds and every instance it creates is registered under
// a lock. The types here are heap types made with PyType_FromModuleAndSpec, one set per
// (sub)interpreter; their slots and METH_FASTCALL methods read `self` directly and allocate
// result maps with tp_alloc, so no per-element operation touches pybind11's shared state.
#pragma once

#include <Python.h>
#include <structmember.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include <pypersistent/pypersistent.hpp>

#if PY_VERSION_HEX < 0x030D0000
// Critical sections exist from 3.13 on; before, the GIL alone serialises C code.
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

namespace pypersistent::python {

// Thrown when a Python call failed; the Python error indicator is already set.
struct python_error {};

struct object_hash {
    pypersistent::hash_t operator()(PyObject* key) const {
        const Py_hash_t h = PyObject_Hash(key);
        if (h == -1) throw python_error{};
        return static_cast<pypersistent::hash_t>(h);
    }
};

struct object_equal {
    bool operator()(PyObject* a, PyObject* b) const {
        if (a == b) return true;
        const int r = PyObject_RichCompareBool(a, b, Py_EQ);
        if (r < 0) throw python_error{};
        return r != 0;
    }
};

// While a transient edits nodes in place, dropping a reference must not run Python code: a
// __del__ could start the garbage collector (which walks the trie) or reach the transient while
// a node is half-moved. Edits therefore run inside a `deferred_releases` scope, and references
// dropped meanwhile are released when the outermost scope on this thread ends.
struct deferred_releases {
    deferred_releases() noexcept { ++depth(); }
    ~deferred_releases() {
        if (--depth() != 0) return;
        while (!pending().empty()) {
            std::vector<PyObject*> batch;
            batch.swap(pending());
            for (PyObject* o : batch) Py_DECREF(o);
        }
    }
    deferred_releases(const deferred_releases&) = delete;
    deferred_releases& operator=(const deferred_releases&) = delete;

    static bool active() noexcept { return depth() > 0; }
    static void defer(PyObject* o) noexcept {
        try {
            pending().push_back(o);
        } catch (...) {
            Py_DECREF(o);  // out of memory: release now rather than leak
        }
    }

private:
    static int& depth() noexcept {
        static thread_local int value = 0;
        return value;
    }
    static std::vector<PyObject*>& pending() noexcept {
        static thread_local std::vector<PyObject*> value;
        return value;
    }
};

// Keys and values are strong references: one per stored copy. Full hashes are cached in the
// entries (16 -> 24 bytes each) so that, as with dict, __eq__ is only ever called between keys
// whose hashes are equal: a key type whose __eq__ refuses foreign types must work, and keys that
// merely share a slot of the trie must not pay for a Python-level comparison. It also saves
// calling __hash__ again when an entry moves one level down. Measured without the cache: lookups
// in a 100K-int map ~3% faster, persistent inserts ~7% faster; not worth dict's semantics.
//
// Node reference counts are atomic on free-threaded builds. With a GIL they need not be: nodes
// holding Python objects are only ever touched by a thread that holds its interpreter's GIL
// (nodes never cross interpreters, since the objects in them cannot), exactly like the
// objects' own reference counts. A path copy retains every child of each copied node, and
// locked increments made persistent inserts of 20K int keys ~1.9x slower there
// (750 vs 390 ns each on 3.11).
struct object_policy : pypersistent::default_policy {
#ifdef Py_GIL_DISABLED
    using refcount = pypersistent::atomic_refcount;
#else
    using refcount = pypersistent::single_thread_refcount;
#endif
    static constexpr bool cache_hash = true;
    static void retain(PyObject* const& o) noexcept { Py_INCREF(o); }
    static void release(PyObject* const& o) noexcept {
        if (deferred_releases::active()) {
            deferred_releases::defer(o);
        } else {
            Py_DECREF(o);
        }
    }
    static bool same_value(PyObject* a, PyObject* b) noexcept { return a == b; }
};

using object_map = pypersistent::persistent_map<PyObject*, PyObject*, object_hash, object_equal, object_equal, object_policy>;
using object_transient = object_map::transient_type;
using object_trie = object_map::trie;

inline pypersistent::hash_t to_trie_hash(Py_hash_t h) { return static_cast<pypersistent::hash_t>(h); }

// Borrowed pointers to this interpreter's types. Each type keeps the types it creates instances
// of alive through its own dict (see module.cpp), so a type reachable from a live object always
// finds its siblings here alive too.
struct module_state {
    PyTypeObject* map_type = nullptr;
    PyTypeObject* transient_type = nullptr;
    PyTypeObject* iterator_type = nullptr;
    PyTypeObject* keys_type = nullptr;
    PyTypeObject* values_type = nullptr;
    PyTypeObject* items_type = nullptr;
    PyTypeObject* atom_type = nullptr;
};

struct MapObject {
    PyObject_HEAD
    object_map map;
    // -1 until computed; racing threads compute and store the same value.
    std::atomic<Py_hash_t> hash;
    PyObject* weakreflist;
    module_state* state;
};

// Thread-safety: every operation runs inside a critical section on the transient. A Python
// __hash__ / __eq__ / __del__ called meanwhile may block, which suspends the critical section
// and lets another thread in; `busy` makes that thread fail with RuntimeError instead of
// seeing a half-finished in-place edit.
struct TransientObject {
    PyObject_HEAD
    object_transient* transient;  // nullptr once persistent() was called
    bool busy;
    PyObject* weakreflist;
    module_state* state;
};

enum class view_kind : int { keys, values, items };

// Iterators hold a strong reference to the map (a snapshot, for transients). Thread-safety:
// next() runs in a critical section on the iterator and finishes moving the cursor before it
// allocates anything, so several threads may share one iterator; each entry is produced once.
struct IteratorObject {
    PyObject_HEAD
    MapObject* map;
    object_map::iterator cursor;
    Py_ssize_t remaining;
    view_kind kind;
};

struct ViewObject {
    PyObject_HEAD
    MapObject* map;
};

// ---- shared helpers (map_object.cpp) -------------------------------------------------------
bool is_map(PyObject* o) noexcept;
// The module state recorded in one of this interpreter's types (a dict lookup: cold paths only).
module_state* state_of_type(PyTypeObject* type);
PyObject* new_map(PyTypeObject* type, module_state* state, object_map&& map);
PyObject* make_iterator(module_state* state, MapObject* map, view_kind kind);
PyObject* make_view(PyTypeObject* type, MapObject* map);
void set_key_error(PyObject* key);
// Adds everything `source` holds (a map, dict, object with keys(), or iterable of pairs) and
// the keyword arguments to `t`. Returns false with a Python error set.
bool fill_transient(object_transient& t, PyObject* source, PyObject* kwargs);
int traverse_trie(const object_trie::node* root, visitproc visit, void* arg);

// ---- type specs --------------------------------------------------------------------------
extern PyType_Spec map_spec;
extern PyType_Spec transient_spec;
extern PyType_Spec iterator_spec;
extern PyType_Spec keys_spec;
extern PyType_Spec values_spec;
extern PyType_Spec items_spec;
extern PyType_Spec atom_spec;

}  // namespace pypersistent::python
