// PersistentSet (an immutable hash set, frozenset's API plus pypersistent 2.0's) and TransientSet
// (its mutable builder), on the CHAMP trie with key-only entries (persistent_set.hpp).
//
// Set algebra between two PersistentSets is structural: the trie walks skip subtrees that both
// sides share, so `s | s.add(x)` or `s.add(x) - s` costs O(log n). Any other iterable is read
// into a transient first (or walked element by element where that is cheaper), and operators
// accept any collections.abc.Set, as frozenset's do.
#include <new>
#include <utility>

#include "bindings.hpp"
#include "gc_census.hpp"
#include "transient_support.hpp"

namespace pypersistent::python {
namespace {

struct SetObject {
    PyObject_HEAD
    object_set set;
    // -1 until computed; racing threads compute and store the same value.
    std::atomic<Py_hash_t> hash;
    PyObject* weakreflist;
    module_state* state;
};

// Thread-safety as TransientObject's (bindings.hpp): a critical section around every operation,
// and `busy` refusing a second user while elements' __hash__/__eq__ suspend it.
struct TransientSetObject {
    PyObject_HEAD
    object_set_transient* transient;  // nullptr once finished
    PyObject* frozen;                 // the PersistentSet it was finished into
    bool busy;
    PyObject* weakreflist;
    module_state* state;
};

// Holds a strong reference to the set (a snapshot, for transients); next() as the map's.
struct SetIteratorObject {
    PyObject_HEAD
    PyObject* set;
    object_set::iterator cursor;
    Py_ssize_t remaining;
};

SetObject* as_set(PyObject* o) { return reinterpret_cast<SetObject*>(o); }
TransientSetObject* as_tset(PyObject* o) { return reinterpret_cast<TransientSetObject*>(o); }

void set_dealloc(PyObject* self);
void tset_dealloc(PyObject* self);

bool is_pset(PyObject* o) { return Py_TYPE(o)->tp_dealloc == set_dealloc; }
bool is_tset(PyObject* o) { return Py_TYPE(o)->tp_dealloc == tset_dealloc; }

PyObject* new_set(PyTypeObject* type, module_state* state, object_set&& set) {
    auto* s = reinterpret_cast<SetObject*>(type->tp_alloc(type, 0));
    if (!s) return nullptr;
    new (&s->set) object_set(std::move(set));
    new (&s->hash) std::atomic<Py_hash_t>(hash_not_computed);
    s->weakreflist = nullptr;
    s->state = state;
    return reinterpret_cast<PyObject*>(s);
}

// Returns the same object when the operation changed nothing.
PyObject* set_or_self(PyObject* self, object_set&& result) {
    SetObject* s = as_set(self);
    if (result.identical(s->set)) return Py_NewRef(self);
    return new_set(Py_TYPE(self), s->state, std::move(result));
}

// ---- reading Python input ----------------------------------------------------------------------

bool add_key(object_set_transient& t, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return false;
    t.insert_hashed(key, to_trie_hash(h));
    return true;
}

removal discard_key(object_set_transient& t, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return removal::error;
    return t.erase_hashed(key, to_trie_hash(h)) ? removal::removed : removal::absent;
}

// Calls each(item) for every item of `iterable` (a new reference each time, released after);
// each returns false with a Python error set to stop. Returns false on error.
template <class F>
bool for_each_item(PyObject* iterable, F&& each) {
    if (PyTuple_CheckExact(iterable)) {  // immutable: read in place
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(iterable); ++i) {
            PyObject* item = Py_NewRef(PyTuple_GET_ITEM(iterable, i));
            bool ok;
            try {
                ok = each(item);
            } catch (...) {
                Py_DECREF(item);
                throw;
            }
            Py_DECREF(item);
            if (!ok) return false;
        }
        return true;
    }
    PyObject* it = PyObject_GetIter(iterable);
    if (!it) return false;
    bool ok = true;
    try {
        while (ok) {
            PyObject* item = PyIter_Next(it);
            if (!item) break;
            try {
                ok = each(item);
            } catch (...) {
                Py_DECREF(item);
                throw;
            }
            Py_DECREF(item);
        }
    } catch (...) {
        Py_DECREF(it);
        throw;
    }
    Py_DECREF(it);
    return ok && !PyErr_Occurred();
}

// Adds every element of `iterable` to `t`; a PersistentSet's elements come with their hashes.
bool add_all(object_set_transient& t, PyObject* iterable) {
    if (is_pset(iterable)) {
        for (const auto& e : as_set(iterable)->set) t.insert_hashed(e.first, e.hash);
        return true;
    }
    return for_each_item(iterable, [&](PyObject* key) { return add_key(t, key); });
}

// The elements of `iterable` as a persistent set (`iterable` itself when it is one).
bool to_object_set(PyObject* iterable, object_set& out) {
    if (is_pset(iterable)) {
        out = as_set(iterable)->set;
        return true;
    }
    object_set_transient t;
    if (!add_all(t, iterable)) return false;
    out = t.persistent();
    return true;
}

// Whether `set` contains `key`.
truth set_has(const object_set& set, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return truth::error;
    return truth_of_bool(set.contains_hashed(key, to_trie_hash(h)));
}

// Whether operators take `o` as a set: frozenset's rule (set, frozenset, dict key views, and
// anything registered as collections.abc.Set).
truth is_set_like(PyObject* o) {
    if (is_pset(o) || PyAnySet_Check(o) || PyDictViewSet_Check(o)) return truth::yes;
    PyObject* abc = PyImport_ImportModule("collections.abc");
    if (!abc) return truth::error;
    PyObject* set_abc = PyObject_GetAttrString(abc, "Set");
    Py_DECREF(abc);
    if (!set_abc) return truth::error;
    const int r = PyObject_IsInstance(o, set_abc);
    Py_DECREF(set_abc);
    return truth_of(r);
}

// ---- construction -----------------------------------------------------------------------------

PyObject* build_set(PyTypeObject* type, PyObject* iterable) {
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    if (!iterable) return new_set(type, state, object_set());
    if (is_pset(iterable) && Py_TYPE(iterable) == type) return Py_NewRef(iterable);
    return guarded([&]() -> PyObject* {
        object_set set;
        if (!to_object_set(iterable, set)) return nullptr;
        return new_set(type, state, std::move(set));
    });
}

PyObject* set_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    if (kwargs && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "PersistentSet() takes no keyword arguments");
        return nullptr;
    }
    PyObject* iterable = nullptr;
    if (!PyArg_UnpackTuple(args, "PersistentSet", 0, 1, &iterable)) return nullptr;
    return build_set(type, iterable);
}

