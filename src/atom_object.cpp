// Atom: a lock-free cell holding a PersistentMap (or PersistentSet, PersistentList), for state that many threads publish and read.
// It stores the structure *object* (so compare_and_set can test identity, and deref returns the very
// object that was stored) in pypersistent::shared_cell; see include/pypersistent/atom.hpp for
// the lock-free design and its memory reclamation.
#include <atomic>
#include <new>
#include <utility>

#include <pypersistent/atom.hpp>

#include "bindings.hpp"

namespace pypersistent::python {
namespace {

// A strong reference. Boxes of the cell are freed by whichever thread drops the last unit.
// That is a Python thread, except in atom_current_root: it runs with_current on host threads
// that may have no thread state (free-threaded builds), and when a writer replaced the box
// meanwhile, giving the borrow back can drop the box's last unit, and with it this reference.
class object_ref {
public:
    explicit object_ref(PyObject* o) noexcept : object_(Py_XNewRef(o)), interp_(PyInterpreterState_Get()) {}
    object_ref(const object_ref& other) noexcept : object_(Py_XNewRef(other.object_)), interp_(other.interp_) {}
    object_ref(object_ref&& other) noexcept : object_(std::exchange(other.object_, nullptr)), interp_(other.interp_) {}
    object_ref& operator=(const object_ref&) = delete;
    object_ref& operator=(object_ref&&) = delete;
    ~object_ref() {
        if (!object_) return;
#ifdef Py_GIL_DISABLED
        if (!current_thread_state()) {
            with_thread_state(interp_, [this] { Py_DECREF(object_); });
            return;
        }
#endif
        Py_DECREF(object_);
    }
    PyObject* get() const noexcept { return object_; }

private:
    PyObject* object_;
    PyInterpreterState* interp_;  // the one the object belongs to
};

using object_cell = pypersistent::shared_cell<object_ref>;

// Watchers: a tuple of callables (or null for none), replaced whole by watch()/unwatch() in a
// critical section on the atom and read the same way (a strong reference taken inside), so a
// change notifies exactly the watchers registered when it is notified, and no thread sees a
// half-updated list. Each successful change calls every watcher once, on the thread that made
// the change, after the change is visible; changes by several threads notify in no set order.
// The pointer is also read once without the lock (an acquire load) so that a change with no
// watchers, the common case, skips the critical section: a watcher registered concurrently with
// a change may or may not see it, as when it is registered just before or after.
struct AtomObject {
    PyObject_HEAD
    object_cell* cell;  // holds a PersistentMap, or nothing once the collector cleared the atom
    PyObject* weakreflist;
    std::atomic<PyObject*> watchers;  // written only in the atom's critical section (or by tp_clear)
};

AtomObject* as_atom(PyObject* o) { return reinterpret_cast<AtomObject*>(o); }

// An Atom holds one of the persistent structures: immutable, so that what deref() returns can
// be shared by every thread without copies or locks.
bool require_persistent(PyObject* o, const char* what) {
    if (is_map(o) || is_set(o) || is_persistent_list(o) || is_sorted_map(o)) return true;
    PyErr_Format(PyExc_TypeError,
                 "%s must be a PersistentMap, PersistentSet, PersistentList or PersistentSortedDict, not %.200s", what,
                 Py_TYPE(o)->tp_name);
    return false;
}

// A new reference to the watcher tuple, or null if there are none.
PyObject* watchers_of(PyObject* self) {
    if (!as_atom(self)->watchers.load(std::memory_order_acquire)) return nullptr;
    PyObject* w;
    Py_BEGIN_CRITICAL_SECTION(self);
    w = Py_XNewRef(as_atom(self)->watchers.load(std::memory_order_relaxed));
    Py_END_CRITICAL_SECTION();
    return w;
}

// The pending exception, taken out of the thread state (and put back), as one object.
struct saved_error {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject* exc = nullptr;
    void take() noexcept { exc = PyErr_GetRaisedException(); }
    void restore() noexcept { PyErr_SetRaisedException(exc); }
    bool empty() const noexcept { return exc == nullptr; }
#else
    PyObject* type = nullptr;
    PyObject* value = nullptr;
    PyObject* tb = nullptr;
    void take() noexcept { PyErr_Fetch(&type, &value, &tb); }
    void restore() noexcept { PyErr_Restore(type, value, tb); }
    bool empty() const noexcept { return type == nullptr; }
#endif
};

// Calls fn(old, new) for every watcher. All of them run even if one raises; the first
// exception is then raised (the change itself stands), later ones are reported as unraisable.
bool notify_watchers(PyObject* self, PyObject* old_value, PyObject* new_value) {
    PyObject* watchers = watchers_of(self);
    if (!watchers) return true;
    saved_error first_error;
    for (Py_ssize_t i = 0, n = PyTuple_GET_SIZE(watchers); i < n; ++i) {
        PyObject* result = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(watchers, i), old_value ? old_value : Py_None,
                                                        new_value, nullptr);
        if (result) {
            Py_DECREF(result);
        } else if (first_error.empty()) {
            first_error.take();
        } else {
            PyErr_WriteUnraisable(PyTuple_GET_ITEM(watchers, i));
        }
    }
    Py_DECREF(watchers);
    if (first_error.empty()) return true;
    first_error.restore();
    return false;
}

// A new reference to the current value (wait-free).
PyObject* current(PyObject* self) {
    PyObject* value = as_atom(self)->cell->with_current([](const object_ref& r) { return Py_XNewRef(r.get()); });
    if (!value) PyErr_SetString(PyExc_RuntimeError, "this Atom was cleared by the garbage collector");
    return value;
}

PyObject* atom_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"initial", nullptr};
    PyObject* initial = nullptr;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:Atom", const_cast<char**>(keywords), &initial)) return nullptr;
    PyObject* owned_initial = nullptr;
    if (initial) {
        if (!require_persistent(initial, "Atom's initial value")) return nullptr;
    } else {
        module_state* state = state_of_type(type);
        if (!state) return nullptr;
        owned_initial = new_map(state->map_type, state, object_map());
        if (!owned_initial) return nullptr;
        initial = owned_initial;
    }
    PyObject* result = guarded([&]() -> PyObject* {
        auto* cell = new object_cell(object_ref(initial));
        auto* atom = reinterpret_cast<AtomObject*>(type->tp_alloc(type, 0));
        if (!atom) {
            delete cell;
            return nullptr;
        }
        atom->cell = cell;
        atom->weakreflist = nullptr;
        new (&atom->watchers) std::atomic<PyObject*>(nullptr);
        return reinterpret_cast<PyObject*>(atom);
    });
    Py_XDECREF(owned_initial);
    return result;
}

