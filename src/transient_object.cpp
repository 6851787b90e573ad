// TransientMap: the mutable builder. Every method runs under the object's critical section and
// the `busy` flag (see TransientObject in bindings.hpp for why both).
#include <new>
#include <utility>

#include "bindings.hpp"
#include "transient_support.hpp"

namespace pypersistent::python {
namespace {

TransientObject* as_transient(PyObject* o) { return reinterpret_cast<TransientObject*>(o); }

template <class R, class F>
R locked(PyObject* self, R failed, F&& body) {
    return locked_transient<TransientObject>(self, "TransientMap", failed, std::forward<F>(body));
}

bool set_item(object_transient& t, PyObject* key, PyObject* value) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return false;
    t.set_hashed(key, value, to_trie_hash(h));
    return true;
}

removal erase_item(object_transient& t, PyObject* key) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return removal::error;
    return t.erase_hashed(key, to_trie_hash(h)) ? removal::removed : removal::absent;
}

PyObject* lookup(object_transient& t, PyObject* key, PyObject* fallback) {
    const Py_hash_t h = key_hash(key);
    if (h == -1) return nullptr;
    PyObject* const* v = t.find_hashed(key, to_trie_hash(h));
    if (v) return Py_NewRef(*v);
    if (fallback) return Py_NewRef(fallback);
    set_key_error(key);
    return nullptr;
}

Py_ssize_t transient_length(PyObject* self) {
    return locked<Py_ssize_t>(self, -1, [](object_transient& t) { return static_cast<Py_ssize_t>(t.size()); });
}

PyObject* transient_subscript(PyObject* self, PyObject* key) {
    return locked<PyObject*>(self, nullptr, [&](object_transient& t) { return lookup(t, key, nullptr); });
}

int transient_ass_subscript(PyObject* self, PyObject* key, PyObject* value) {
    return locked<int>(self, -1, [&](object_transient& t) -> int {
        if (value) return set_item(t, key, value) ? 0 : -1;
        const removal removed = erase_item(t, key);
        if (removed == removal::absent) set_key_error(key);
        return removed == removal::removed ? 0 : -1;
    });
}

int transient_contains(PyObject* self, PyObject* key) {
    return locked<int>(self, -1, [&](object_transient& t) -> int {
        const Py_hash_t h = key_hash(key);
        if (h == -1) return -1;
        return t.find_hashed(key, to_trie_hash(h)) != nullptr;
    });
}

// A persistent snapshot of the current contents (O(1)); later edits copy what they touch.
PyObject* snapshot(PyObject* self) {
    module_state* state = as_transient(self)->state;
    return locked<PyObject*>(self, nullptr,
                             [&](object_transient& t) { return new_map(state->map_type, state, t.persistent()); });
}

PyObject* transient_iter(PyObject* self) {
    PyObject* snap = snapshot(self);
    if (!snap) return nullptr;
    PyObject* it = make_iterator(as_transient(self)->state, reinterpret_cast<MapObject*>(snap), view_kind::keys);
    Py_DECREF(snap);
    return it;
}

// assoc() and set(); `name` is the one called, for errors (PP_NAMED_FASTCALL).
PyObject* transient_assoc(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs != 2) return argument_count_error(name, "exactly 2 arguments", nargs);
    return locked<PyObject*>(self, nullptr, [&](object_transient& t) -> PyObject* {
        return set_item(t, args[0], args[1]) ? Py_NewRef(self) : nullptr;
    });
}

PyObject* transient_dissoc(PyObject* self, PyObject* key) {
    return locked<PyObject*>(self, nullptr,
                             [&](object_transient& t) { return erase_item(t, key) != removal::error ? Py_NewRef(self) : nullptr; });
}

PyObject* transient_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("TransientMap.get", "1 or 2 arguments", nargs);
    PyObject* fallback = nargs == 2 ? args[1] : Py_None;
    return locked<PyObject*>(self, nullptr, [&](object_transient& t) { return lookup(t, args[0], fallback); });
}

