// PersistentList (an immutable sequence on the C++ persistent_vector), its iterator, and
// TransientList, its mutable builder.
//
// The hot paths (indexing with an int, len, iteration, append/conj, set) are plain CPython slots
// and METH_O / METH_FASTCALL methods reading `self` directly. Lists are immutable, so reads take
// no lock; a TransientList runs every operation in a critical section with a `busy` flag, as
// TransientMap does (transient_object.cpp).
//
// User code (an element's __eq__, __lt__, __hash__, __repr__, __index__, an iterator's __next__)
// may run in the middle of an operation; it can never change a PersistentList, and every loop
// that calls it holds a strong reference to the lists it walks, so nodes it reads stay alive.
#include <climits>
#include <cstring>
#include <new>
#include <utility>

#include "bindings.hpp"
#include "gc_census.hpp"
#include "transient_support.hpp"

namespace pypersistent::python {
namespace {

// Iterators hold a strong reference to the list (a snapshot, for transients). next() runs in a
// critical section on the iterator and only moves the cursor and takes a reference in it, so
// several threads may share one iterator; each element is produced once.
struct ListIteratorObject {
    PyObject_HEAD
    ListObject* list;
    object_vector::iterator cursor;  // forward iterators only
    Py_ssize_t next;                 // the index of the next element; -1 ends a reverse iterator
    bool reverse;
};

ListObject* as_list(PyObject* o) { return reinterpret_cast<ListObject*>(o); }
TransientListObject* as_tlist(PyObject* o) { return reinterpret_cast<TransientListObject*>(o); }
ListIteratorObject* as_list_iterator(PyObject* o) { return reinterpret_cast<ListIteratorObject*>(o); }

void list_dealloc(PyObject* self);
void tlist_dealloc(PyObject* self);

bool is_list(PyObject* o) { return Py_TYPE(o)->tp_dealloc == list_dealloc; }
bool is_tlist(PyObject* o) { return Py_TYPE(o)->tp_dealloc == tlist_dealloc; }

// Every update makes one of these, so it skips tp_alloc's generic path (PyType_GenericAlloc
// zeroes the object and tracks it at once): the fields are written, then the object is tracked.
PyObject* new_list(PyTypeObject* type, module_state* state, object_vector&& vec) {
    ListObject* l = PyObject_GC_New(ListObject, type);
    if (!l) return nullptr;
    new (&l->vec) object_vector(std::move(vec));
    new (&l->hash) std::atomic<Py_hash_t>(hash_not_computed);
    l->weakreflist = nullptr;
    l->state = state;
    PyObject_GC_Track(l);
    return reinterpret_cast<PyObject*>(l);
}

// A list of self's type holding `vec`, or self itself when vec is the same version.
PyObject* list_or_self(PyObject* self, object_vector&& vec) {
    if (vec.identical(as_list(self)->vec)) return Py_NewRef(self);
    return new_list(Py_TYPE(self), as_list(self)->state, std::move(vec));
}

// The index an object stands for (ints, and objects with __index__); false with an error set.
// An int too large for Py_ssize_t raises IndexError, as list does.
inline bool index_value(PyObject* key, Py_ssize_t* out) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyLong_CheckExact(key) && PyUnstable_Long_IsCompact(reinterpret_cast<PyLongObject*>(key))) {
        *out = static_cast<Py_ssize_t>(PyUnstable_Long_CompactValue(reinterpret_cast<PyLongObject*>(key)));
        return true;
    }
#endif
    const Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) return false;
    *out = i;
    return true;
}

// i (negative counts from the end) as a position in a sequence of n elements; false if outside.
inline bool normalise(Py_ssize_t& i, std::size_t n) {
    if (i < 0) i += static_cast<Py_ssize_t>(n);
    return i >= 0 && static_cast<std::size_t>(i) < n;
}

PyObject* index_error(const char* message) {
    PyErr_SetString(PyExc_IndexError, message);
    return nullptr;
}

// ---- filling a transient from Python input ---------------------------------------------------

void push_all(object_vector_transient& t, const object_vector& v) {
    for (PyObject* item : v) t.push_back(item);
}

// Appends the items of `source` to `t`. Returns false with a Python error set; C++ exceptions
// (bad_alloc) propagate, with t holding the items added so far.
bool fill_vector(object_vector_transient& t, PyObject* source) {
    if (is_list(source)) {
        push_all(t, as_list(source)->vec);
        return true;
    }
    if (PyTuple_Check(source)) {
        for (Py_ssize_t i = 0, n = PyTuple_GET_SIZE(source); i < n; ++i) t.push_back(PyTuple_GET_ITEM(source, i));
        return true;
    }
    if (PyList_CheckExact(source)) {
        // Under the list's lock: another thread may be changing it. push_back runs no Python code
        // (releases are deferred), so nothing can change the list meanwhile.
        bool no_memory = false;
        Py_BEGIN_CRITICAL_SECTION(source);
        try {
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(source); ++i) t.push_back(PyList_GET_ITEM(source, i));
        } catch (const std::bad_alloc&) {
            no_memory = true;
        }
        Py_END_CRITICAL_SECTION();
        if (no_memory) throw std::bad_alloc();
        return true;
    }
    PyObject* it = PyObject_GetIter(source);
    if (!it) return false;
    iternextfunc next = Py_TYPE(it)->tp_iternext;
    while (PyObject* item = next(it)) {
        try {
            t.push_back(item);
        } catch (...) {
            Py_DECREF(item);
            Py_DECREF(it);
            throw;
        }
        Py_DECREF(item);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_StopIteration)) return false;
        PyErr_Clear();
    }
    return true;
}