PyObject* atom_deref(PyObject* self, PyObject*) { return current(self); }
PyObject* atom_value(PyObject* self, void*) { return current(self); }

PyObject* atom_reset(PyObject* self, PyObject* desired) {
    if (!require_persistent(desired, "Atom.reset()'s argument")) return nullptr;
    return guarded([&]() -> PyObject* {
        auto old = as_atom(self)->cell->exchange(object_ref(desired));
        if (!notify_watchers(self, old->get(), desired)) return nullptr;
        return Py_XNewRef(old->get() ? old->get() : Py_None);
    });
}

PyObject* atom_compare_and_set(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 2) return argument_count_error("Atom.compare_and_set", "exactly 2 arguments", nargs);
    PyObject* expected = args[0];
    PyObject* desired = args[1];
    if (!require_persistent(desired, "Atom.compare_and_set()'s new value")) return nullptr;
    return guarded([&]() -> PyObject* {
        object_cell* cell = as_atom(self)->cell;
        while (true) {
            auto now = cell->load();
            if (now->get() != expected) Py_RETURN_FALSE;
            if (cell->compare_exchange(now, object_ref(desired))) {
                if (!notify_watchers(self, now->get(), desired)) return nullptr;
                Py_RETURN_TRUE;
            }
        }
    });
}

// swap(fn, *args, **kwargs): fn(current, *args, **kwargs) until the result is published.
PyObject* atom_swap(PyObject* self, PyObject* args, PyObject* kwargs) {
    const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 1) return argument_count_error("Atom.swap", "at least 1 positional argument", nargs);
    PyObject* fn = PyTuple_GET_ITEM(args, 0);
    PyObject* call_args = PyTuple_New(nargs);  // (current, *args[1:])
    if (!call_args) return nullptr;
    for (Py_ssize_t i = 1; i < nargs; ++i) PyTuple_SET_ITEM(call_args, i, Py_NewRef(PyTuple_GET_ITEM(args, i)));
    PyObject* result = guarded([&]() -> PyObject* {
        object_cell* cell = as_atom(self)->cell;
        while (true) {
            auto now = cell->load();
            if (!now->get()) {
                PyErr_SetString(PyExc_RuntimeError, "this Atom was cleared by the garbage collector");
                return nullptr;
            }
            PyObject* previous = PyTuple_GET_ITEM(call_args, 0);
            PyTuple_SET_ITEM(call_args, 0, Py_NewRef(now->get()));
            Py_XDECREF(previous);
            PyObject* next = PyObject_Call(fn, call_args, kwargs);
            if (!next) return nullptr;
            if (!require_persistent(next, "the value Atom.swap()'s function returned")) {
                Py_DECREF(next);
                return nullptr;
            }
            if (cell->compare_exchange(now, object_ref(next))) {
                if (notify_watchers(self, now->get(), next)) return next;
                Py_DECREF(next);
                return nullptr;
            }
            Py_DECREF(next);
        }
    });
    Py_DECREF(call_args);
    return result;
}