PyObject* transient_contains_method(PyObject* self, PyObject* key) {
    const int r = transient_contains(self, key);
    return r < 0 ? nullptr : PyBool_FromLong(r);
}

PyObject* transient_update(PyObject* self, PyObject* args, PyObject* kwargs) {
    const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) return argument_count_error("TransientMap.update", "at most 1 argument", nargs);
    PyObject* source = nargs == 1 ? PyTuple_GET_ITEM(args, 0) : nullptr;
    // A transient source (this one included) is read through a snapshot taken first: it cannot
    // be read while this one is locked, and t.update(t) must work like d.update(d).
    PyObject* frozen = nullptr;
    if (source && Py_TYPE(source)->tp_dealloc == Py_TYPE(self)->tp_dealloc) {
        frozen = snapshot(source);
        if (!frozen) return nullptr;
        source = frozen;
    }
    PyObject* result = locked<PyObject*>(self, nullptr, [&](object_transient& t) {
        return fill_transient(t, source, kwargs) ? Py_NewRef(self) : nullptr;
    });
    Py_XDECREF(frozen);
    return result;
}

PyObject* freeze(TransientObject* obj, object_transient& t) { return new_map(obj->state->map_type, obj->state, t.persistent()); }

// Freezes the contents into a PersistentMap and finishes the transient (see finish_transient).
PyObject* transient_persistent(PyObject* self, PyObject*) {
    return finish_transient<TransientObject>(self, "TransientMap", [&](object_transient& t) { return freeze(as_transient(self), t); });
}

PyObject* transient_enter(PyObject* self, PyObject*) { return Py_NewRef(self); }

// Leaving the with-block finishes the transient as persistent() does.
PyObject* transient_exit(PyObject* self, PyObject* const*, Py_ssize_t nargs) {
    if (nargs != 3) return argument_count_error("TransientMap.__exit__", "exactly 3 arguments", nargs);
    return exit_transient<TransientObject>(self, "TransientMap", [&](object_transient& t) { return freeze(as_transient(self), t); });
}

PyObject* transient_repr(PyObject* self) { return repr_transient<TransientObject>(self, "TransientMap", snapshot); }

// ---- the rest of MutableMapping ----------------------------------------------------------------

PyObject* transient_pop(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("TransientMap.pop", "1 or 2 arguments", nargs);
    PyObject* key = args[0];
    PyObject* fallback = nargs == 2 ? args[1] : nullptr;
    return locked<PyObject*>(self, nullptr, [&](object_transient& t) -> PyObject* {
        const Py_hash_t h = key_hash(key);
        if (h == -1) return nullptr;
        PyObject* const* v = t.find_hashed(key, to_trie_hash(h));
        if (!v) {
            if (fallback) return Py_NewRef(fallback);
            set_key_error(key);
            return nullptr;
        }
        PyObject* value = Py_NewRef(*v);
        try {
            t.erase_hashed(key, to_trie_hash(h));
        } catch (...) {
            Py_DECREF(value);
            throw;
        }
        return value;
    });
}

PyObject* transient_popitem(PyObject* self, PyObject*) {
    return locked<PyObject*>(self, nullptr, [&](object_transient& t) -> PyObject* {
        auto it = t.begin();
        if (it == t.end()) {
            PyErr_SetString(PyExc_KeyError, "popitem(): TransientMap is empty");
            return nullptr;
        }
        PyObject* pair = PyTuple_Pack(2, it->first, it->second);
        if (!pair) return nullptr;
        try {
            // The entry's own key and cached hash: found by identity, no user code runs.
            t.erase_hashed(it->first, it->hash);
        } catch (...) {
            Py_DECREF(pair);
            throw;
        }
        return pair;
    });
}