PyObject* set_create(PyObject* cls, PyObject* args) { return build_set(reinterpret_cast<PyTypeObject*>(cls), args); }

PyObject* set_from_iterable(PyObject* cls, PyObject* iterable) {
    return build_set(reinterpret_cast<PyTypeObject*>(cls), iterable);
}

// ---- protocols ----------------------------------------------------------------------------------

Py_ssize_t set_length(PyObject* self) { return static_cast<Py_ssize_t>(as_set(self)->set.size()); }

int set_contains(PyObject* self, PyObject* key) {
    try {
        return static_cast<int>(set_has(as_set(self)->set, key));
    } catch (const python_error&) {
        return -1;
    }
}

int set_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    const object_set_trie::node* root = as_set(self)->set.root();
    return traverse_nodes<set_node_traits>(self, as_set(self)->state, &root, 1, visit, arg);
}

PyObject* set_iter(PyObject* self) { return make_set_iterator(as_set(self)->state, self); }

// frozenset's hash, bit for bit (Objects/setobject.c), from the hashes the entries cache: equal
// sets hash equal, and a PersistentSet hashes as the equal frozenset does.
Py_hash_t set_hash(PyObject* self) {
    SetObject* s = as_set(self);
    const Py_hash_t cached = s->hash.load(std::memory_order_relaxed);
    if (cached != hash_not_computed) return cached;
    auto shuffle = [](Py_uhash_t h) -> Py_uhash_t { return ((h ^ 89869747UL) ^ (h << 16)) * 3644798167UL; };
    Py_uhash_t hash = 0;
    for (const auto& e : s->set) hash ^= shuffle(static_cast<Py_uhash_t>(e.hash));
    hash ^= (static_cast<Py_uhash_t>(s->set.size()) + 1) * 1927868237UL;
    hash ^= (hash >> 11) ^ (hash >> 25);
    hash = hash * 69069U + 907133923UL;
    if (hash == static_cast<Py_uhash_t>(-1)) hash = 590923713UL;
    const auto result = static_cast<Py_hash_t>(hash);
    s->hash.store(result, std::memory_order_relaxed);
    return result;
}

// Whether every element of `a` (an iterable) is in `b` (anything with __contains__).
truth all_in(PyObject* a, PyObject* b) {
    truth result = truth::yes;
    const bool ok = for_each_item(a, [&](PyObject* item) {
        const int r = PySequence_Contains(b, item);
        if (r < 0) return false;
        if (r == 0) {
            result = truth::no;
            return false;
        }
        return true;
    });
    if (!ok && PyErr_Occurred()) return truth::error;
    return result;
}

// not t (error stays error).
truth negated(truth t) noexcept {
    return t == truth::yes ? truth::no : t == truth::no ? truth::yes : truth::error;
}