PyObject* atom_repr(PyObject* self) {
    PyObject* value = current(self);
    if (!value) return nullptr;
    PyObject* r = PyUnicode_FromFormat("Atom(%R)", value);
    Py_DECREF(value);
    return r;
}

int atom_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    AtomObject* atom = as_atom(self);
    // The collector runs with the world stopped (free-threaded) or under the GIL with no
    // store in progress in C++, so the cell can be read without a borrow.
    if (atom->cell) Py_VISIT(atom->cell->unsynchronized_peek().get());
    Py_VISIT(atom->watchers.load(std::memory_order_relaxed));
    return 0;
}

// watch(fn): fn(old, new) after every change from now on; returns fn (usable as a decorator).
PyObject* atom_watch(PyObject* self, PyObject* fn) {
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "Atom.watch() argument must be callable, not %.200s", Py_TYPE(fn)->tp_name);
        return nullptr;
    }
    AtomObject* atom = as_atom(self);
    PyObject* dropped = nullptr;
    bool ok = true;
    Py_BEGIN_CRITICAL_SECTION(self);
    PyObject* const current = atom->watchers.load(std::memory_order_relaxed);
    const Py_ssize_t n = current ? PyTuple_GET_SIZE(current) : 0;
    PyObject* grown = PyTuple_New(n + 1);
    if (grown) {
        for (Py_ssize_t i = 0; i < n; ++i) PyTuple_SET_ITEM(grown, i, Py_NewRef(PyTuple_GET_ITEM(current, i)));
        PyTuple_SET_ITEM(grown, n, Py_NewRef(fn));
        dropped = current;
        atom->watchers.store(grown, std::memory_order_release);
    } else {
        ok = false;
    }
    Py_END_CRITICAL_SECTION();
    Py_XDECREF(dropped);  // outside the critical section: it may run arbitrary code
    return ok ? Py_NewRef(fn) : nullptr;
}

// unwatch(fn): removes fn (compared by identity, then ==); ValueError if it is not watching.
PyObject* atom_unwatch(PyObject* self, PyObject* fn) {
    AtomObject* atom = as_atom(self);
    // Find it on a snapshot first: == may run Python code, which must not run in the
    // critical section. Then remove it if the tuple has not changed meanwhile, else retry.
    while (true) {
        PyObject* snapshot = watchers_of(self);
        Py_ssize_t found = -1;
        const Py_ssize_t n = snapshot ? PyTuple_GET_SIZE(snapshot) : 0;
        for (Py_ssize_t i = 0; i < n && found < 0; ++i) {
            PyObject* w = PyTuple_GET_ITEM(snapshot, i);
            if (w == fn) {
                found = i;
                break;
            }
            const int eq = PyObject_RichCompareBool(w, fn, Py_EQ);
            if (eq < 0) {
                Py_DECREF(snapshot);
                return nullptr;
            }
            if (eq) found = i;
        }
        if (found < 0) {
            Py_XDECREF(snapshot);
            PyErr_SetString(PyExc_ValueError, "Atom.unwatch(fn): fn is not watching this Atom");
            return nullptr;
        }
        PyObject* shrunk = nullptr;
        if (n > 1) {
            shrunk = PyTuple_New(n - 1);
            if (!shrunk) {
                Py_DECREF(snapshot);
                return nullptr;
            }
            for (Py_ssize_t i = 0, j = 0; i < n; ++i) {
                if (i != found) PyTuple_SET_ITEM(shrunk, j++, Py_NewRef(PyTuple_GET_ITEM(snapshot, i)));
            }
        }
        bool replaced = false;
        PyObject* dropped = nullptr;
        Py_BEGIN_CRITICAL_SECTION(self);
        if (atom->watchers.load(std::memory_order_relaxed) == snapshot) {
            dropped = snapshot;
            atom->watchers.store(shrunk, std::memory_order_release);
            replaced = true;
        }
        Py_END_CRITICAL_SECTION();
        Py_XDECREF(dropped);
        Py_DECREF(snapshot);
        if (replaced) Py_RETURN_NONE;
        Py_XDECREF(shrunk);
    }
}