PyObject* transient_setdefault(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("TransientMap.setdefault", "1 or 2 arguments", nargs);
    PyObject* key = args[0];
    PyObject* fallback = nargs == 2 ? args[1] : Py_None;
    return locked<PyObject*>(self, nullptr, [&](object_transient& t) -> PyObject* {
        const Py_hash_t h = key_hash(key);
        if (h == -1) return nullptr;
        if (PyObject* const* v = t.find_hashed(key, to_trie_hash(h))) return Py_NewRef(*v);
        t.set_hashed(key, fallback, to_trie_hash(h));
        return Py_NewRef(fallback);
    });
}

PyObject* transient_clear_method(PyObject* self, PyObject*) {
    TransientObject* obj = as_transient(self);
    return guarded([&]() -> PyObject* {
        auto* fresh = new object_transient(object_map().transient());
        object_transient* old = nullptr;
        const bool swapped = locked<bool>(self, false, [&](object_transient&) {
            old = obj->transient;
            obj->transient = fresh;
            return true;
        });
        delete (swapped ? old : fresh);  // outside the lock: dropping values may run arbitrary code
        return swapped ? Py_NewRef(Py_None) : nullptr;
    });
}

PyObject* transient_copy(PyObject* self, PyObject*) {
    TransientObject* obj = as_transient(self);
    return locked<PyObject*>(self, nullptr, [&](object_transient& t) {
        return new_transient<TransientObject>(Py_TYPE(self), obj->state, new object_transient(t.persistent().transient()));
    });
}

// keys(), values(), items(): live views, as a dict's are (collections.abc's, over this mapping).
PyObject* abc_view(PyObject* self, const char* view_name) {
    PyObject* abc = PyImport_ImportModule("collections.abc");
    if (!abc) return nullptr;
    PyObject* view_type = PyObject_GetAttrString(abc, view_name);
    Py_DECREF(abc);
    if (!view_type) return nullptr;
    PyObject* view = PyObject_CallOneArg(view_type, self);
    Py_DECREF(view_type);
    return view;
}
PyObject* transient_keys(PyObject* self, PyObject*) { return abc_view(self, "KeysView"); }
PyObject* transient_values(PyObject* self, PyObject*) { return abc_view(self, "ValuesView"); }
PyObject* transient_items(PyObject* self, PyObject*) { return abc_view(self, "ItemsView"); }

// == and != compare the current contents, as PersistentMap does (with any Mapping).
PyObject* transient_richcompare(PyObject* self, PyObject* other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    PyObject* mine = snapshot(self);
    if (!mine) return nullptr;
    PyObject* theirs = Py_TYPE(other) == Py_TYPE(self) ? snapshot(other) : Py_NewRef(other);
    PyObject* result = theirs ? PyObject_RichCompare(mine, theirs, op) : nullptr;
    Py_DECREF(mine);
    Py_XDECREF(theirs);
    return result;
}

int transient_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    TransientObject* obj = as_transient(self);
    if (const int r = visit_frozen<TransientObject>(self, visit, arg)) return r;
    if (!obj->transient) return 0;
    // The collector runs this with the world stopped (free-threaded) or the GIL held, and never
    // in the middle of a transient's C++ edit, which calls no Python while nodes are half-built.
    return traverse_trie(self, obj->state, obj->transient->root(), visit, arg);
}

int transient_clear(PyObject* self) { return clear_transient<TransientObject>(self); }

void transient_dealloc(PyObject* self) { dealloc_transient<TransientObject>(self, transient_dealloc); }

PyObject* transient_new(PyTypeObject*, PyObject*, PyObject*) {
    PyErr_SetString(PyExc_TypeError, "TransientMap cannot be created directly: use PersistentMap.transient()");
    return nullptr;
}