// Comparisons as frozenset's: == and the subset orders, with any collections.abc.Set.
PyObject* set_richcompare(PyObject* self, PyObject* other, int op) {
    const truth set_like = is_set_like(other);
    if (set_like == truth::error) return nullptr;
    if (set_like == truth::no) Py_RETURN_NOTIMPLEMENTED;
    const object_set& mine = as_set(self)->set;
    if (is_pset(other)) {
        const object_set& theirs = as_set(other)->set;
        bool result = false;
        try {
            switch (op) {
                case Py_EQ: result = mine == theirs; break;
                case Py_NE: result = !(mine == theirs); break;
                case Py_LE: result = mine.is_subset_of(theirs); break;
                case Py_LT: result = mine.size() < theirs.size() && mine.is_subset_of(theirs); break;
                case Py_GE: result = theirs.is_subset_of(mine); break;
                case Py_GT: result = theirs.size() < mine.size() && theirs.is_subset_of(mine); break;
                default: Py_RETURN_NOTIMPLEMENTED;
            }
        } catch (const python_error&) {
            return nullptr;
        } catch (const std::bad_alloc&) {
            return PyErr_NoMemory();
        }
        return PyBool_FromLong(result);
    }
    const auto n = static_cast<Py_ssize_t>(mine.size());
    const Py_ssize_t m = PyObject_Size(other);
    if (m < 0) return nullptr;
    truth result = truth::no;
    switch (op) {
        case Py_EQ: result = n == m ? all_in(self, other) : truth::no; break;
        case Py_NE: result = negated(n == m ? all_in(self, other) : truth::no); break;
        case Py_LE: result = n <= m ? all_in(self, other) : truth::no; break;
        case Py_LT: result = n < m ? all_in(self, other) : truth::no; break;
        case Py_GE: result = n >= m ? all_in(other, self) : truth::no; break;
        case Py_GT: result = n > m ? all_in(other, self) : truth::no; break;
        default: Py_RETURN_NOTIMPLEMENTED;
    }
    return bool_or_null(result);
}

PyObject* set_repr(PyObject* self) {
    if (as_set(self)->set.empty()) return PyUnicode_FromString("PersistentSet()");
    const int entered = Py_ReprEnter(self);
    if (entered != 0) return entered > 0 ? PyUnicode_FromString("PersistentSet({...})") : nullptr;
    PyObject* result = nullptr;
    if (PyObject* parts = PyList_New(0)) {
        bool ok = true;
        for (const auto& e : as_set(self)->set) {
            PyObject* piece = PyObject_Repr(e.first);
            if (!piece || PyList_Append(parts, piece) < 0) ok = false;
            Py_XDECREF(piece);
            if (!ok) break;
        }
        if (ok) {
            PyObject* sep = PyUnicode_FromString(", ");
            PyObject* body = sep ? PyUnicode_Join(sep, parts) : nullptr;
            if (body) result = PyUnicode_FromFormat("PersistentSet({%U})", body);
            Py_XDECREF(body);
            Py_XDECREF(sep);
        }
        Py_DECREF(parts);
    }
    Py_ReprLeave(self);
    return result;
}

// ---- set algebra ------------------------------------------------------------------------------

enum class algebra { union_, intersection, difference, symmetric_difference };

// `acc` OP `other` for one operand; `other` is any iterable.
bool apply(object_set& acc, algebra op, PyObject* other) {
    if (is_pset(other)) {
        const object_set& theirs = as_set(other)->set;
        switch (op) {
            case algebra::union_: acc = acc.set_union(theirs); break;
            case algebra::intersection: acc = acc.set_intersection(theirs); break;
            case algebra::difference: acc = acc.set_difference(theirs); break;
            case algebra::symmetric_difference: acc = acc.set_symmetric_difference(theirs); break;
        }
        return true;
    }
    switch (op) {
        case algebra::union_: {
            object_set_transient t = acc.transient();
            if (!add_all(t, other)) return false;
            acc = t.persistent();
            return true;
        }
        case algebra::difference: {
            object_set_transient t = acc.transient();
            if (!for_each_item(other, [&](PyObject* key) { return discard_key(t, key) != removal::error; })) return false;
            acc = t.persistent();
            return true;
        }
        case algebra::intersection: {
            // Only what both hold: walk the iterable and keep its items found here (its own
            // objects, as frozenset.intersection keeps them).
            object_set_transient t;
            const object_set mine = acc;
            if (!for_each_item(other, [&](PyObject* key) {
                    const Py_hash_t h = key_hash(key);
                    if (h == -1) return false;
                    if (mine.contains_hashed(key, to_trie_hash(h))) t.insert_hashed(key, to_trie_hash(h));
                    return true;
                })) {
                return false;
            }
            acc = t.persistent();
            return true;
        }
        case algebra::symmetric_difference: {
            object_set theirs;
            if (!to_object_set(other, theirs)) return false;
            acc = acc.set_symmetric_difference(theirs);
            return true;
        }
    }
    return true;
}

