// PersistentMap: the immutable map type. Its slots and methods are the hot paths; they read
// `self` as a MapObject directly.
#include <cstring>
#include <new>
#include <utility>

#include "bindings.hpp"
#include "fill_support.hpp"
#include "transient_support.hpp"

namespace pypersistent::python {
namespace {

MapObject* as_map(PyObject* o) { return reinterpret_cast<MapObject*>(o); }

bool is_mapping(PyObject* o) { return PyType_HasFeature(Py_TYPE(o), Py_TPFLAGS_MAPPING); }

// Returns the same object when the update changed nothing.
PyObject* map_or_self(PyObject* self, object_map&& result) {
    MapObject* m = as_map(self);
    if (result.identical(m->map)) return Py_NewRef(self);
    return new_map(Py_TYPE(self), m->state, std::move(result));
}

// ---- construction ------------------------------------------------------------------------

PyObject* build_map(PyTypeObject* type, PyObject* source, PyObject* kwargs) {
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    if (source && is_map(source) && (!kwargs || PyDict_GET_SIZE(kwargs) == 0) && Py_TYPE(source) == type) {
        return Py_NewRef(source);
    }
    return guarded([&]() -> PyObject* {
        object_transient t;
        if (!fill_transient(t, source, kwargs)) return nullptr;
        return new_map(type, state, t.persistent());
    });
}

PyObject* map_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    PyObject* source = nullptr;
    if (!PyArg_UnpackTuple(args, "PersistentMap", 0, 1, &source)) return nullptr;
    return build_map(type, source, kwargs);
}

void map_dealloc(PyObject* self);

// ---- protocols ---------------------------------------------------------------------------

Py_ssize_t map_length(PyObject* self) { return static_cast<Py_ssize_t>(as_map(self)->map.size()); }

PyObject* map_subscript(PyObject* self, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return nullptr;
    return guarded([&]() -> PyObject* {
        PyObject* const* v = as_map(self)->map.find_hashed(key, to_trie_hash(h));
        if (!v) {
            set_key_error(key);
            return nullptr;
        }
        return Py_NewRef(*v);
    });
}

int map_contains(PyObject* self, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return -1;
    try {
        return as_map(self)->map.find_hashed(key, to_trie_hash(h)) != nullptr;
    } catch (const python_error&) {
        return -1;
    }
}

int map_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    return traverse_trie(self, as_map(self)->state, as_map(self)->map.root(), visit, arg);
}

PyObject* map_iter(PyObject* self) { return make_iterator(as_map(self)->state, as_map(self), view_kind::keys); }

// Equal maps must hash equal whatever their history, so entries are combined with a
// commutative sum of well-mixed per-entry values (as frozenset does).
Py_hash_t map_hash(PyObject* self) {
    MapObject* m = as_map(self);
    const Py_hash_t cached = m->hash.load(std::memory_order_relaxed);
    if (cached != hash_not_computed) return cached;
    // Values may be maps nested arbitrarily deep: RecursionError, not a C stack overflow.
    if (Py_EnterRecursiveCall(" while hashing a PersistentMap")) return -1;
    std::uint64_t acc = 0x345678u + m->map.size() * 0x9E3779B97F4A7C15ull;
    for (const auto& e : m->map) {
        const Py_hash_t hv = PyObject_Hash(e.second);
        if (hv == -1) {
            Py_LeaveRecursiveCall();
            return -1;
        }
        std::uint64_t x = e.hash ^ (static_cast<std::uint64_t>(hv) * 0xBF58476D1CE4E5B9ull);
        x ^= x >> 31;
        x *= 0x94D049BB133111EBull;
        x ^= x >> 29;
        acc += x;
    }
    Py_LeaveRecursiveCall();
    Py_hash_t result = static_cast<Py_hash_t>(acc);
    if (result == -1) result = -2;
    m->hash.store(result, std::memory_order_relaxed);
    return result;
}

// What comparing a map with another object found.
enum class equality : int {
    error = -1,          // a Python error is set
    unequal = 0,
    equal = 1,
    not_comparable = -2, // not a mapping: NotImplemented
};

// CPython's -1/0/1 result (PyObject_RichCompareBool, PyDict_GetItemRef) as an equality.
equality equality_of(int r) noexcept { return r < 0 ? equality::error : r == 0 ? equality::unequal : equality::equal; }

