// Iterators over a map, and the keys() / values() / items() views.
#include <new>

#include "bindings.hpp"

namespace pypersistent::python {

void view_dealloc(PyObject* self);

namespace {

IteratorObject* as_iterator(PyObject* o) { return reinterpret_cast<IteratorObject*>(o); }
ViewObject* as_view(PyObject* o) { return reinterpret_cast<ViewObject*>(o); }

// ---- iterator --------------------------------------------------------------------------------

PyObject* iterator_next(PyObject* self) {
    IteratorObject* it = as_iterator(self);
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    const view_kind kind = it->kind;
    // The cursor moves under the critical section, and nothing in it allocates or runs Python,
    // so a thread sharing this iterator never sees a half-advanced cursor.
    // It stops at the trie's end, whatever the count says.
    static const object_map::iterator end_of_trie;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (it->cursor != end_of_trie) {
        const auto& entry = *it->cursor;
        if (kind != view_kind::values) key = Py_NewRef(entry.first);
        if (kind != view_kind::keys) value = Py_NewRef(entry.second);
        ++it->cursor;
        if (it->remaining > 0) --it->remaining;
    }
    Py_END_CRITICAL_SECTION();
    switch (kind) {
        case view_kind::keys:
            return key;
        case view_kind::values:
            return value;
        case view_kind::items:
            break;
    }
    if (!key) return nullptr;
    PyObject* pair = PyTuple_New(2);
    if (!pair) {
        Py_DECREF(key);
        Py_DECREF(value);
        return nullptr;
    }
    PyTuple_SET_ITEM(pair, 0, key);
    PyTuple_SET_ITEM(pair, 1, value);
    return pair;
}

PyObject* iterator_length_hint(PyObject* self, PyObject*) {
    Py_ssize_t n;
    Py_BEGIN_CRITICAL_SECTION(self);
    n = as_iterator(self)->remaining;
    Py_END_CRITICAL_SECTION();
    return PyLong_FromSsize_t(n);
}

int iterator_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(reinterpret_cast<PyObject*>(as_iterator(self)->map));
    return 0;
}

void iterator_dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_XDECREF(reinterpret_cast<PyObject*>(as_iterator(self)->map));
    type->tp_free(self);
    Py_DECREF(type);
}