PyObject* build_list(PyTypeObject* type, PyObject* source) {
    if (source && is_list(source) && Py_TYPE(source) == type) return Py_NewRef(source);
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    return guarded([&]() -> PyObject* {
        object_vector_transient t;
        if (source && !fill_vector(t, source)) return nullptr;
        return new_list(type, state, t.persistent());
    });
}

PyObject* to_pylist(const object_vector& v) {
    const auto n = static_cast<Py_ssize_t>(v.size());
    PyObject* out = PyList_New(n);
    if (!out) return nullptr;
    Py_ssize_t i = 0;
    for (PyObject* item : v) PyList_SET_ITEM(out, i++, Py_NewRef(item));
    return out;
}

// ---- PersistentList: protocols -----------------------------------------------------------------

PyObject* list_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    if (kwargs && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "PersistentList() takes no keyword arguments");
        return nullptr;
    }
    PyObject* source = nullptr;
    if (!PyArg_UnpackTuple(args, "PersistentList", 0, 1, &source)) return nullptr;
    return build_list(type, source);
}

Py_ssize_t list_length(PyObject* self) { return static_cast<Py_ssize_t>(as_list(self)->vec.size()); }

PyObject* item_at(PyObject* self, Py_ssize_t i) {
    const object_vector& v = as_list(self)->vec;
    if (!normalise(i, v.size())) return index_error("PersistentList index out of range");
    return Py_NewRef(v[static_cast<std::size_t>(i)]);
}

// sq_item: the caller has added len() to a negative index already.
PyObject* list_item(PyObject* self, Py_ssize_t i) {
    const object_vector& v = as_list(self)->vec;
    if (i < 0 || static_cast<std::size_t>(i) >= v.size()) return index_error("PersistentList index out of range");
    return Py_NewRef(v[static_cast<std::size_t>(i)]);
}

// Elements [start, stop) by step, as PySlice_AdjustIndices leaves them (`count` of them).
object_vector slice_of(const object_vector& v, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t step, Py_ssize_t count) {
    if (count <= 0) return object_vector();
    if (step == 1) return v.slice(static_cast<std::size_t>(start), static_cast<std::size_t>(stop));
    object_vector_transient t;
    if (step > 0) {
        // Forward steps walk the leaves once.
        auto it = v.iterator_at(static_cast<std::size_t>(start));
        for (Py_ssize_t k = 0;; ++k) {
            t.push_back(*it);
            if (k + 1 == count) break;
            for (Py_ssize_t s = 0; s < step; ++s) ++it;
        }
    } else {
        for (Py_ssize_t k = 0, i = start; k < count; ++k, i += step) t.push_back(v[static_cast<std::size_t>(i)]);
    }
    return t.persistent();
}

PyObject* list_slice(PyObject* self, PyObject* slice) {
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(slice, &start, &stop, &step) < 0) return nullptr;
    const object_vector& v = as_list(self)->vec;
    const Py_ssize_t n = static_cast<Py_ssize_t>(v.size());
    const Py_ssize_t count = PySlice_AdjustIndices(n, &start, &stop, step);
    if (step == 1 && count == n) return Py_NewRef(self);
    return guarded([&] { return new_list(Py_TYPE(self), as_list(self)->state, slice_of(v, start, stop, step, count)); });
}

PyObject* list_subscript(PyObject* self, PyObject* key) {
    if (PyLong_CheckExact(key)) {
#if PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact(reinterpret_cast<PyLongObject*>(key))) {
            return item_at(self, static_cast<Py_ssize_t>(PyUnstable_Long_CompactValue(reinterpret_cast<PyLongObject*>(key))));
        }
#else
        const Py_ssize_t i = PyLong_AsSsize_t(key);
        if (i != -1 || !PyErr_Occurred()) return item_at(self, i);
        PyErr_Clear();
#endif
    }
    if (PyIndex_Check(key)) {
        Py_ssize_t i;
        if (!index_value(key, &i)) return nullptr;
        return item_at(self, i);
    }
    if (PySlice_Check(key)) return list_slice(self, key);
    PyErr_Format(PyExc_TypeError, "PersistentList indices must be integers or slices, not %.200s", Py_TYPE(key)->tp_name);
    return nullptr;
}