equality map_equals(MapObject* a, PyObject* other) {
    if (is_map(other)) {
        try {
            return a->map == as_map(other)->map ? equality::equal : equality::unequal;
        } catch (const python_error&) {
            return equality::error;
        }
    }
    if (!is_mapping(other)) return equality::not_comparable;
    const Py_ssize_t other_len = PyObject_Size(other);
    if (other_len < 0) return equality::error;
    if (static_cast<std::size_t>(other_len) != a->map.size()) return equality::unequal;
    const bool exact_dict = PyDict_CheckExact(other);
    for (const auto& e : a->map) {
        PyObject* theirs;
        if (exact_dict) {
#if PY_VERSION_HEX >= 0x030D0000
            // A strong reference taken atomically: another thread may replace the value.
            const int found = PyDict_GetItemRef(other, e.first, &theirs);
            if (found <= 0) return equality_of(found);
#else
            theirs = PyDict_GetItemWithError(other, e.first);
            if (!theirs) return PyErr_Occurred() ? equality::error : equality::unequal;
            Py_INCREF(theirs);
#endif
        } else {
            theirs = PyObject_GetItem(other, e.first);
            if (!theirs) {
                if (PyErr_ExceptionMatches(PyExc_KeyError)) {
                    PyErr_Clear();
                    return equality::unequal;
                }
                return equality::error;
            }
        }
        const int same = PyObject_RichCompareBool(e.second, theirs, Py_EQ);
        Py_DECREF(theirs);
        if (same <= 0) return equality_of(same);
    }
    return equality::equal;
}

PyObject* map_richcompare(PyObject* self, PyObject* other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    const equality eq = map_equals(as_map(self), other);
    if (eq == equality::error) return nullptr;
    if (eq == equality::not_comparable) Py_RETURN_NOTIMPLEMENTED;
    return PyBool_FromLong((op == Py_EQ) == (eq == equality::equal));
}

PyObject* map_repr(PyObject* self) {
    const int entered = Py_ReprEnter(self);
    if (entered != 0) return entered > 0 ? PyUnicode_FromString("PersistentMap({...})") : nullptr;
    PyObject* parts = PyList_New(0);
    PyObject* result = nullptr;
    if (parts) {
        bool ok = true;
        for (const auto& e : as_map(self)->map) {
            PyObject* piece = PyUnicode_FromFormat("%R: %R", e.first, e.second);
            if (!piece || PyList_Append(parts, piece) < 0) ok = false;
            Py_XDECREF(piece);
            if (!ok) break;
        }
        if (ok) {
            PyObject* sep = PyUnicode_FromString(", ");
            PyObject* body = sep ? PyUnicode_Join(sep, parts) : nullptr;
            if (body) result = PyUnicode_FromFormat("PersistentMap({%U})", body);
            Py_XDECREF(body);
            Py_XDECREF(sep);
        }
        Py_DECREF(parts);
    }
    Py_ReprLeave(self);
    return result;
}

// self | other, other | self
PyObject* map_or(PyObject* left, PyObject* right) {
    if (is_map(left)) {
        if (!is_mapping(right)) Py_RETURN_NOTIMPLEMENTED;
        MapObject* m = as_map(left);
        if (is_map(right)) return guarded([&] { return map_or_self(left, m->map.merge(as_map(right)->map)); });
        return guarded([&]() -> PyObject* {
            object_transient t = m->map.transient();
            if (!fill_transient(t, right, nullptr)) return nullptr;
            return map_or_self(left, t.persistent());
        });
    }
    if (!is_mapping(left)) Py_RETURN_NOTIMPLEMENTED;
    MapObject* m = as_map(right);
    return guarded([&]() -> PyObject* {
        object_transient t;
        if (!fill_transient(t, left, nullptr)) return nullptr;
        t.merge(m->map);
        return new_map(Py_TYPE(right), m->state, t.persistent());
    });
}

// ---- methods -------------------------------------------------------------------------------

// assoc() and set(); `name` is the one called, for errors (PP_NAMED_FASTCALL).
PyObject* map_assoc(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs != 2) return argument_count_error(name, "exactly 2 arguments", nargs);
    const Py_hash_t h = key_hash(args[0]);
    if (h == -1) return nullptr;
    return guarded([&] { return map_or_self(self, as_map(self)->map.set_hashed(args[0], args[1], to_trie_hash(h))); });
}

