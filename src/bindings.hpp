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
#include <mutex>
#include <new>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <pypersistent/python_bridge.hpp>

#include "shared_value_cache.hpp"

#if PY_VERSION_HEX < 0x030D0000
// Critical sections exist from 3.13 on; before, the GIL alone serialises C code.
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif


namespace pypersistent::python {

// The cycle collector's view of nodes shared by several maps: see gc_census.cpp.
struct gc_census {
    struct tally {
        std::uint32_t holders = 0;       // decref pass: holders traversed so far
        visitproc reach_visit = nullptr;  // other passes: the pass that last visited the contents
        void* reach_arg = nullptr;
    };
#ifdef Py_GIL_DISABLED
    std::atomic<unsigned long> collector{0};  // the collecting thread, 0 outside collections
    std::mutex lock;
#else
    bool collecting = false;
#endif
    visitproc decref_visit = nullptr;
    std::unordered_map<const void*, tally> nodes;               // shared nodes met in this pass
    std::unordered_set<const PyObject*> holders;                 // holders counted in this pass
    bool reached = false;                                        // a non-decref pass has run since
    void reset() noexcept;
};

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
    PyTypeObject* list_type = nullptr;
    PyTypeObject* transient_list_type = nullptr;
    PyTypeObject* list_iterator_type = nullptr;
    PyTypeObject* set_type = nullptr;
    PyTypeObject* transient_set_type = nullptr;
    PyTypeObject* set_iterator_type = nullptr;
    // SharedMap, its iterator and transient, SharedAtom (shared_object.cpp).
    PyTypeObject* shared_map_type = nullptr;
    PyTypeObject* shared_map_iterator_type = nullptr;
    PyTypeObject* transient_shared_map_type = nullptr;
    PyTypeObject* shared_atom_type = nullptr;
    // PersistentSortedDict, its transient, iterator and views (sorted_map_object.cpp).
    PyTypeObject* sorted_map_type = nullptr;
    PyTypeObject* transient_sorted_type = nullptr;
    PyTypeObject* sorted_iterator_type = nullptr;
    PyTypeObject* sorted_keys_type = nullptr;
    PyTypeObject* sorted_values_type = nullptr;
    PyTypeObject* sorted_items_type = nullptr;
    // Struct sequences (named tuples) that diff() returns; made in module.cpp.
    PyTypeObject* map_diff_type = nullptr;
    PyTypeObject* set_diff_type = nullptr;
    // What the _C_API capsule hands to C++ hosts (python_bridge.hpp); filled in module.cpp.
    c_api api{};
    gc_census census;
    // The objects SharedMap lookups last returned (shared_value_cache.hpp).
    shared_value_cache shared_values;
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
    object_transient* transient;  // nullptr once finished (persistent() or the end of a with-block)
    PyObject* frozen;             // the PersistentMap it was finished into
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

// Python's hash of an exact int, computed here as long_hash does it (Objects/longobject.c):
// the magnitude reduced modulo 2**61 - 1, sign kept, -1 mapped to -2. It must equal hash(key)
// bit for bit, since 1, 1.0 and Fraction(1) are one key; tests/test_api.py pins that. Doing it
// inline saves the indirect call into long_hash, and closed forms for up to three digits (every
// int below 2**90) replace its loop of dependent steps. The PyLongObject layout is CPython's
// non-limited API; 3.12 folded size and sign into lv_tag.
// Only where the layout is known: 64-bit, 30-bit digits, CPython up to 3.14; elsewhere exact ints
// take the generic path below.
#if SIZEOF_VOID_P == 8 && PyLong_SHIFT == 30 && PY_VERSION_HEX < 0x030F0000 && !defined(PYPY_VERSION)
#define PYPERSISTENT_INLINE_INT_HASH 1
inline Py_hash_t exact_int_hash(PyObject* key) noexcept {
    const PyLongObject* v = reinterpret_cast<const PyLongObject*>(key);
#if PY_VERSION_HEX >= 0x030C0000
    const std::uintptr_t tag = v->long_value.lv_tag;
    Py_ssize_t digits = static_cast<Py_ssize_t>(tag >> _PyLong_NON_SIZE_BITS);
    const bool negative = (tag & _PyLong_SIGN_MASK) == 2;
    const digit* d = v->long_value.ob_digit;
#else
    const Py_ssize_t size = Py_SIZE(v);
    Py_ssize_t digits = size < 0 ? -size : size;
    const bool negative = size < 0;
    const digit* d = v->ob_digit;
#endif
    constexpr unsigned modulus_bits = 61;
    constexpr std::uint64_t modulus = (std::uint64_t(1) << modulus_bits) - 1;
    std::uint64_t x;
    if (digits <= 2) {
        // Below 2**60 < modulus: the hash is the magnitude itself.
        x = digits == 0 ? 0 : digits == 1 ? d[0] : d[0] | std::uint64_t(d[1]) << 30;
    } else if (digits == 3) {
        // high * 2**64 + low, and 2**64 = 8 (mod 2**61 - 1): two folds and a subtraction.
        const std::uint64_t low = d[0] | std::uint64_t(d[1]) << 30 | std::uint64_t(d[2]) << 60;
        const std::uint64_t high = d[2] >> 4;
        x = (low & modulus) + (low >> modulus_bits) + (high << 3);
        x = (x & modulus) + (x >> modulus_bits);
        if (x >= modulus) x -= modulus;
    } else {
        x = 0;
        while (--digits >= 0) {
            x = ((x << PyLong_SHIFT) & modulus) | (x >> (modulus_bits - PyLong_SHIFT));
            x += d[digits];
            if (x >= modulus) x -= modulus;
        }
    }
    if (negative) x = 0 - x;
    if (x == std::uint64_t(-1)) x = std::uint64_t(-2);
    return static_cast<Py_hash_t>(x);
}
#endif

// PyObject_Hash of a key. Exact str and int keys, the common ones, are hashed here: a str's
// cached hash is read as dict reads it (a relaxed atomic load, because whichever thread hashes
// the string first writes it); other keys call their type's tp_hash directly.
inline Py_hash_t key_hash(PyObject* key) {
    if (PyUnicode_CheckExact(key)) {
        const Py_hash_t cached = __atomic_load_n(&reinterpret_cast<PyASCIIObject*>(key)->hash, __ATOMIC_RELAXED);
        if (cached != -1) return cached;
    }
#ifdef PYPERSISTENT_INLINE_INT_HASH
    else if (PyLong_CheckExact(key)) {
        return exact_int_hash(key);
    }
#endif
    // PyObject_Hash minus its own frame; a type without tp_hash goes the long way.
    if (hashfunc hash = Py_TYPE(key)->tp_hash) return hash(key);
    return PyObject_Hash(key);
}

// ---- result codes ------------------------------------------------------------------------------

// A yes/no answer that may also fail with a Python error set: CPython's -1/0/1 int results
// (PyObject_RichCompareBool, PySequence_Contains...) as a type. Slots whose int results CPython
// defines (sq_contains...) keep their int.
enum class truth : int { error = -1, no = 0, yes = 1 };
inline truth truth_of(int r) noexcept { return r < 0 ? truth::error : r == 0 ? truth::no : truth::yes; }
inline truth truth_of_bool(bool b) noexcept { return b ? truth::yes : truth::no; }
// Py_True / Py_False for yes / no, nullptr (the error is set) for error.
inline PyObject* bool_or_null(truth t) {
    if (t == truth::error) return nullptr;
    return PyBool_FromLong(t == truth::yes);
}

// What removing an element from a transient did.
enum class removal : int { error = -1, absent = 0, removed = 1 };

// The value of a structure's hash cache until the hash is computed.
inline constexpr Py_hash_t hash_not_computed = -1;

// ---- method tables and their errors -----------------------------------------------------------

using fastcall_method = PyObject* (*)(PyObject*, PyObject* const*, Py_ssize_t);
using keywords_method = PyObject* (*)(PyObject*, PyObject*, PyObject*);
inline PyCFunction as_method(fastcall_method f) noexcept {
    return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}
inline PyCFunction as_method(keywords_method f) noexcept {
    return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

// Aliases (set/assoc, merge/update...) share one implementation, which takes the qualified name
// of the method called ("PersistentMap.set") for its error messages, as CPython names it in its
// own (METH_O and METH_NOARGS errors, keyword arguments refused). Each table entry is a
// captureless lambda passing its own name to the implementation: a direct call the compiler
// inlines, with no dispatcher or lookup on the way.
#define PP_NAMED_FASTCALL(impl, name)                                                               \
    ::pypersistent::python::as_method(+[](PyObject* self_, PyObject* const* args_, Py_ssize_t nargs_) \
                                          -> PyObject* { return impl(self_, args_, nargs_, name); })
#define PP_NAMED_KEYWORDS(impl, name)                                                           \
    ::pypersistent::python::as_method(+[](PyObject* self_, PyObject* args_, PyObject* kwargs_) \
                                          -> PyObject* { return impl(self_, args_, kwargs_, name); })

// "PersistentMap.set() takes exactly 2 arguments (1 given)": `method` is the qualified name of
// the method called, `takes` what it takes. Returns nullptr.
inline PyObject* argument_count_error(const char* method, const char* takes, Py_ssize_t given) {
    PyErr_Format(PyExc_TypeError, "%s() takes %s (%zd given)", method, takes, given);
    return nullptr;
}

// The docstrings every type's methods share (Argument Clinic's text-signature form, which gives
// inspect.signature).
inline constexpr const char* class_getitem_doc =
    "__class_getitem__($type, item, /)\n--\n\n"
    "The type parameterised for annotations, such as PersistentMap[str, int] (see PEP 585).";
inline constexpr const char* sizeof_doc =
    "__sizeof__($self, /)\n--\n\n"
    "The size of the object in bytes, without the nodes it shares with other versions.";
inline constexpr const char* length_hint_doc =
    "__length_hint__($self, /)\n--\n\n"
    "The number of items left (an estimate for len(list(it))).";

// Runs `body`, turning the C++ exceptions that may cross the trie back into Python errors.
template <class F>
PyObject* guarded(F&& body) {
    try {
        return body();
    } catch (const python_error&) {
        return nullptr;
    } catch (const std::bad_alloc&) {
        return PyErr_NoMemory();
    }
}

// tp_dealloc of an immutable structure's object (PersistentMap, PersistentSet, PersistentList):
// `dealloc` is the calling tp_dealloc itself, which the trashcan compares with the type's, and
// destroy(object) ends the C++ members. A structure holding a structure holding a structure...
// (a functional linked list) would free itself by recursion on the C stack: the trashcan turns
// deep nesting into a loop.
template <class Object, class Destroy>
void dealloc_structure(PyObject* self, destructor dealloc, Destroy&& destroy) {
    Object* o = reinterpret_cast<Object*>(self);
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, dealloc)
    if (o->weakreflist) PyObject_ClearWeakRefs(self);
    destroy(*o);
    type->tp_free(self);
    Py_DECREF(type);
    Py_TRASHCAN_END
}

// ---- shared helpers (map_object.cpp) -------------------------------------------------------
// __deepcopy__ and __reduce__ of a structure whose contents `items` (a new list, stolen; null
// with an error set) rebuild it through `type`'s constructor.
PyObject* deepcopy_through(PyTypeObject* type, PyObject* items, PyObject* memo);
PyObject* reduce_to(PyTypeObject* type, PyObject* items);
// __sizeof__: the object itself (its nodes are shared with other versions).
PyObject* object_sizeof(PyObject* self, PyObject*);
bool is_map(PyObject* o) noexcept;
bool is_set(PyObject* o) noexcept;               // a PersistentSet (set_object.cpp)
bool is_persistent_list(PyObject* o) noexcept;  // a PersistentList (list_object.cpp)
bool is_sorted_map(PyObject* o) noexcept;       // a PersistentSortedDict (sorted_map_object.cpp)
PyObject* make_set_iterator(module_state* state, PyObject* set);
// The module state recorded in one of this interpreter's types (a dict lookup: cold paths only).
module_state* state_of_type(PyTypeObject* type);
PyObject* new_map(PyTypeObject* type, module_state* state, object_map&& map);
PyObject* make_iterator(module_state* state, MapObject* map, view_kind kind);
PyObject* make_view(PyTypeObject* type, MapObject* map);
void set_key_error(PyObject* key);
// Adds everything `source` holds (a map, dict, object with keys(), or iterable of pairs) and
// the keyword arguments to `t`. Returns false with a Python error set.
bool fill_transient(object_transient& t, PyObject* source, PyObject* kwargs);
// tp_traverse of the references in the trie under `root`, held by `holder` (gc_census.cpp).
int traverse_trie(PyObject* holder, module_state* state, const object_trie::node* root, visitproc visit, void* arg);
// The gc.callbacks entry that tells the census when a collection starts and stops; `self` is
// the module state's capsule.
PyObject* census_callback(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
// The C API entry for Atoms (atom_object.cpp).
int atom_current_root(PyObject* atom, object_trie::node** root, std::size_t* size);

// ---- PersistentList (list_object.cpp) ----------------------------------------------------

struct ListObject {
    PyObject_HEAD
    object_vector vec;
    // -1 until computed; racing threads compute and store the same value.
    std::atomic<Py_hash_t> hash;
    PyObject* weakreflist;
    module_state* state;
};

// Like TransientObject: a critical section and the `busy` flag around every operation.
struct TransientListObject {
    PyObject_HEAD
    object_vector_transient* transient;  // nullptr once finished
    PyObject* frozen;                    // the PersistentList it was finished into
    bool busy;
    PyObject* weakreflist;
    module_state* state;
};

// ---- type specs --------------------------------------------------------------------------
extern PyType_Spec map_spec;
extern PyType_Spec transient_spec;
extern PyType_Spec iterator_spec;
extern PyType_Spec keys_spec;
extern PyType_Spec values_spec;
extern PyType_Spec items_spec;
extern PyType_Spec atom_spec;
extern PyType_Spec list_spec;
extern PyType_Spec transient_list_spec;
extern PyType_Spec list_iterator_spec;
extern PyType_Spec set_spec;
extern PyType_Spec transient_set_spec;
extern PyType_Spec set_iterator_spec;
extern PyType_Spec shared_map_spec;            // shared_object.cpp
extern PyType_Spec shared_map_iterator_spec;
extern PyType_Spec transient_shared_map_spec;
extern PyType_Spec shared_atom_spec;
extern PyType_Spec sorted_map_spec;  // sorted_map_object.cpp
extern PyType_Spec transient_sorted_spec;
extern PyType_Spec sorted_iterator_spec;
extern PyType_Spec sorted_keys_spec;
extern PyType_Spec sorted_values_spec;
extern PyType_Spec sorted_items_spec;

// Lets CPython's cross-interpreter machinery (interpreter queues, Interpreter.call, prepare_main)
// move a SharedMap by reference on the versions where that is possible (shared_crossinterp.cpp).
// Returns false with a Python error set.
bool register_cross_interpreter_sharing(PyTypeObject* shared_map_type);

// The name of the capsule holding a module's module_state, kept as `_state` in every type's dict.
inline constexpr const char* state_capsule_name = "pypersistent._state";

}  // namespace pypersistent::python