int list_contains(PyObject* self, PyObject* x) {
    Py_INCREF(self);  // held while user __eq__ runs
    int r = 0;
    for (PyObject* item : as_list(self)->vec) {
        Py_INCREF(item);
        r = PyObject_RichCompareBool(item, x, Py_EQ);
        Py_DECREF(item);
        if (r != 0) break;
    }
    Py_DECREF(self);
    return r;
}

int list_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    const object_vector& v = as_list(self)->vec;
    const vector_node_traits::handle roots[2] = {{v.root(), v.shift()}, {v.tail(), 0}};
    return traverse_nodes<vector_node_traits>(self, as_list(self)->state, roots, 2, visit, arg);
}

PyObject* make_list_iterator(PyObject* list, bool reverse) {
    ListObject* l = as_list(list);
    PyTypeObject* type = l->state->list_iterator_type;
    auto* it = reinterpret_cast<ListIteratorObject*>(type->tp_alloc(type, 0));
    if (!it) return nullptr;
    it->list = reinterpret_cast<ListObject*>(Py_NewRef(list));
    it->reverse = reverse;
    if (reverse) {
        new (&it->cursor) object_vector::iterator();
        it->next = static_cast<Py_ssize_t>(l->vec.size()) - 1;
    } else {
        new (&it->cursor) object_vector::iterator(l->vec.begin());
        it->next = 0;
    }
    return reinterpret_cast<PyObject*>(it);
}

PyObject* list_iter(PyObject* self) { return make_list_iterator(self, false); }

// tuple's hash (xxHash-based, CPython 3.8+), so hash(PersistentList(x)) == hash(tuple(x)).
Py_hash_t list_hash(PyObject* self) {
    ListObject* l = as_list(self);
    const Py_hash_t cached = l->hash.load(std::memory_order_relaxed);
    if (cached != hash_not_computed) return cached;
    // Lists nested arbitrarily deep: RecursionError, not a C stack overflow.
    if (Py_EnterRecursiveCall(" while hashing a PersistentList")) return -1;
    constexpr std::uint64_t prime1 = 11400714785074694791ULL;
    constexpr std::uint64_t prime2 = 14029467366897019727ULL;
    constexpr std::uint64_t prime5 = 2870177450012600261ULL;
    std::uint64_t acc = prime5;
    Py_INCREF(self);
    for (PyObject* item : l->vec) {
        const Py_hash_t h = PyObject_Hash(item);
        if (h == -1) {
            Py_DECREF(self);
            Py_LeaveRecursiveCall();
            return -1;
        }
        acc += static_cast<std::uint64_t>(h) * prime2;
        acc = (acc << 31) | (acc >> 33);
        acc *= prime1;
    }
    Py_DECREF(self);
    Py_LeaveRecursiveCall();
    acc += static_cast<std::uint64_t>(l->vec.size()) ^ (prime5 ^ 3527539UL);
    Py_hash_t result = acc == std::uint64_t(-1) ? 1546275796 : static_cast<Py_hash_t>(acc);
    l->hash.store(result, std::memory_order_relaxed);
    return result;
}

// As tuple compares: only with another PersistentList (a list or tuple is never equal, as
// (1,) != [1]); == and != compare element by element (skipping subtrees both share), the
// orderings lexicographically.
PyObject* list_richcompare(PyObject* self, PyObject* other, int op) {
    if (!is_list(other)) Py_RETURN_NOTIMPLEMENTED;
    const object_vector& a = as_list(self)->vec;
    const object_vector& b = as_list(other)->vec;
    if ((op == Py_EQ || op == Py_NE) && a.size() != b.size()) return PyBool_FromLong(op == Py_NE);
    if (a.identical(b)) {
        const bool same = op == Py_EQ || op == Py_LE || op == Py_GE;
        return PyBool_FromLong(same);
    }
    // Both held while element comparisons run user code.
    Py_INCREF(self);
    Py_INCREF(other);
    PyObject* result = nullptr;
    if (op == Py_EQ || op == Py_NE) {
        try {
            const bool eq = a.equal(b, object_equal{});
            result = PyBool_FromLong(eq == (op == Py_EQ));
        } catch (const python_error&) {
            result = nullptr;
        }
    } else {
        const std::size_t n = a.size() < b.size() ? a.size() : b.size();
        auto ia = a.begin();
        auto ib = b.begin();
        std::size_t i = 0;
        bool failed = false;
        for (; i < n; ++i, ++ia, ++ib) {
            PyObject* x = *ia;
            PyObject* y = *ib;
            if (x == y) continue;
            Py_INCREF(x);
            Py_INCREF(y);
            const int k = PyObject_RichCompareBool(x, y, Py_EQ);
            if (k == 0) result = PyObject_RichCompare(x, y, op);
            Py_DECREF(x);
            Py_DECREF(y);
            if (k < 0) failed = true;
            if (k <= 0) break;
        }
        if (!failed && i == n) {
            const std::size_t sa = a.size(), sb = b.size();
            bool r = false;
            switch (op) {
                case Py_LT: r = sa < sb; break;
                case Py_LE: r = sa <= sb; break;
                case Py_GT: r = sa > sb; break;
                case Py_GE: r = sa >= sb; break;
                default: break;
            }
            result = PyBool_FromLong(r);
        }
    }
    Py_DECREF(other);
    Py_DECREF(self);
    return result;
}