PyObject* map_dissoc(PyObject* self, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return nullptr;
    return guarded([&] { return map_or_self(self, as_map(self)->map.erase_hashed(key, to_trie_hash(h))); });
}

PyObject* map_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("PersistentMap.get", "1 or 2 arguments", nargs);
    const Py_hash_t h = key_hash(args[0]);
    if (h == -1) return nullptr;
    return guarded([&]() -> PyObject* {
        PyObject* const* v = as_map(self)->map.find_hashed(args[0], to_trie_hash(h));
        if (v) return Py_NewRef(*v);
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    });
}

PyObject* map_contains_method(PyObject* self, PyObject* key) {
    const int r = map_contains(self, key);
    if (r < 0) return nullptr;
    return PyBool_FromLong(r);
}

// update() and merge(); `name` is the one called, for errors (PP_NAMED_KEYWORDS).
PyObject* map_update(PyObject* self, PyObject* args, PyObject* kwargs, const char* name) {
    const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) return argument_count_error(name, "at most 1 argument", nargs);
    PyObject* source = nargs == 1 ? PyTuple_GET_ITEM(args, 0) : nullptr;
    MapObject* m = as_map(self);
    const bool no_kwargs = !kwargs || PyDict_GET_SIZE(kwargs) == 0;
    if (no_kwargs && source && is_map(source)) {
        return guarded([&] { return map_or_self(self, m->map.merge(as_map(source)->map)); });
    }
    return guarded([&]() -> PyObject* {
        object_transient t = m->map.transient();
        if (!fill_transient(t, source, kwargs)) return nullptr;
        return map_or_self(self, t.persistent());
    });
}

// old.diff(new): MapDiff(added, removed, changed), three PersistentMaps: the entries only new
// has, the entries only old has, and key -> (old value, new value) for the keys whose values
// are neither the same object nor equal. Shared subtrees are skipped (persistent_map::diff), and
// the entries' cached hashes are reused: no key is hashed again.
PyObject* map_diff(PyObject* self, PyObject* other) {
    if (!is_map(other)) {
        PyErr_Format(PyExc_TypeError, "PersistentMap.diff() argument must be a PersistentMap, not %.200s",
                     Py_TYPE(other)->tp_name);
        return nullptr;
    }
    module_state* state = as_map(self)->state;
    return guarded([&]() -> PyObject* {
        struct collector {
            object_transient added_entries, removed_entries, changed_entries;
            void added(const object_map::value_type& e) { added_entries.set_hashed(e.first, e.second, e.hash); }
            void removed(const object_map::value_type& e) { removed_entries.set_hashed(e.first, e.second, e.hash); }
            void changed(const object_map::value_type& a, const object_map::value_type& b) {
                PyObject* pair = PyTuple_Pack(2, a.second, b.second);
                if (!pair) throw python_error{};
                try {
                    changed_entries.set_hashed(a.first, pair, a.hash);
                } catch (...) {
                    Py_DECREF(pair);
                    throw;
                }
                Py_DECREF(pair);
            }
        } found;
        as_map(self)->map.diff(as_map(other)->map, found);
        PyObject* result = PyStructSequence_New(state->map_diff_type);
        if (!result) return nullptr;
        object_transient* parts[] = {&found.added_entries, &found.removed_entries, &found.changed_entries};
        for (Py_ssize_t i = 0; i < 3; ++i) {
            PyObject* part = new_map(state->map_type, state, parts[i]->persistent());
            if (!part) {
                Py_DECREF(result);
                return nullptr;
            }
            PyStructSequence_SetItem(result, i, part);
        }
        return result;
    });
}

// to_shared(): SharedMap(self), the interpreter-neutral copy (O(n); TypeError for contents a
// SharedMap cannot hold).
PyObject* map_to_shared(PyObject* self, PyObject*) {
    return PyObject_CallOneArg(reinterpret_cast<PyObject*>(as_map(self)->state->shared_map_type), self);
}

PyObject* map_clear(PyObject* self, PyObject*) {
    if (as_map(self)->map.empty()) return Py_NewRef(self);
    return new_map(Py_TYPE(self), as_map(self)->state, object_map());
}

PyObject* map_copy(PyObject* self, PyObject*) { return Py_NewRef(self); }