PyObject* algebra_method(PyObject* self, PyObject* const* args, Py_ssize_t nargs, algebra op) {
    return guarded([&]() -> PyObject* {
        object_set acc = as_set(self)->set;
        for (Py_ssize_t i = 0; i < nargs; ++i) {
            if (!apply(acc, op, args[i])) return nullptr;
        }
        return set_or_self(self, std::move(acc));
    });
}

PyObject* set_union_method(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return algebra_method(self, args, nargs, algebra::union_);
}
PyObject* set_intersection_method(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return algebra_method(self, args, nargs, algebra::intersection);
}
PyObject* set_difference_method(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    return algebra_method(self, args, nargs, algebra::difference);
}
PyObject* set_symmetric_difference_method(PyObject* self, PyObject* other) {
    return algebra_method(self, &other, 1, algebra::symmetric_difference);
}

// self OP other or, reflected, other OP self (other any collections.abc.Set). The result is a
// PersistentSet either way.
PyObject* set_operator(PyObject* left, PyObject* right, algebra op) {
    const bool self_left = is_pset(left);
    PyObject* self = self_left ? left : right;
    PyObject* other = self_left ? right : left;
    const truth set_like = is_set_like(other);
    if (set_like == truth::error) return nullptr;
    if (set_like == truth::no) Py_RETURN_NOTIMPLEMENTED;
    if (self_left || op != algebra::difference) return algebra_method(self, &other, 1, op);
    // other - self: the items of other that self lacks.
    return guarded([&]() -> PyObject* {
        const object_set& mine = as_set(self)->set;
        object_set_transient t;
        if (!for_each_item(other, [&](PyObject* key) {
                const Py_hash_t h = key_hash(key);
                if (h == -1) return false;
                if (!mine.contains_hashed(key, to_trie_hash(h))) t.insert_hashed(key, to_trie_hash(h));
                return true;
            })) {
            return nullptr;
        }
        return new_set(Py_TYPE(self), as_set(self)->state, t.persistent());
    });
}

PyObject* set_or(PyObject* a, PyObject* b) { return set_operator(a, b, algebra::union_); }
PyObject* set_and(PyObject* a, PyObject* b) { return set_operator(a, b, algebra::intersection); }
PyObject* set_sub(PyObject* a, PyObject* b) { return set_operator(a, b, algebra::difference); }
PyObject* set_xor(PyObject* a, PyObject* b) { return set_operator(a, b, algebra::symmetric_difference); }

PyObject* set_issubset(PyObject* self, PyObject* other) {
    return guarded([&]() -> PyObject* {
        if (is_set_like(other) == truth::yes && !is_pset(other)) {  // membership in place, no copy
            const Py_ssize_t m = PyObject_Size(other);
            if (m < 0) return nullptr;
            if (static_cast<std::size_t>(m) < as_set(self)->set.size()) Py_RETURN_FALSE;
            return bool_or_null(all_in(self, other));
        }
        if (PyErr_Occurred()) return nullptr;
        object_set theirs;
        if (!to_object_set(other, theirs)) return nullptr;
        return PyBool_FromLong(as_set(self)->set.is_subset_of(theirs));
    });
}

PyObject* set_issuperset(PyObject* self, PyObject* other) {
    return guarded([&]() -> PyObject* {
        if (is_pset(other)) return PyBool_FromLong(as_set(other)->set.is_subset_of(as_set(self)->set));
        return bool_or_null(all_in(other, self));
    });
}

PyObject* set_isdisjoint(PyObject* self, PyObject* other) {
    return guarded([&]() -> PyObject* {
        const object_set& mine = as_set(self)->set;
        if (is_pset(other)) return PyBool_FromLong(mine.is_disjoint_from(as_set(other)->set));
        bool disjoint = true;
        const bool ok = for_each_item(other, [&](PyObject* key) {
            const truth r = set_has(mine, key);
            if (r == truth::error) return false;
            if (r == truth::yes) {
                disjoint = false;
                return false;
            }
            return true;
        });
        if (!ok && PyErr_Occurred()) return nullptr;
        return PyBool_FromLong(disjoint);
    });
}

// ---- methods ----------------------------------------------------------------------------------

PyObject* set_add(PyObject* self, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return nullptr;
    return guarded([&] { return set_or_self(self, as_set(self)->set.insert_hashed(key, to_trie_hash(h))); });
}

// pypersistent 2.0's remove() and disj() both return the set unchanged for an absent element.
PyObject* set_discard(PyObject* self, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return nullptr;
    return guarded([&] { return set_or_self(self, as_set(self)->set.erase_hashed(key, to_trie_hash(h))); });
}

PyObject* set_contains_method(PyObject* self, PyObject* key) {
    const int r = set_contains(self, key);
    return r < 0 ? nullptr : PyBool_FromLong(r);
}