PyObject* list_repr(PyObject* self) {
    const object_vector& v = as_list(self)->vec;
    if (v.empty()) return PyUnicode_FromString("PersistentList([])");
    const int entered = Py_ReprEnter(self);
    if (entered != 0) return entered > 0 ? PyUnicode_FromString("PersistentList([...])") : nullptr;
    PyObject* items = to_pylist(v);
    PyObject* result = items ? PyUnicode_FromFormat("PersistentList(%R)", items) : nullptr;
    Py_XDECREF(items);
    Py_ReprLeave(self);
    return result;
}

// self + other: only two PersistentLists, as tuple only adds tuples.
PyObject* list_add(PyObject* left, PyObject* right) {
    if (!is_list(left) || !is_list(right)) Py_RETURN_NOTIMPLEMENTED;
    const object_vector& a = as_list(left)->vec;
    const object_vector& b = as_list(right)->vec;
    if (b.empty()) return Py_NewRef(left);
    if (a.empty()) return Py_NewRef(right);
    return guarded([&] { return new_list(Py_TYPE(left), as_list(left)->state, a.concat(b)); });
}

// self * n, n * self
PyObject* list_multiply(PyObject* left, PyObject* right) {
    PyObject* self = is_list(left) ? left : right;
    PyObject* count = self == left ? right : left;
    if (!PyIndex_Check(count)) Py_RETURN_NOTIMPLEMENTED;
    const Py_ssize_t n = PyNumber_AsSsize_t(count, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred()) return nullptr;
    const object_vector& v = as_list(self)->vec;
    if (n == 1 || v.empty()) return Py_NewRef(self);
    if (n <= 0) return new_list(Py_TYPE(self), as_list(self)->state, object_vector());
    if (static_cast<std::size_t>(n) > static_cast<std::size_t>(PY_SSIZE_T_MAX) / v.size()) return PyErr_NoMemory();
    // The result is built element by element, so an impossible size would fill memory before
    // failing. Like tuple and list, which allocate the whole array first, ask the allocator for
    // the result's slots up front (an untouched allocation costs no memory) and raise
    // MemoryError at once if it refuses.
    const std::size_t total = static_cast<std::size_t>(n) * v.size();
    if (total > (std::size_t(1) << 20)) {
        if (total > PY_SSIZE_T_MAX / sizeof(PyObject*)) return PyErr_NoMemory();
        void* probe = PyMem_RawMalloc(total * sizeof(PyObject*));
        if (!probe) return PyErr_NoMemory();
        PyMem_RawFree(probe);
    }
    return guarded([&] {
        object_vector_transient t(v);
        for (Py_ssize_t k = 1; k < n; ++k) push_all(t, v);
        return new_list(Py_TYPE(self), as_list(self)->state, t.persistent());
    });
}

// ---- PersistentList: methods ---------------------------------------------------------------

PyObject* list_conj(PyObject* self, PyObject* x) {
    return guarded([&] { return new_list(Py_TYPE(self), as_list(self)->state, as_list(self)->vec.push_back(x)); });
}

PyObject* list_extend(PyObject* self, PyObject* source) {
    ListObject* l = as_list(self);
    if (is_list(source)) return list_add(self, source);
    return guarded([&]() -> PyObject* {
        object_vector_transient t(l->vec);
        if (!fill_vector(t, source)) return nullptr;
        if (t.size() == l->vec.size()) return Py_NewRef(self);
        return new_list(Py_TYPE(self), l->state, t.persistent());
    });
}

// assoc() and set(); `name` is the one called, for errors (PP_NAMED_FASTCALL).
PyObject* list_assoc(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs != 2) return argument_count_error(name, "exactly 2 arguments", nargs);
    Py_ssize_t i;
    if (!index_value(args[0], &i)) return nullptr;
    const object_vector& v = as_list(self)->vec;
    if (!normalise(i, v.size())) return index_error("PersistentList assignment index out of range");
    return guarded([&] { return list_or_self(self, v.set(static_cast<std::size_t>(i), args[1])); });
}

PyObject* list_nth(PyObject* self, PyObject* index) {
    Py_ssize_t i;
    if (!index_value(index, &i)) return nullptr;
    return item_at(self, i);
}

PyObject* list_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("PersistentList.get", "1 or 2 arguments", nargs);
    Py_ssize_t i;
    if (!index_value(args[0], &i)) {
        if (!PyErr_ExceptionMatches(PyExc_IndexError)) return nullptr;
        PyErr_Clear();  // an index beyond Py_ssize_t is simply absent
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    }
    const object_vector& v = as_list(self)->vec;
    if (!normalise(i, v.size())) return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return Py_NewRef(v[static_cast<std::size_t>(i)]);
}