// A list made of one item per entry, in iteration order (`make` returns a new reference or
// nullptr). Sized up front; the walk stops at the trie's end whatever the count says.
template <class Make>
PyObject* entries_list(PyObject* self, Make make) {
    const object_map& map = as_map(self)->map;
    const auto n = static_cast<Py_ssize_t>(map.size());
    PyObject* list = PyList_New(n);
    if (!list) return nullptr;
    Py_ssize_t i = 0;
    for (const auto& e : map) {
        if (i == n) break;
        PyObject* item = make(e);
        if (!item) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, i++, item);
    }
    if (i != n && PyList_SetSlice(list, i, n, nullptr) < 0) {  // the empty slots are NULL
        Py_DECREF(list);
        return nullptr;
    }
    return list;
}

// A list of (key, value) pairs, in iteration order.
PyObject* items_list(PyObject* self) {
    return entries_list(self, [](const object_map::value_type& e) { return PyTuple_Pack(2, e.first, e.second); });
}

// pypersistent 2.0's materialised views.
PyObject* map_items_list(PyObject* self, PyObject*) { return items_list(self); }
PyObject* map_keys_list(PyObject* self, PyObject*) {
    return entries_list(self, [](const object_map::value_type& e) { return Py_NewRef(e.first); });
}
PyObject* map_values_list(PyObject* self, PyObject*) {
    return entries_list(self, [](const object_map::value_type& e) { return Py_NewRef(e.second); });
}

PyObject* map_deepcopy(PyObject* self, PyObject* memo) { return deepcopy_through(Py_TYPE(self), items_list(self), memo); }

PyObject* map_reduce(PyObject* self, PyObject*) { return reduce_to(Py_TYPE(self), items_list(self)); }

PyObject* map_keys(PyObject* self, PyObject*) { return make_view(as_map(self)->state->keys_type, as_map(self)); }
PyObject* map_values(PyObject* self, PyObject*) { return make_view(as_map(self)->state->values_type, as_map(self)); }
PyObject* map_items(PyObject* self, PyObject*) { return make_view(as_map(self)->state->items_type, as_map(self)); }

PyObject* map_transient(PyObject* self, PyObject*) {
    MapObject* m = as_map(self);
    PyTypeObject* type = m->state->transient_type;
    return guarded([&] { return new_transient<TransientObject>(type, m->state, new object_transient(m->map.transient())); });
}

PyObject* map_create(PyObject* cls, PyObject* args, PyObject* kwargs) {
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "PersistentMap.create() takes keyword arguments only");
        return nullptr;
    }
    return build_map(reinterpret_cast<PyTypeObject*>(cls), nullptr, kwargs);
}

PyObject* map_from_dict(PyObject* cls, PyObject* source) {
    return build_map(reinterpret_cast<PyTypeObject*>(cls), source, nullptr);
}

PyObject* map_fromkeys(PyObject* cls, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("PersistentMap.fromkeys", "1 or 2 arguments", nargs);
    PyTypeObject* type = reinterpret_cast<PyTypeObject*>(cls);
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    PyObject* value = nargs == 2 ? args[1] : Py_None;
    PyObject* it = PyObject_GetIter(args[0]);
    if (!it) return nullptr;
    PyObject* result = guarded([&]() -> PyObject* {
        object_transient t;
        while (PyObject* key = PyIter_Next(it)) {
            const Py_hash_t h = key_hash(key);
            if (h == -1) {
                Py_DECREF(key);
                return nullptr;
            }
            try {
                t.set_hashed(key, value, to_trie_hash(h));
            } catch (...) {
                Py_DECREF(key);
                throw;
            }
            Py_DECREF(key);
        }
        if (PyErr_Occurred()) return nullptr;
        return new_map(type, state, t.persistent());
    });
    Py_DECREF(it);
    return result;
}