PyMethodDef iterator_methods[] = {
    {"__length_hint__", iterator_length_hint, METH_NOARGS, length_hint_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot iterator_slots[] = {
    {Py_tp_doc, const_cast<char*>("An iterator over the keys, values or items of a PersistentMap or TransientMap.")},
    {Py_tp_dealloc, reinterpret_cast<void*>(iterator_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(iterator_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(PyObject_SelfIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(iterator_next)},
    {Py_tp_methods, iterator_methods},
    {0, nullptr},
};

// ---- views -----------------------------------------------------------------------------------

view_kind kind_of(PyObject* view) {
    module_state* state = as_view(view)->map->state;
    PyTypeObject* type = Py_TYPE(view);
    if (type == state->keys_type) return view_kind::keys;
    if (type == state->values_type) return view_kind::values;
    return view_kind::items;
}

bool is_set_like_view(PyObject* o) {
    if (Py_TYPE(o)->tp_dealloc != view_dealloc) return false;
    return kind_of(o) != view_kind::values;
}

Py_ssize_t view_length(PyObject* self) { return static_cast<Py_ssize_t>(as_view(self)->map->map.size()); }

PyObject* view_iter(PyObject* self) { return make_iterator(as_view(self)->map->state, as_view(self)->map, kind_of(self)); }

int keys_contains(PyObject* self, PyObject* key) {
    return PySequence_Contains(reinterpret_cast<PyObject*>(as_view(self)->map), key);
}

int items_contains(PyObject* self, PyObject* item) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) return 0;
    PyObject* key = PyTuple_GET_ITEM(item, 0);
    const Py_hash_t h = key_hash(key);
    if (h == -1) return -1;
    try {
        PyObject* const* v = as_view(self)->map->map.find_hashed(key, to_trie_hash(h));
        if (!v) return 0;
        PyObject* value = Py_NewRef(*v);
        const int r = PyObject_RichCompareBool(value, PyTuple_GET_ITEM(item, 1), Py_EQ);
        Py_DECREF(value);
        return r;
    } catch (const python_error&) {
        return -1;
    }
}

int values_contains(PyObject* self, PyObject* value) {
    for (const auto& e : as_view(self)->map->map) {
        const int r = PyObject_RichCompareBool(e.second, value, Py_EQ);
        if (r != 0) return r;
    }
    return 0;
}

// Set operations follow dict views: make a set of the left operand, then update it in place.
PyObject* set_operation(PyObject* left, PyObject* right, const char* method) {
    PyObject* result = PySet_New(left);
    if (!result) return nullptr;
    PyObject* r = PyObject_CallMethod(result, method, "O", right);
    if (!r) {
        Py_DECREF(result);
        return nullptr;
    }
    Py_DECREF(r);
    return result;
}

PyObject* view_and(PyObject* a, PyObject* b) { return set_operation(a, b, "intersection_update"); }
PyObject* view_or(PyObject* a, PyObject* b) { return set_operation(a, b, "update"); }
PyObject* view_sub(PyObject* a, PyObject* b) { return set_operation(a, b, "difference_update"); }
PyObject* view_xor(PyObject* a, PyObject* b) { return set_operation(a, b, "symmetric_difference_update"); }

PyObject* view_isdisjoint(PyObject* self, PyObject* other) {
    PyObject* it = PyObject_GetIter(other);
    if (!it) return nullptr;
    while (PyObject* item = PyIter_Next(it)) {
        const int found = PySequence_Contains(self, item);
        Py_DECREF(item);
        if (found != 0) {
            Py_DECREF(it);
            return found < 0 ? nullptr : Py_NewRef(Py_False);
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return nullptr;
    Py_RETURN_TRUE;
}

// Whether every element of `a` is in `b`.
truth all_contained_in(PyObject* a, PyObject* b) {
    PyObject* it = PyObject_GetIter(a);
    if (!it) return truth::error;
    truth ok = truth::yes;
    while (ok == truth::yes) {
        PyObject* item = PyIter_Next(it);
        if (!item) {
            if (PyErr_Occurred()) ok = truth::error;
            break;
        }
        ok = truth_of(PySequence_Contains(b, item));
        Py_DECREF(item);
    }
    Py_DECREF(it);
    return ok;
}

// keys() and items() compare like sets, with sets and with other set-like views, the way dict's
// views do: by sizes and membership, so items with unhashable values compare too.
PyObject* view_richcompare(PyObject* self, PyObject* other, int op) {
    if (!PyAnySet_Check(other) && !is_set_like_view(other) && !PyDictViewSet_Check(other)) Py_RETURN_NOTIMPLEMENTED;
    const Py_ssize_t mine = PyObject_Size(self);
    const Py_ssize_t theirs = PyObject_Size(other);
    if (mine < 0 || theirs < 0) return nullptr;
    truth result = truth::no;
    switch (op) {
        case Py_EQ:
        case Py_NE:
            result = mine == theirs ? all_contained_in(self, other) : truth::no;
            if (result != truth::error && op == Py_NE) result = result == truth::yes ? truth::no : truth::yes;
            break;
        case Py_LT:
            result = mine < theirs ? all_contained_in(self, other) : truth::no;
            break;
        case Py_LE:
            result = mine <= theirs ? all_contained_in(self, other) : truth::no;
            break;
        case Py_GT:
            result = mine > theirs ? all_contained_in(other, self) : truth::no;
            break;
        case Py_GE:
            result = mine >= theirs ? all_contained_in(other, self) : truth::no;
            break;
        default:
            Py_RETURN_NOTIMPLEMENTED;
    }
    return bool_or_null(result);
}

PyObject* view_repr(PyObject* self) {
    const int entered = Py_ReprEnter(self);
    if (entered != 0) return entered > 0 ? PyUnicode_FromString("...") : nullptr;
    PyObject* list = PySequence_List(self);
    PyObject* result = nullptr;
    if (list) {
        static const char* const names[] = {"PersistentMapKeys", "PersistentMapValues", "PersistentMapItems"};
        result = PyUnicode_FromFormat("%s(%R)", names[static_cast<int>(kind_of(self))], list);
        Py_DECREF(list);
    }
    Py_ReprLeave(self);
    return result;
}

PyObject* view_mapping(PyObject* self, void*) { return Py_NewRef(reinterpret_cast<PyObject*>(as_view(self)->map)); }

int view_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(reinterpret_cast<PyObject*>(as_view(self)->map));
    return 0;
}

PyMethodDef set_view_methods[] = {
    {"isdisjoint", view_isdisjoint, METH_O,
     "isdisjoint($self, other, /)\n--\n\nWhether the view and the iterable other have no element in common."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef view_getset[] = {
    {"mapping", view_mapping, nullptr, "The map this view reflects.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

// Keys and items views are set-like and differ only in membership.
constexpr char keys_doc[] = "A set-like view of a PersistentMap's keys (what keys() returns).";
constexpr char items_doc[] = "A set-like view of a PersistentMap's (key, value) pairs (what items() returns).";

template <int (*Contains)(PyObject*, PyObject*), const char* Doc>
PyType_Slot set_view_slots[] = {
    {Py_tp_doc, const_cast<char*>(Doc)},
    {Py_tp_dealloc, reinterpret_cast<void*>(view_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(view_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(view_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(view_repr)},
    {Py_tp_richcompare, reinterpret_cast<void*>(view_richcompare)},
    {Py_tp_methods, set_view_methods},
    {Py_tp_getset, view_getset},
    {Py_sq_length, reinterpret_cast<void*>(view_length)},
    {Py_sq_contains, reinterpret_cast<void*>(Contains)},
    {Py_nb_and, reinterpret_cast<void*>(view_and)},
    {Py_nb_or, reinterpret_cast<void*>(view_or)},
    {Py_nb_subtract, reinterpret_cast<void*>(view_sub)},
    {Py_nb_xor, reinterpret_cast<void*>(view_xor)},
    {0, nullptr},
};

PyType_Slot values_slots[] = {
    {Py_tp_doc, const_cast<char*>("A view of a PersistentMap's values (what values() returns).")},
    {Py_tp_dealloc, reinterpret_cast<void*>(view_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(view_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(view_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(view_repr)},
    {Py_tp_getset, view_getset},
    {Py_sq_length, reinterpret_cast<void*>(view_length)},
    {Py_sq_contains, reinterpret_cast<void*>(values_contains)},
    {0, nullptr},
};

// Made only by the map (keys(), iter()...): Python code cannot create one without a map.
constexpr unsigned long view_flags =
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION;

}  // namespace

void view_dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_XDECREF(reinterpret_cast<PyObject*>(as_view(self)->map));
    type->tp_free(self);
    Py_DECREF(type);
}

PyObject* make_iterator(module_state* state, MapObject* map, view_kind kind) {
    PyTypeObject* type = state->iterator_type;
    auto* it = reinterpret_cast<IteratorObject*>(type->tp_alloc(type, 0));
    if (!it) return nullptr;
    it->map = reinterpret_cast<MapObject*>(Py_NewRef(reinterpret_cast<PyObject*>(map)));
    new (&it->cursor) object_map::iterator(map->map.begin());
    it->remaining = static_cast<Py_ssize_t>(map->map.size());
    it->kind = kind;
    return reinterpret_cast<PyObject*>(it);
}

PyObject* make_view(PyTypeObject* type, MapObject* map) {
    auto* v = reinterpret_cast<ViewObject*>(type->tp_alloc(type, 0));
    if (!v) return nullptr;
    v->map = reinterpret_cast<MapObject*>(Py_NewRef(reinterpret_cast<PyObject*>(map)));
    return reinterpret_cast<PyObject*>(v);
}

PyType_Spec iterator_spec = {"pypersistent.PersistentMapIterator", static_cast<int>(sizeof(IteratorObject)), 0,
                             view_flags, iterator_slots};
PyType_Spec keys_spec = {"pypersistent.PersistentMapKeys", static_cast<int>(sizeof(ViewObject)), 0, view_flags,
                         set_view_slots<keys_contains, keys_doc>};
PyType_Spec values_spec = {"pypersistent.PersistentMapValues", static_cast<int>(sizeof(ViewObject)), 0, view_flags,
                           values_slots};
PyType_Spec items_spec = {"pypersistent.PersistentMapItems", static_cast<int>(sizeof(ViewObject)), 0, view_flags,
                          set_view_slots<items_contains, items_doc>};

}  // namespace pypersistent::python