PyObject* set_clear(PyObject* self, PyObject*) {
    if (as_set(self)->set.empty()) return Py_NewRef(self);
    return new_set(Py_TYPE(self), as_set(self)->state, object_set());
}

PyObject* set_copy(PyObject* self, PyObject*) { return Py_NewRef(self); }

// The elements as a list, in iteration order; the walk stops at the trie's end.
PyObject* set_list(PyObject* self, PyObject*) {
    const object_set& set = as_set(self)->set;
    const auto n = static_cast<Py_ssize_t>(set.size());
    PyObject* list = PyList_New(n);
    if (!list) return nullptr;
    Py_ssize_t i = 0;
    for (const auto& e : set) {
        if (i == n) break;
        PyList_SET_ITEM(list, i++, Py_NewRef(e.first));
    }
    if (i != n && PyList_SetSlice(list, i, n, nullptr) < 0) {
        Py_DECREF(list);
        return nullptr;
    }
    return list;
}

PyObject* set_reduce(PyObject* self, PyObject*) { return reduce_to(Py_TYPE(self), set_list(self, nullptr)); }

PyObject* set_deepcopy(PyObject* self, PyObject* memo) {
    return deepcopy_through(Py_TYPE(self), set_list(self, nullptr), memo);
}

PyObject* new_transient_set(module_state* state, object_set_transient&& t) {
    return new_transient<TransientSetObject>(state->transient_set_type, state, new object_set_transient(std::move(t)));
}

PyObject* set_transient(PyObject* self, PyObject*) {
    return guarded([&] { return new_transient_set(as_set(self)->state, as_set(self)->set.transient()); });
}

template <PyObject* (*F)(PyObject*, PyObject* const*, Py_ssize_t)>
constexpr PyCFunction fastcall() {
    return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(F));
}

// old.diff(new): SetDiff(added, removed), two PersistentSets: the elements only new has and
// the elements only old has. Shared subtrees are skipped; no element is hashed again.
PyObject* set_diff(PyObject* self, PyObject* other) {
    if (!is_set(other)) {
        PyErr_Format(PyExc_TypeError, "PersistentSet.diff() argument must be a PersistentSet, not %.200s",
                     Py_TYPE(other)->tp_name);
        return nullptr;
    }
    module_state* state = as_set(self)->state;
    return guarded([&]() -> PyObject* {
        struct collector {
            object_set_transient added_keys, removed_keys;
            void added(const object_set::value_type& e) { added_keys.insert_hashed(e.first, e.hash); }
            void removed(const object_set::value_type& e) { removed_keys.insert_hashed(e.first, e.hash); }
        } found;
        as_set(self)->set.diff(as_set(other)->set, found);
        PyObject* result = PyStructSequence_New(state->set_diff_type);
        if (!result) return nullptr;
        object_set_transient* parts[] = {&found.added_keys, &found.removed_keys};
        for (Py_ssize_t i = 0; i < 2; ++i) {
            PyObject* part = new_set(state->set_type, state, parts[i]->persistent());
            if (!part) {
                Py_DECREF(result);
                return nullptr;
            }
            PyStructSequence_SetItem(result, i, part);
        }
        return result;
    });
}