PyMethodDef map_methods[] = {
    {"assoc", PP_NAMED_FASTCALL(map_assoc, "PersistentMap.assoc"), METH_FASTCALL,
     "assoc($self, key, value, /)\n--\n\nA new map with key set to value."},
    {"set", PP_NAMED_FASTCALL(map_assoc, "PersistentMap.set"), METH_FASTCALL,
     "set($self, key, value, /)\n--\n\nA new map with key set to value (same as assoc())."},
    {"dissoc", map_dissoc, METH_O,
     "dissoc($self, key, /)\n--\n\nA new map without key (this map if key is absent)."},
    {"delete", map_dissoc, METH_O,
     "delete($self, key, /)\n--\n\nA new map without key (same as dissoc())."},
    {"get", as_method(map_get), METH_FASTCALL,
     "get($self, key, default=None, /)\n--\n\nThe value for key if key is in the map, else default."},
    {"contains", map_contains_method, METH_O,
     "contains($self, key, /)\n--\n\nWhether key is in the map (same as key in self)."},
    {"update", PP_NAMED_KEYWORDS(map_update, "PersistentMap.update"), METH_VARARGS | METH_KEYWORDS,
     "update($self, other=(), /, **kwargs)\n--\n\n"
     "A new map with the items of other (what dict.update accepts) and kwargs added."},
    {"merge", PP_NAMED_KEYWORDS(map_update, "PersistentMap.merge"), METH_VARARGS | METH_KEYWORDS,
     "merge($self, other=(), /, **kwargs)\n--\n\n"
     "A new map with the items of other and kwargs added (same as update())."},
    {"clear", map_clear, METH_NOARGS, "clear($self, /)\n--\n\nAn empty map."},
    {"to_shared", map_to_shared, METH_NOARGS,
     "to_shared($self, /)\n--\n\n"
     "A SharedMap of the contents, readable from every interpreter (O(n)).\n\n"
     "Keys and values must be what a SharedMap holds (None, bool, int, float, str, bytes,\n"
     "tuples of these, SharedMaps); anything else raises TypeError."},
    {"diff", map_diff, METH_O,
     "diff($self, other, /)\n--\n\n"
     "What changed from this map to other: MapDiff(added, removed, changed).\n\n"
     "added and removed are PersistentMaps of the entries only other / only this map has;\n"
     "changed maps each key whose values differ (neither the same object nor ==) to the pair\n"
     "(old value, new value). Subtrees the two maps share are skipped, so versions derived from\n"
     "each other by k updates are compared in about k log n steps, whatever their size."},
    {"copy", map_copy, METH_NOARGS, "copy($self, /)\n--\n\nThis map itself: it is immutable."},
    {"__copy__", map_copy, METH_NOARGS, "__copy__($self, /)\n--\n\nThis map itself: it is immutable."},
    {"__deepcopy__", map_deepcopy, METH_O,
     "__deepcopy__($self, memo, /)\n--\n\nA map of deep copies of the keys and values."},
    {"__reduce__", map_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickling support: the map is rebuilt from its (key, value) pairs."},
    {"__sizeof__", object_sizeof, METH_NOARGS, sizeof_doc},
    {"items_list", map_items_list, METH_NOARGS,
     "items_list($self, /)\n--\n\nA list of the (key, value) pairs, in iteration order."},
    {"keys_list", map_keys_list, METH_NOARGS, "keys_list($self, /)\n--\n\nA list of the keys, in iteration order."},
    {"values_list", map_values_list, METH_NOARGS,
     "values_list($self, /)\n--\n\nA list of the values, in iteration order."},
    {"keys", map_keys, METH_NOARGS, "keys($self, /)\n--\n\nA set-like view of the keys."},
    {"values", map_values, METH_NOARGS, "values($self, /)\n--\n\nA view of the values."},
    {"items", map_items, METH_NOARGS, "items($self, /)\n--\n\nA set-like view of the (key, value) pairs."},
    {"transient", map_transient, METH_NOARGS,
     "transient($self, /)\n--\n\n"
     "A TransientMap (a mutable builder) starting from this map; its persistent() freezes it in O(1)."},
    {"create", as_method(map_create), METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "create($type, /, **kwargs)\n--\n\nA map of the keyword arguments."},
    {"from_dict", map_from_dict, METH_O | METH_CLASS,
     "from_dict($type, mapping, /)\n--\n\nA map of the items of mapping (or of an iterable of pairs)."},
    {"fromkeys", as_method(map_fromkeys), METH_FASTCALL | METH_CLASS,
     "fromkeys($type, iterable, value=None, /)\n--\n\nA map with the keys of iterable, each set to value."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef map_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(MapObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

const char map_doc[] =
    "PersistentMap(mapping_or_pairs=(), /, **kwargs)\n--\n\n"
    "An immutable hash map (a hash array mapped trie).\n\n"
    "Made from a mapping or an iterable of (key, value) pairs and keyword arguments, as dict is.\n"
    "Every update returns a new map that shares all untouched structure with the old one; maps may be shared between threads freely.\n"
    "Iteration follows the trie's order, which depends only on the keys' hashes: equal maps\n"
    "iterate in the same order however they were built (keys whose whole hashes are equal keep\n"
    "the order in which they were added).";

PyType_Slot map_slots[] = {
    {Py_tp_doc, const_cast<char*>(map_doc)},
    {Py_tp_new, reinterpret_cast<void*>(map_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(map_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(map_traverse)},
    {Py_tp_hash, reinterpret_cast<void*>(map_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(map_richcompare)},
    {Py_tp_iter, reinterpret_cast<void*>(map_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(map_repr)},
    {Py_tp_methods, map_methods},
    {Py_tp_members, map_members},
    {Py_mp_length, reinterpret_cast<void*>(map_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(map_subscript)},
    {Py_sq_contains, reinterpret_cast<void*>(map_contains)},
    {Py_nb_or, reinterpret_cast<void*>(map_or)},
    {0, nullptr},
};

void map_dealloc(PyObject* self) {
    dealloc_structure<MapObject>(self, map_dealloc, [](MapObject& m) {
        m.map.~object_map();
        m.hash.~atomic();
    });
}

// ---- filling a transient from Python input ---------------------------------------------------

bool add_pair(object_transient& t, PyObject* key, PyObject* value) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return false;
    t.set_hashed(key, value, to_trie_hash(h));
    return true;
}

}  // namespace

bool is_map(PyObject* o) noexcept { return Py_TYPE(o)->tp_dealloc == map_dealloc; }

PyObject* deepcopy_through(PyTypeObject* type, PyObject* items, PyObject* memo) {
    if (!items) return nullptr;
    PyObject* copy_module = PyImport_ImportModule("copy");
    PyObject* copied = copy_module ? PyObject_CallMethod(copy_module, "deepcopy", "OO", items, memo) : nullptr;
    Py_XDECREF(copy_module);
    Py_DECREF(items);
    if (!copied) return nullptr;
    PyObject* result = PyObject_CallOneArg(reinterpret_cast<PyObject*>(type), copied);
    Py_DECREF(copied);
    return result;
}

PyObject* object_sizeof(PyObject* self, PyObject*) {
    return PyLong_FromSsize_t(static_cast<Py_ssize_t>(Py_TYPE(self)->tp_basicsize));
}

PyObject* reduce_to(PyTypeObject* type, PyObject* items) {
    if (!items) return nullptr;
    return Py_BuildValue("O(N)", reinterpret_cast<PyObject*>(type), items);
}

module_state* state_of_type(PyTypeObject* type) {
    PyObject* capsule = PyDict_GetItemString(type->tp_dict, "_state");
    if (!capsule) {
        PyErr_SetString(PyExc_SystemError, "pypersistent: type has no module state");
        return nullptr;
    }
    return static_cast<module_state*>(PyCapsule_GetPointer(capsule, "pypersistent._state"));
}

PyObject* new_map(PyTypeObject* type, module_state* state, object_map&& map) {
    auto* m = reinterpret_cast<MapObject*>(type->tp_alloc(type, 0));
    if (!m) return nullptr;
    new (&m->map) object_map(std::move(map));
    new (&m->hash) std::atomic<Py_hash_t>(hash_not_computed);
    m->weakreflist = nullptr;
    m->state = state;
    return reinterpret_cast<PyObject*>(m);
}

void set_key_error(PyObject* key) {
    // KeyError(key) even when key is a tuple, which PyErr_SetObject would unpack into args.
    PyObject* exc = PyObject_CallOneArg(PyExc_KeyError, key);
    if (exc) {
        PyErr_SetObject(PyExc_KeyError, exc);
        Py_DECREF(exc);
    }
}

bool fill_transient(object_transient& t, PyObject* source, PyObject* kwargs) {
    auto add = [&t](PyObject* key, PyObject* value) { return add_pair(t, key, value); };
    if (source) {
        if (is_map(source)) {
            t.merge(as_map(source)->map);
        } else if (!fill_from_source(source, add)) {
            return false;
        }
    }
    if (kwargs && PyDict_GET_SIZE(kwargs) > 0) return fill_from_dict(kwargs, add);
    return true;
}

PyType_Spec map_spec = {
    "pypersistent.PersistentMap",
    static_cast<int>(sizeof(MapObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_MAPPING | Py_TPFLAGS_IMMUTABLETYPE,
    map_slots,
};

}  // namespace pypersistent::python