PyObject* list_pop(PyObject* self, PyObject*) {
    const object_vector& v = as_list(self)->vec;
    if (v.empty()) return index_error("pop from empty PersistentList");
    return guarded([&] { return new_list(Py_TYPE(self), as_list(self)->state, v.pop_back()); });
}

PyObject* list_slice_method(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs > 2) return argument_count_error("PersistentList.slice", "at most 2 arguments", nargs);
    PyObject* slice = PySlice_New(nargs > 0 ? args[0] : Py_None, nargs > 1 ? args[1] : Py_None, nullptr);
    if (!slice) return nullptr;
    PyObject* result = list_slice(self, slice);
    Py_DECREF(slice);
    return result;
}

PyObject* list_to_list(PyObject* self, PyObject*) { return to_pylist(as_list(self)->vec); }

// A bound of index()'s range, clamped as tuple.index clamps it.
bool bound_arg(PyObject* o, Py_ssize_t* out) {
    if (!PyIndex_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "slice indices must be integers or have an __index__ method");
        return false;
    }
    const Py_ssize_t i = PyNumber_AsSsize_t(o, nullptr);  // clamps on overflow
    if (i == -1 && PyErr_Occurred()) return false;
    *out = i;
    return true;
}

PyObject* list_index(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) return argument_count_error("PersistentList.index", "from 1 to 3 arguments", nargs);
    const object_vector& v = as_list(self)->vec;
    const auto n = static_cast<Py_ssize_t>(v.size());
    Py_ssize_t start = 0, stop = PY_SSIZE_T_MAX;
    if (nargs > 1 && !bound_arg(args[1], &start)) return nullptr;
    if (nargs > 2 && !bound_arg(args[2], &stop)) return nullptr;
    if (start < 0) {
        start += n;
        if (start < 0) start = 0;
    }
    if (stop < 0) {
        stop += n;
    } else if (stop > n) {
        stop = n;
    }
    Py_INCREF(self);
    Py_ssize_t found = -1;
    int r = 0;
    if (start < stop) {
        auto it = v.iterator_at(static_cast<std::size_t>(start));
        for (Py_ssize_t i = start; i < stop; ++i, ++it) {
            PyObject* item = Py_NewRef(*it);
            r = PyObject_RichCompareBool(item, args[0], Py_EQ);
            Py_DECREF(item);
            if (r != 0) {
                found = i;
                break;
            }
        }
    }
    Py_DECREF(self);
    if (r < 0) return nullptr;
    if (found < 0) {
        PyErr_SetString(PyExc_ValueError, "PersistentList.index(x): x not in list");
        return nullptr;
    }
    return PyLong_FromSsize_t(found);
}

PyObject* list_count(PyObject* self, PyObject* x) {
    Py_INCREF(self);
    Py_ssize_t count = 0;
    bool failed = false;
    for (PyObject* item : as_list(self)->vec) {
        Py_INCREF(item);
        const int r = PyObject_RichCompareBool(item, x, Py_EQ);
        Py_DECREF(item);
        if (r < 0) {
            failed = true;
            break;
        }
        count += r;
    }
    Py_DECREF(self);
    return failed ? nullptr : PyLong_FromSsize_t(count);
}

PyObject* list_reversed(PyObject* self, PyObject*) { return make_list_iterator(self, true); }

PyObject* new_transient_list(module_state* state, object_vector_transient* t) {
    return new_transient<TransientListObject>(state->transient_list_type, state, t);
}

PyObject* list_transient(PyObject* self, PyObject*) {
    ListObject* l = as_list(self);
    return guarded([&] { return new_transient_list(l->state, new object_vector_transient(l->vec)); });
}

PyObject* list_copy(PyObject* self, PyObject*) { return Py_NewRef(self); }

PyObject* list_deepcopy(PyObject* self, PyObject* memo) {
    return deepcopy_through(Py_TYPE(self), to_pylist(as_list(self)->vec), memo);
}

PyObject* list_reduce(PyObject* self, PyObject*) { return reduce_to(Py_TYPE(self), to_pylist(as_list(self)->vec)); }

PyObject* list_create(PyObject* cls, PyObject* args) { return build_list(reinterpret_cast<PyTypeObject*>(cls), args); }

PyObject* list_from_iterable(PyObject* cls, PyObject* source) {
    return build_list(reinterpret_cast<PyTypeObject*>(cls), source);
}

#define PP_FASTCALL(f) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f))