PyMethodDef set_methods[] = {
    {"diff", set_diff, METH_O,
     "diff($self, other, /)\n--\n\n"
     "What changed from this set to other: SetDiff(added, removed), two PersistentSets.\n\n"
     "Subtrees the two sets share are skipped, so versions derived from each other by k updates\n"
     "are compared in about k log n steps, whatever their size."},
    {"add", set_add, METH_O, "add($self, x, /)\n--\n\nA new set with x added (this set if x is in it)."},
    {"conj", set_add, METH_O, "conj($self, x, /)\n--\n\nA new set with x added (same as add())."},
    {"discard", set_discard, METH_O, "discard($self, x, /)\n--\n\nA new set without x (this set if x is absent)."},
    {"disj", set_discard, METH_O, "disj($self, x, /)\n--\n\nA new set without x (same as discard())."},
    {"remove", set_discard, METH_O,
     "remove($self, x, /)\n--\n\n"
     "A new set without x (same as discard(): as in pypersistent 2.0, an absent x is not an error)."},
    {"contains", set_contains_method, METH_O, "contains($self, x, /)\n--\n\nWhether x is in the set (same as x in self)."},
    {"union", fastcall<set_union_method>(), METH_FASTCALL,
     "union($self, /, *iterables)\n--\n\nA new set with the elements of this set and of every iterable."},
    {"update", fastcall<set_union_method>(), METH_FASTCALL,
     "update($self, /, *iterables)\n--\n\nA new set with the elements of every iterable added (same as union())."},
    {"intersection", fastcall<set_intersection_method>(), METH_FASTCALL,
     "intersection($self, /, *iterables)\n--\n\nA new set with the elements common to this set and every iterable."},
    {"difference", fastcall<set_difference_method>(), METH_FASTCALL,
     "difference($self, /, *iterables)\n--\n\nA new set with the elements of this set that no iterable has."},
    {"symmetric_difference", set_symmetric_difference_method, METH_O,
     "symmetric_difference($self, iterable, /)\n--\n\nA new set with the elements in exactly one of this set and iterable."},
    {"issubset", set_issubset, METH_O,
     "issubset($self, iterable, /)\n--\n\nWhether every element of this set is in iterable."},
    {"issuperset", set_issuperset, METH_O,
     "issuperset($self, iterable, /)\n--\n\nWhether every element of iterable is in this set."},
    {"isdisjoint", set_isdisjoint, METH_O,
     "isdisjoint($self, iterable, /)\n--\n\nWhether this set and iterable have no element in common."},
    {"clear", set_clear, METH_NOARGS, "clear($self, /)\n--\n\nAn empty set."},
    {"copy", set_copy, METH_NOARGS, "copy($self, /)\n--\n\nThis set itself: it is immutable."},
    {"list", set_list, METH_NOARGS, "list($self, /)\n--\n\nA list of the elements, in iteration order."},
    {"__copy__", set_copy, METH_NOARGS, "__copy__($self, /)\n--\n\nThis set itself: it is immutable."},
    {"__deepcopy__", set_deepcopy, METH_O,
     "__deepcopy__($self, memo, /)\n--\n\nA set of deep copies of the elements."},
    {"__reduce__", set_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickling support: the set is rebuilt from its elements."},
    {"__sizeof__", object_sizeof, METH_NOARGS, sizeof_doc},
    {"transient", set_transient, METH_NOARGS,
     "transient($self, /)\n--\n\n"
     "A TransientSet (a mutable builder) starting from this set; its persistent() freezes it in O(1)."},
    {"create", set_create, METH_VARARGS | METH_CLASS, "create($type, /, *elements)\n--\n\nA set of the arguments."},
    {"from_iterable", set_from_iterable, METH_O | METH_CLASS,
     "from_iterable($type, iterable, /)\n--\n\nA set of the elements of iterable."},
    {"from_list", set_from_iterable, METH_O | METH_CLASS,
     "from_list($type, iterable, /)\n--\n\nA set of the elements of iterable (same as from_iterable())."},
    {"from_set", set_from_iterable, METH_O | METH_CLASS,
     "from_set($type, iterable, /)\n--\n\nA set of the elements of iterable (same as from_iterable())."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef set_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SetObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

const char set_doc[] =
    "PersistentSet(iterable=(), /)\n--\n\n"
    "An immutable hash set (a hash array mapped trie) with frozenset's API.\n\n"
    "Every update returns\n"
    "a new set that shares all untouched structure with the old one; sets may be shared between\n"
    "threads freely. Set algebra between PersistentSets skips the structure both share.";

PyType_Slot set_slots[] = {
    {Py_tp_doc, const_cast<char*>(set_doc)},
    {Py_tp_new, reinterpret_cast<void*>(set_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(set_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(set_traverse)},
    {Py_tp_hash, reinterpret_cast<void*>(set_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(set_richcompare)},
    {Py_tp_iter, reinterpret_cast<void*>(set_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(set_repr)},
    {Py_tp_methods, set_methods},
    {Py_tp_members, set_members},
    {Py_sq_length, reinterpret_cast<void*>(set_length)},
    {Py_sq_contains, reinterpret_cast<void*>(set_contains)},
    {Py_nb_or, reinterpret_cast<void*>(set_or)},
    {Py_nb_and, reinterpret_cast<void*>(set_and)},
    {Py_nb_subtract, reinterpret_cast<void*>(set_sub)},
    {Py_nb_xor, reinterpret_cast<void*>(set_xor)},
    {0, nullptr},
};

void set_dealloc(PyObject* self) {
    dealloc_structure<SetObject>(self, set_dealloc, [](SetObject& s) {
        s.set.~object_set();
        s.hash.~atomic();
    });
}

// ---- TransientSet -----------------------------------------------------------------------------

template <class R, class F>
R locked(PyObject* self, R failed, F&& body) {
    return locked_transient<TransientSetObject>(self, "TransientSet", failed, std::forward<F>(body));
}

Py_ssize_t tset_length(PyObject* self) {
    return locked<Py_ssize_t>(self, -1, [](object_set_transient& t) { return static_cast<Py_ssize_t>(t.size()); });
}

int tset_contains(PyObject* self, PyObject* key) {
    return locked<int>(self, -1, [&](object_set_transient& t) -> int {
        const Py_hash_t h = key_hash(key);
        if (h == -1) return -1;
        return t.contains_hashed(key, to_trie_hash(h)) ? 1 : 0;
    });
}

PyObject* tset_contains_method(PyObject* self, PyObject* key) {
    const int r = tset_contains(self, key);
    return r < 0 ? nullptr : PyBool_FromLong(r);
}

// A persistent snapshot of the current contents (O(1)); later edits copy what they touch.
PyObject* tset_snapshot(PyObject* self) {
    module_state* state = as_tset(self)->state;
    return locked<PyObject*>(
        self, nullptr, [&](object_set_transient& t) { return new_set(state->set_type, state, t.persistent()); });
}

PyObject* tset_iter(PyObject* self) {
    PyObject* snap = tset_snapshot(self);
    if (!snap) return nullptr;
    PyObject* it = make_set_iterator(as_tset(self)->state, snap);
    Py_DECREF(snap);
    return it;
}

PyObject* tset_add(PyObject* self, PyObject* key) {
    return locked<PyObject*>(self, nullptr,
                             [&](object_set_transient& t) { return add_key(t, key) ? Py_NewRef(self) : nullptr; });
}

PyObject* tset_discard(PyObject* self, PyObject* key) {
    return locked<PyObject*>(
        self, nullptr, [&](object_set_transient& t) { return discard_key(t, key) != removal::error ? Py_NewRef(self) : nullptr; });
}

// As set.remove: KeyError for an absent element.
PyObject* tset_remove(PyObject* self, PyObject* key) {
    return locked<PyObject*>(self, nullptr, [&](object_set_transient& t) -> PyObject* {
        const removal removed = discard_key(t, key);
        if (removed == removal::absent) set_key_error(key);
        return removed == removal::removed ? Py_NewRef(self) : nullptr;
    });
}

PyObject* tset_update(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    for (Py_ssize_t i = 0; i < nargs; ++i) {
        // A transient source (this one included) is read through a snapshot taken first.
        PyObject* source = args[i];
        PyObject* frozen = nullptr;
        if (is_tset(source)) {
            frozen = tset_snapshot(source);
            if (!frozen) return nullptr;
            source = frozen;
        }
        PyObject* r = locked<PyObject*>(
            self, nullptr, [&](object_set_transient& t) { return add_all(t, source) ? Py_NewRef(self) : nullptr; });
        Py_XDECREF(frozen);
        if (!r) return nullptr;
        Py_DECREF(r);
    }
    return Py_NewRef(self);
}

PyObject* tset_freeze(TransientSetObject* obj, object_set_transient& t) {
    return new_set(obj->state->set_type, obj->state, t.persistent());
}

PyObject* tset_persistent(PyObject* self, PyObject*) {
    return finish_transient<TransientSetObject>(self, "TransientSet", [&](object_set_transient& t) { return tset_freeze(as_tset(self), t); });
}

PyObject* tset_enter(PyObject* self, PyObject*) { return Py_NewRef(self); }

PyObject* tset_exit(PyObject* self, PyObject* const*, Py_ssize_t nargs) {
    if (nargs != 3) return argument_count_error("TransientSet.__exit__", "exactly 3 arguments", nargs);
    return exit_transient<TransientSetObject>(self, "TransientSet", [&](object_set_transient& t) { return tset_freeze(as_tset(self), t); });
}

PyObject* tset_repr(PyObject* self) { return repr_transient<TransientSetObject>(self, "TransientSet", tset_snapshot); }

int tset_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    TransientSetObject* obj = as_tset(self);
    if (const int r = visit_frozen<TransientSetObject>(self, visit, arg)) return r;
    if (!obj->transient) return 0;
    const object_set_trie::node* root = obj->transient->root();
    return traverse_nodes<set_node_traits>(self, obj->state, &root, 1, visit, arg);
}

int tset_clear(PyObject* self) { return clear_transient<TransientSetObject>(self); }

PyObject* tset_new(PyTypeObject*, PyObject*, PyObject*) {
    PyErr_SetString(PyExc_TypeError, "TransientSet cannot be created directly: use PersistentSet.transient()");
    return nullptr;
}

PyMethodDef tset_methods[] = {
    {"add", tset_add, METH_O, "add($self, x, /)\n--\n\nAdds x in place; returns this transient."},
    {"conj", tset_add, METH_O, "conj($self, x, /)\n--\n\nAdds x in place; returns this transient (same as add())."},
    {"discard", tset_discard, METH_O, "discard($self, x, /)\n--\n\nRemoves x in place if present; returns this transient."},
    {"disj", tset_discard, METH_O,
     "disj($self, x, /)\n--\n\nRemoves x in place if present; returns this transient (same as discard())."},
    {"remove", tset_remove, METH_O,
     "remove($self, x, /)\n--\n\nRemoves x in place; returns this transient. KeyError if x is absent."},
    {"contains", tset_contains_method, METH_O,
     "contains($self, x, /)\n--\n\nWhether x is in the transient (same as x in self)."},
    {"update", fastcall<tset_update>(), METH_FASTCALL,
     "update($self, /, *iterables)\n--\n\nAdds the elements of every iterable in place; returns this transient."},
    {"persistent", tset_persistent, METH_NOARGS,
     "persistent($self, /)\n--\n\n"
     "Freezes the contents into a PersistentSet in O(1) and finishes the transient.\n\n"
     "So does the end of its with-block: edits raise RuntimeError afterwards, and persistent()\n"
     "returns the same PersistentSet again."},
    {"__enter__", tset_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nThis transient; the end of the with-block finishes it as persistent() does."},
    {"__exit__", fastcall<tset_exit>(), METH_FASTCALL,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\n"
     "Finishes the transient as persistent() does; returns False (an exception propagates)."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef tset_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TransientSetObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot tset_slots[] = {
    {Py_tp_doc, const_cast<char*>("TransientSet()\n--\n\n"
                                  "A mutable builder made by PersistentSet.transient(), not called directly.\n\n"
                                  "Adds and removes elements in place; persistent() freezes the contents in O(1).")},
    {Py_tp_new, reinterpret_cast<void*>(tset_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(tset_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(tset_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(tset_clear)},
    {Py_tp_iter, reinterpret_cast<void*>(tset_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(tset_repr)},
    {Py_tp_methods, tset_methods},
    {Py_tp_members, tset_members},
    {Py_sq_length, reinterpret_cast<void*>(tset_length)},
    {Py_sq_contains, reinterpret_cast<void*>(tset_contains)},
    {0, nullptr},
};

void tset_dealloc(PyObject* self) { dealloc_transient<TransientSetObject>(self, tset_dealloc); }

// ---- iterator -----------------------------------------------------------------------------------

SetIteratorObject* as_set_iterator(PyObject* o) { return reinterpret_cast<SetIteratorObject*>(o); }

// The cursor moves under the critical section and nothing there allocates or runs Python, so
// threads sharing one iterator each get distinct elements. It stops at the trie's end.
PyObject* set_iterator_next(PyObject* self) {
    SetIteratorObject* it = as_set_iterator(self);
    PyObject* key = nullptr;
    static const object_set::iterator end_of_trie;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (it->cursor != end_of_trie) {
        key = Py_NewRef((*it->cursor).first);
        ++it->cursor;
        if (it->remaining > 0) --it->remaining;
    }
    Py_END_CRITICAL_SECTION();
    return key;
}

PyObject* set_iterator_length_hint(PyObject* self, PyObject*) {
    Py_ssize_t n;
    Py_BEGIN_CRITICAL_SECTION(self);
    n = as_set_iterator(self)->remaining;
    Py_END_CRITICAL_SECTION();
    return PyLong_FromSsize_t(n);
}

int set_iterator_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(as_set_iterator(self)->set);
    return 0;
}

void set_iterator_dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    using cursor_type = object_set::iterator;
    as_set_iterator(self)->cursor.~cursor_type();
    Py_XDECREF(as_set_iterator(self)->set);
    type->tp_free(self);
    Py_DECREF(type);
}

PyMethodDef set_iterator_methods[] = {
    {"__length_hint__", set_iterator_length_hint, METH_NOARGS, length_hint_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot set_iterator_slots[] = {
    {Py_tp_doc, const_cast<char*>("An iterator over the elements of a PersistentSet or TransientSet.")},
    {Py_tp_dealloc, reinterpret_cast<void*>(set_iterator_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(set_iterator_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(PyObject_SelfIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(set_iterator_next)},
    {Py_tp_methods, set_iterator_methods},
    {0, nullptr},
};

}  // namespace

bool is_set(PyObject* o) noexcept { return is_pset(o); }

PyObject* make_set_iterator(module_state* state, PyObject* set) {
    PyTypeObject* type = state->set_iterator_type;
    auto* it = reinterpret_cast<SetIteratorObject*>(type->tp_alloc(type, 0));
    if (!it) return nullptr;
    it->set = Py_NewRef(set);
    new (&it->cursor) object_set::iterator(as_set(set)->set.begin());
    it->remaining = static_cast<Py_ssize_t>(as_set(set)->set.size());
    return reinterpret_cast<PyObject*>(it);
}

PyType_Spec set_spec = {
    "pypersistent.PersistentSet",
    static_cast<int>(sizeof(SetObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    set_slots,
};

PyType_Spec transient_set_spec = {
    "pypersistent.TransientSet",
    static_cast<int>(sizeof(TransientSetObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    tset_slots,
};

PyType_Spec set_iterator_spec = {
    "pypersistent.PersistentSetIterator",
    static_cast<int>(sizeof(SetIteratorObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    set_iterator_slots,
};

}  // namespace pypersistent::python