PyMethodDef transient_methods[] = {
    {"assoc", PP_NAMED_FASTCALL(transient_assoc, "TransientMap.assoc"), METH_FASTCALL,
     "assoc($self, key, value, /)\n--\n\nSets key to value in place; returns this transient."},
    {"set", PP_NAMED_FASTCALL(transient_assoc, "TransientMap.set"), METH_FASTCALL,
     "set($self, key, value, /)\n--\n\nSets key to value in place; returns this transient (same as assoc())."},
    {"dissoc", transient_dissoc, METH_O,
     "dissoc($self, key, /)\n--\n\nRemoves key in place if present; returns this transient."},
    {"delete", transient_dissoc, METH_O,
     "delete($self, key, /)\n--\n\nRemoves key in place if present; returns this transient (same as dissoc())."},
    {"get", as_method(transient_get), METH_FASTCALL,
     "get($self, key, default=None, /)\n--\n\nThe value for key if key is in the transient, else default."},
    {"contains", transient_contains_method, METH_O,
     "contains($self, key, /)\n--\n\nWhether key is in the transient (same as key in self)."},
    {"update", as_method(transient_update), METH_VARARGS | METH_KEYWORDS,
     "update($self, other=(), /, **kwargs)\n--\n\n"
     "Adds the items of other (what dict.update accepts) and kwargs in place; returns this transient."},
    {"persistent", transient_persistent, METH_NOARGS,
     "persistent($self, /)\n--\n\n"
     "Freezes the contents into a PersistentMap in O(1) and finishes the transient.\n\n"
     "So does the end of its with-block: edits raise RuntimeError afterwards, and persistent()\n"
     "returns the same PersistentMap again."},
    {"pop", as_method(transient_pop), METH_FASTCALL,
     "pop($self, key, /, *default)\n--\n\n"
     "Removes key and returns its value; if key is absent, returns default if given, else raises KeyError."},
    {"popitem", transient_popitem, METH_NOARGS,
     "popitem($self, /)\n--\n\nRemoves and returns a (key, value) pair; KeyError if the transient is empty."},
    {"setdefault", as_method(transient_setdefault), METH_FASTCALL,
     "setdefault($self, key, default=None, /)\n--\n\nThe value of key, after setting it to default if key is absent."},
    {"clear", transient_clear_method, METH_NOARGS, "clear($self, /)\n--\n\nRemoves every item in place."},
    {"copy", transient_copy, METH_NOARGS,
     "copy($self, /)\n--\n\nA new TransientMap with the same items, made in O(1)."},
    {"keys", transient_keys, METH_NOARGS, "keys($self, /)\n--\n\nA live view of the keys."},
    {"values", transient_values, METH_NOARGS, "values($self, /)\n--\n\nA live view of the values."},
    {"items", transient_items, METH_NOARGS, "items($self, /)\n--\n\nA live view of the (key, value) pairs."},
    {"__enter__", transient_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nThis transient; the end of the with-block finishes it as persistent() does."},
    {"__exit__", as_method(transient_exit), METH_FASTCALL,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\n"
     "Finishes the transient as persistent() does; returns False (an exception propagates)."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef transient_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TransientObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot transient_slots[] = {
    {Py_tp_doc, const_cast<char*>("TransientMap()\n--\n\n"
                                  "A mutable builder made by PersistentMap.transient(), not called directly.\n\n"
                                  "A MutableMapping whose persistent() freezes the contents into a PersistentMap in O(1).")},
    {Py_tp_new, reinterpret_cast<void*>(transient_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(transient_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(transient_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(transient_clear)},
    {Py_tp_iter, reinterpret_cast<void*>(transient_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(transient_repr)},
    {Py_tp_richcompare, reinterpret_cast<void*>(transient_richcompare)},
    {Py_tp_methods, transient_methods},
    {Py_tp_members, transient_members},
    {Py_mp_length, reinterpret_cast<void*>(transient_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(transient_subscript)},
    {Py_mp_ass_subscript, reinterpret_cast<void*>(transient_ass_subscript)},
    {Py_sq_contains, reinterpret_cast<void*>(transient_contains)},
    {0, nullptr},
};

}  // namespace

PyType_Spec transient_spec = {
    "pypersistent.TransientMap",
    static_cast<int>(sizeof(TransientObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    transient_slots,
};

}  // namespace pypersistent::python