PyMethodDef list_methods[] = {
    {"conj", list_conj, METH_O, "conj($self, value, /)\n--\n\nA new list with value appended."},
    {"append", list_conj, METH_O, "append($self, value, /)\n--\n\nA new list with value appended (same as conj())."},
    {"extend", list_extend, METH_O,
     "extend($self, values, /)\n--\n\nA new list with the items of the iterable values appended."},
    {"assoc", PP_NAMED_FASTCALL(list_assoc, "PersistentList.assoc"), METH_FASTCALL,
     "assoc($self, index, value, /)\n--\n\n"
     "A new list with element index (negative counts from the end) set to value."},
    {"set", PP_NAMED_FASTCALL(list_assoc, "PersistentList.set"), METH_FASTCALL,
     "set($self, index, value, /)\n--\n\nA new list with element index set to value (same as assoc())."},
    {"nth", list_nth, METH_O, "nth($self, index, /)\n--\n\nElement index (negative counts from the end); IndexError if out of range."},
    {"get", PP_FASTCALL(list_get), METH_FASTCALL,
     "get($self, index, default=None, /)\n--\n\nElement index, or default if index is out of range."},
    {"pop", list_pop, METH_NOARGS, "pop($self, /)\n--\n\nA new list without the last element; IndexError if empty."},
    {"slice", PP_FASTCALL(list_slice_method), METH_FASTCALL,
     "slice($self, start=None, stop=None, /)\n--\n\nThe elements from start to stop, as a new list (same as self[start:stop])."},
    {"list", list_to_list, METH_NOARGS, "list($self, /)\n--\n\nThe elements as a Python list."},
    {"index", PP_FASTCALL(list_index), METH_FASTCALL,
     "index($self, value, start=0, stop=sys.maxsize, /)\n--\n\n"
     "The first index of value (between start and stop); ValueError if absent."},
    {"count", list_count, METH_O, "count($self, value, /)\n--\n\nThe number of occurrences of value."},
    {"__reversed__", list_reversed, METH_NOARGS,
     "__reversed__($self, /)\n--\n\nAn iterator over the elements from the last to the first."},
    {"transient", list_transient, METH_NOARGS,
     "transient($self, /)\n--\n\n"
     "A TransientList (a mutable builder) starting from this list; its persistent() freezes it in O(1)."},
    {"__copy__", list_copy, METH_NOARGS, "__copy__($self, /)\n--\n\nThis list itself: it is immutable."},
    {"__deepcopy__", list_deepcopy, METH_O,
     "__deepcopy__($self, memo, /)\n--\n\nA list of deep copies of the elements."},
    {"__reduce__", list_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickling support: the list is rebuilt from its elements."},
    {"__sizeof__", object_sizeof, METH_NOARGS, sizeof_doc},
    {"create", list_create, METH_VARARGS | METH_CLASS,
     "create($type, /, *items)\n--\n\nA list of the arguments, in order."},
    {"from_list", list_from_iterable, METH_O | METH_CLASS,
     "from_list($type, items, /)\n--\n\nA list of the items of an iterable (same as from_iterable())."},
    {"from_iterable", list_from_iterable, METH_O | METH_CLASS,
     "from_iterable($type, items, /)\n--\n\nA list of the items of an iterable."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef list_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ListObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

const char list_doc[] =
    "PersistentList(iterable=(), /)\n--\n\n"
    "An immutable sequence (a 32-way bit-partitioned vector trie with a tail).\n\n"
    "Every update returns\n"
    "a new list that shares all untouched structure with the old one; lists may be shared between\n"
    "threads freely. Compares and hashes like a tuple: == only with another PersistentList, and\n"
    "hash(PersistentList(x)) == hash(tuple(x)).";

PyType_Slot list_slots[] = {
    {Py_tp_doc, const_cast<char*>(list_doc)},
    {Py_tp_new, reinterpret_cast<void*>(list_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(list_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(list_traverse)},
    {Py_tp_hash, reinterpret_cast<void*>(list_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(list_richcompare)},
    {Py_tp_iter, reinterpret_cast<void*>(list_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(list_repr)},
    {Py_tp_methods, list_methods},
    {Py_tp_members, list_members},
    {Py_mp_length, reinterpret_cast<void*>(list_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(list_subscript)},
    {Py_sq_length, reinterpret_cast<void*>(list_length)},
    {Py_sq_item, reinterpret_cast<void*>(list_item)},
    {Py_sq_contains, reinterpret_cast<void*>(list_contains)},
    {Py_nb_add, reinterpret_cast<void*>(list_add)},
    {Py_nb_multiply, reinterpret_cast<void*>(list_multiply)},
    {0, nullptr},
};

void list_dealloc(PyObject* self) {
    dealloc_structure<ListObject>(self, list_dealloc, [](ListObject& l) {
        l.vec.~object_vector();
        l.hash.~atomic();
    });
}

// ---- iterator ----------------------------------------------------------------------------------

PyObject* list_iterator_next(PyObject* self) {
    ListIteratorObject* it = as_list_iterator(self);
    PyObject* item = nullptr;
    static const object_vector::iterator end_of_vector;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (!it->reverse) {
        if (it->cursor != end_of_vector) {
            item = Py_NewRef(*it->cursor);
            ++it->cursor;
            ++it->next;
        }
    } else if (it->next >= 0) {
        item = Py_NewRef(it->list->vec[static_cast<std::size_t>(it->next)]);
        --it->next;
    }
    Py_END_CRITICAL_SECTION();
    return item;
}

PyObject* list_iterator_length_hint(PyObject* self, PyObject*) {
    ListIteratorObject* it = as_list_iterator(self);
    Py_ssize_t n;
    Py_BEGIN_CRITICAL_SECTION(self);
    n = it->reverse ? it->next + 1 : static_cast<Py_ssize_t>(it->list->vec.size()) - it->next;
    Py_END_CRITICAL_SECTION();
    return PyLong_FromSsize_t(n);
}

int list_iterator_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(reinterpret_cast<PyObject*>(as_list_iterator(self)->list));
    return 0;
}

void list_iterator_dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_XDECREF(reinterpret_cast<PyObject*>(as_list_iterator(self)->list));
    type->tp_free(self);
    Py_DECREF(type);
}

PyMethodDef list_iterator_methods[] = {
    {"__length_hint__", list_iterator_length_hint, METH_NOARGS, length_hint_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot list_iterator_slots[] = {
    {Py_tp_doc, const_cast<char*>("An iterator over a PersistentList or TransientList, forward or reversed.")},
    {Py_tp_dealloc, reinterpret_cast<void*>(list_iterator_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(list_iterator_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(PyObject_SelfIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(list_iterator_next)},
    {Py_tp_methods, list_iterator_methods},
    {0, nullptr},
};

// ---- TransientList -------------------------------------------------------------------------

template <class R, class F>
R locked(PyObject* self, R failed, F&& body) {
    return locked_transient<TransientListObject>(self, "TransientList", failed, std::forward<F>(body));
}

// A persistent snapshot of the current contents (O(1)); later edits copy what they touch.
PyObject* tlist_snapshot(PyObject* self) {
    module_state* state = as_tlist(self)->state;
    return locked<PyObject*>(self, nullptr,
                             [&](object_vector_transient& t) { return new_list(state->list_type, state, t.persistent()); });
}

Py_ssize_t tlist_length(PyObject* self) {
    return locked<Py_ssize_t>(self, -1, [](object_vector_transient& t) { return static_cast<Py_ssize_t>(t.size()); });
}

PyObject* tlist_subscript(PyObject* self, PyObject* key) {
    if (PySlice_Check(key)) {
        PyObject* snap = tlist_snapshot(self);
        if (!snap) return nullptr;
        PyObject* result = list_slice(snap, key);
        Py_DECREF(snap);
        return result;
    }
    if (!PyIndex_Check(key)) {
        PyErr_Format(PyExc_TypeError, "TransientList indices must be integers or slices, not %.200s",
                     Py_TYPE(key)->tp_name);
        return nullptr;
    }
    Py_ssize_t i;
    if (!index_value(key, &i)) return nullptr;
    return locked<PyObject*>(self, nullptr, [&](object_vector_transient& t) -> PyObject* {
        if (!normalise(i, t.size())) return index_error("TransientList index out of range");
        return Py_NewRef(t[static_cast<std::size_t>(i)]);
    });
}

int tlist_ass_subscript(PyObject* self, PyObject* key, PyObject* value) {
    if (!value) {
        PyErr_SetString(PyExc_TypeError, "TransientList does not support item deletion: use pop()");
        return -1;
    }
    if (!PyIndex_Check(key)) {
        PyErr_Format(PyExc_TypeError, "TransientList indices must be integers, not %.200s", Py_TYPE(key)->tp_name);
        return -1;
    }
    Py_ssize_t i;
    if (!index_value(key, &i)) return -1;
    return locked<int>(self, -1, [&](object_vector_transient& t) -> int {
        if (!normalise(i, t.size())) {
            index_error("TransientList assignment index out of range");
            return -1;
        }
        t.set(static_cast<std::size_t>(i), value);
        return 0;
    });
}

PyObject* tlist_iter(PyObject* self) {
    PyObject* snap = tlist_snapshot(self);
    if (!snap) return nullptr;
    PyObject* it = make_list_iterator(snap, false);
    Py_DECREF(snap);
    return it;
}

int tlist_contains(PyObject* self, PyObject* x) {
    PyObject* snap = tlist_snapshot(self);
    if (!snap) return -1;
    const int r = list_contains(snap, x);
    Py_DECREF(snap);
    return r;
}

PyObject* tlist_append(PyObject* self, PyObject* x) {
    return locked<PyObject*>(self, nullptr, [&](object_vector_transient& t) -> PyObject* {
        t.push_back(x);
        Py_RETURN_NONE;
    });
}

PyObject* tlist_extend(PyObject* self, PyObject* source) {
    // A transient source (this one included) is read through a snapshot taken first: it cannot
    // be read while this one is locked, and t.extend(t) must work like l.extend(l).
    PyObject* frozen = nullptr;
    if (is_tlist(source)) {
        frozen = tlist_snapshot(source);
        if (!frozen) return nullptr;
        source = frozen;
    }
    PyObject* result = locked<PyObject*>(self, nullptr, [&](object_vector_transient& t) -> PyObject* {
        if (!fill_vector(t, source)) return nullptr;
        Py_RETURN_NONE;
    });
    Py_XDECREF(frozen);
    return result;
}

PyObject* tlist_pop(PyObject* self, PyObject*) {
    return locked<PyObject*>(self, nullptr, [&](object_vector_transient& t) -> PyObject* {
        if (t.empty()) return index_error("pop from empty TransientList");
        PyObject* last = Py_NewRef(t.back());
        try {
            t.pop_back();
        } catch (...) {
            Py_DECREF(last);
            throw;
        }
        return last;
    });
}

PyObject* tlist_freeze(TransientListObject* obj, object_vector_transient& t) {
    return new_list(obj->state->list_type, obj->state, t.persistent());
}

PyObject* tlist_persistent(PyObject* self, PyObject*) {
    return finish_transient<TransientListObject>(self, "TransientList",
                                                 [&](object_vector_transient& t) { return tlist_freeze(as_tlist(self), t); });
}

PyObject* tlist_enter(PyObject* self, PyObject*) { return Py_NewRef(self); }

PyObject* tlist_exit(PyObject* self, PyObject* const*, Py_ssize_t nargs) {
    if (nargs != 3) return argument_count_error("TransientList.__exit__", "exactly 3 arguments", nargs);
    return exit_transient<TransientListObject>(self, "TransientList",
                                               [&](object_vector_transient& t) { return tlist_freeze(as_tlist(self), t); });
}

PyObject* tlist_repr(PyObject* self) { return repr_transient<TransientListObject>(self, "TransientList", tlist_snapshot); }

int tlist_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    TransientListObject* obj = as_tlist(self);
    if (const int r = visit_frozen<TransientListObject>(self, visit, arg)) return r;
    if (!obj->transient) return 0;
    // Never in the middle of a C++ edit, which calls no Python while nodes are half-built.
    const object_vector_transient& t = *obj->transient;
    const vector_node_traits::handle roots[2] = {{t.root(), t.shift()}, {t.tail(), 0}};
    return traverse_nodes<vector_node_traits>(self, obj->state, roots, 2, visit, arg);
}

int tlist_clear(PyObject* self) { return clear_transient<TransientListObject>(self); }

void tlist_dealloc(PyObject* self) { dealloc_transient<TransientListObject>(self, tlist_dealloc); }

PyObject* tlist_new(PyTypeObject*, PyObject*, PyObject*) {
    PyErr_SetString(PyExc_TypeError, "TransientList cannot be created directly: use PersistentList.transient()");
    return nullptr;
}

PyMethodDef tlist_methods[] = {
    {"append", tlist_append, METH_O, "append($self, value, /)\n--\n\nAppends value in place."},
    {"extend", tlist_extend, METH_O, "extend($self, values, /)\n--\n\nAppends the items of the iterable values in place."},
    {"pop", tlist_pop, METH_NOARGS,
     "pop($self, /)\n--\n\nRemoves the last element in place and returns it; IndexError if empty."},
    {"persistent", tlist_persistent, METH_NOARGS,
     "persistent($self, /)\n--\n\n"
     "Freezes the contents into a PersistentList in O(1) and finishes the transient.\n\n"
     "So does the end of its with-block: edits raise RuntimeError afterwards, and persistent()\n"
     "returns the same PersistentList again."},
    {"__enter__", tlist_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nThis transient; the end of the with-block finishes it as persistent() does."},
    {"__exit__", PP_FASTCALL(tlist_exit), METH_FASTCALL,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\n"
     "Finishes the transient as persistent() does; returns False (an exception propagates)."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef tlist_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TransientListObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot tlist_slots[] = {
    {Py_tp_doc, const_cast<char*>("TransientList()\n--\n\n"
                                  "A mutable builder made by PersistentList.transient(), not called directly.\n\n"
                                  "Appends, pops and item assignment in place; persistent() freezes the contents in O(1).")},
    {Py_tp_new, reinterpret_cast<void*>(tlist_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(tlist_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(tlist_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(tlist_clear)},
    {Py_tp_iter, reinterpret_cast<void*>(tlist_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(tlist_repr)},
    {Py_tp_methods, tlist_methods},
    {Py_tp_members, tlist_members},
    {Py_mp_length, reinterpret_cast<void*>(tlist_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(tlist_subscript)},
    {Py_mp_ass_subscript, reinterpret_cast<void*>(tlist_ass_subscript)},
    {Py_sq_contains, reinterpret_cast<void*>(tlist_contains)},
    {0, nullptr},
};

#undef PP_FASTCALL

}  // namespace

bool is_persistent_list(PyObject* o) noexcept { return is_list(o); }

PyType_Spec list_spec = {
    "pypersistent.PersistentList",
    static_cast<int>(sizeof(ListObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_SEQUENCE | Py_TPFLAGS_IMMUTABLETYPE,
    list_slots,
};

PyType_Spec transient_list_spec = {
    "pypersistent.TransientList",
    static_cast<int>(sizeof(TransientListObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    tlist_slots,
};

PyType_Spec list_iterator_spec = {
    "pypersistent.PersistentListIterator",
    static_cast<int>(sizeof(ListIteratorObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    list_iterator_slots,
};

}  // namespace pypersistent::python