int atom_clear(PyObject* self) {
    AtomObject* atom = as_atom(self);
    if (atom->cell) atom->cell->exchange(object_ref(nullptr));
    Py_XDECREF(atom->watchers.exchange(nullptr, std::memory_order_acq_rel));
    return 0;
}

void atom_dealloc(PyObject* self) {
    AtomObject* atom = as_atom(self);
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (atom->weakreflist) PyObject_ClearWeakRefs(self);
    delete atom->cell;
    Py_XDECREF(atom->watchers.load(std::memory_order_relaxed));
    type->tp_free(self);
    Py_DECREF(type);
}

PyMethodDef atom_methods[] = {
    {"deref", atom_deref, METH_NOARGS, "deref($self, /)\n--\n\nThe current value; never waits."},
    {"reset", atom_reset, METH_O, "reset($self, new, /)\n--\n\nStores new; returns the value it replaced."},
    {"compare_and_set", as_method(atom_compare_and_set), METH_FASTCALL,
     "compare_and_set($self, expected, new, /)\n--\n\n"
     "Stores new only if the current value is expected (identity); returns whether it did."},
    {"swap", as_method(atom_swap), METH_VARARGS | METH_KEYWORDS,
     "swap($self, fn, /, *args, **kwargs)\n--\n\n"
     "Stores fn(current, *args, **kwargs) and returns it.\n\n"
     "When another thread stores first, fn is called again with the newer value, so fn may run\n"
     "several times: it must not have side effects."},
    {"watch", atom_watch, METH_O,
     "watch($self, fn, /)\n--\n\n"
     "Calls fn(old, new) after every change of this Atom from now on; returns fn.\n\n"
     "reset(), a successful compare_and_set() and swap() each call every watcher once, on the\n"
     "thread that made the change, after the change is visible to other threads. If a watcher\n"
     "raises, the others still run, the change stands, and the first exception propagates."},
    {"unwatch", atom_unwatch, METH_O,
     "unwatch($self, fn, /)\n--\n\nStops calling fn after changes; ValueError if it was not watching."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef atom_getset[] = {
    {"value", atom_value, nullptr, "The current value (same as deref()).", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMemberDef atom_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(AtomObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

// The text signature shows *args: Atom() holds a new empty PersistentMap, a default no
// expression inspect.signature reads can stand for. What Atom() takes is the line after it.
const char atom_doc[] =
    "Atom(*args, **kwargs)\n--\n\n"
    "A lock-free cell holding a persistent structure: Atom(initial=PersistentMap()).\n\n"
    "A cell holding a PersistentMap, PersistentSet or PersistentList that any number of threads\n"
    "read and update without locks: deref() never waits, and updates are compare-and-set\n"
    "(swap() retries with the newer value).";

PyType_Slot atom_slots[] = {
    {Py_tp_doc, const_cast<char*>(atom_doc)},
    {Py_tp_new, reinterpret_cast<void*>(atom_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(atom_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(atom_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(atom_clear)},
    {Py_tp_repr, reinterpret_cast<void*>(atom_repr)},
    {Py_tp_methods, atom_methods},
    {Py_tp_getset, atom_getset},
    {Py_tp_members, atom_members},
    {0, nullptr},
};

}  // namespace

int atom_current_root(PyObject* atom, object_trie::node** root, std::size_t* size) {
    if (Py_TYPE(atom)->tp_dealloc != atom_dealloc) {
        if (current_thread_state()) PyErr_SetString(PyExc_TypeError, "expected a pypersistent.Atom");
        return -1;
    }
    // No Python API here: the borrow keeps the stored map object alive, and its trie is
    // immutable, so retaining the root is all it takes.
    const bool ok = as_atom(atom)->cell->with_current([&](const object_ref& r) {
        if (!r.get() || !is_map(r.get())) return false;
        const object_map& map = reinterpret_cast<MapObject*>(r.get())->map;
        auto* node = const_cast<object_trie::node*>(map.root());
        if (node) object_trie::retain(node);
        *root = node;
        *size = map.size();
        return true;
    });
    if (!ok && current_thread_state()) {
        PyErr_SetString(PyExc_RuntimeError, "this Atom was cleared, or holds a structure other than a PersistentMap");
    }
    return ok ? 0 : -1;
}

PyType_Spec atom_spec = {
    "pypersistent.Atom",
    static_cast<int>(sizeof(AtomObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    atom_slots,
};

}  // namespace pypersistent::python
