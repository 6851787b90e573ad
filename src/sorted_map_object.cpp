// PersistentSortedDict (an immutable map ordered by its keys' `<`, on the persistent B+-tree of
// sorted_map.hpp), TransientSortedDict (its mutable builder), their iterator and the keys() /
// values() / items() views, all iterating in key order.
//
// Keys are ordered by Python's `<` (object_less, python_bridge.hpp): two keys are the same key
// when neither is less than the other. A `<` that raises propagates its exception and leaves
// every map unchanged; one that answers inconsistently can only misplace entries (lookups may
// miss them), never corrupt a version or crash (see "Hostile comparators" in sorted_map.hpp).
#include <algorithm>
#include <new>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "fill_support.hpp"
#include "gc_census.hpp"
#include "transient_support.hpp"

namespace pypersistent::python {
namespace {

using sorted_entry = object_sorted_map::value_type;
using sorted_iterator = object_sorted_map::iterator;

struct SortedObject {
    PyObject_HEAD
    object_sorted_map map;
    // -1 until computed; racing threads compute and store the same value.
    std::atomic<Py_hash_t> hash;
    PyObject* weakreflist;
    module_state* state;
};

// Thread-safety as TransientObject's (bindings.hpp): a critical section around every operation,
// and `busy` refusing a second user while keys' __lt__ suspends it.
struct TransientSortedObject {
    PyObject_HEAD
    object_sorted_transient* transient;  // nullptr once finished
    PyObject* frozen;                    // the PersistentSortedDict it was finished into
    bool busy;
    PyObject* weakreflist;
    module_state* state;
};

// Walks [first, last) of a map it holds, forwards or backwards. next() runs in a critical
// section on the iterator and moves the cursor before it allocates, as the map iterator's.
// Forwards, `cursor` is the next entry and `stop` the end; backwards, `cursor` is one past the
// next entry and `stop` the first. The walk stops at `stop`, which range() never puts before
// the start, whatever the comparator answered.
struct SortedIteratorObject {
    PyObject_HEAD
    PyObject* map;  // the PersistentSortedDict walked
    sorted_iterator cursor;
    sorted_iterator stop;
    view_kind kind;
    bool reverse;
};

struct SortedViewObject {
    PyObject_HEAD
    PyObject* map;
    view_kind kind;
};

SortedObject* as_sorted(PyObject* o) { return reinterpret_cast<SortedObject*>(o); }
TransientSortedObject* as_tsorted(PyObject* o) { return reinterpret_cast<TransientSortedObject*>(o); }
SortedIteratorObject* as_siter(PyObject* o) { return reinterpret_cast<SortedIteratorObject*>(o); }
SortedViewObject* as_sview(PyObject* o) { return reinterpret_cast<SortedViewObject*>(o); }

void sorted_dealloc(PyObject* self);
void tsorted_dealloc(PyObject* self);

bool is_psorted(PyObject* o) noexcept { return Py_TYPE(o)->tp_dealloc == sorted_dealloc; }
bool is_mapping(PyObject* o) { return PyType_HasFeature(Py_TYPE(o), Py_TPFLAGS_MAPPING); }

// The B+-tree's nodes for the cycle collector's census (gc_census.hpp): leaves hold entries,
// inner nodes hold separator keys (copies of keys, with their own references) and children.
struct sorted_node_traits {
    struct handle {
        const object_sorted_tree::node* node;
        unsigned height;
    };
    static bool null(handle n) noexcept { return n.node == nullptr; }
    static const void* key(handle n) noexcept { return n.node; }
    static std::uint32_t refs(handle n) noexcept { return n.node->refs.load(); }
    static int visit_own(handle n, visitproc visit, void* arg) {
        const unsigned c = n.node->count;
        if (n.height == 0) {
            const sorted_entry* es = object_sorted_tree::entries(n.node);
            for (unsigned i = 0; i < c; ++i) {
                Py_VISIT(es[i].first.object());
                Py_VISIT(es[i].second);
            }
        } else {
            const sorted_key* ks = object_sorted_tree::seps(n.node);
            for (unsigned i = 0; i + 1 < c; ++i) Py_VISIT(ks[i].object());
        }
        return 0;
    }
    template <class Edge>
    static int for_children(handle n, Edge&& edge) {
        if (n.height == 0) return 0;
        const auto* cs = object_sorted_tree::children(n.node);
        for (unsigned i = 0, c = n.node->count; i < c; ++i) {
            if (const int r = edge(handle{cs[i], n.height - 1})) return r;
        }
        return 0;
    }
};

int traverse_sorted(PyObject* holder, module_state* state, const object_sorted_tree::tree& t, visitproc visit,
                    void* arg) {
    const sorted_node_traits::handle root{t.root, t.height};
    return traverse_nodes<sorted_node_traits>(holder, state, &root, 1, visit, arg);
}

PyObject* new_sorted(PyTypeObject* type, module_state* state, object_sorted_map&& map) {
    auto* m = reinterpret_cast<SortedObject*>(type->tp_alloc(type, 0));
    if (!m) return nullptr;
    new (&m->map) object_sorted_map(std::move(map));
    new (&m->hash) std::atomic<Py_hash_t>(hash_not_computed);
    m->weakreflist = nullptr;
    m->state = state;
    return reinterpret_cast<PyObject*>(m);
}

// Returns the same object when the update changed nothing.
PyObject* sorted_or_self(PyObject* self, object_sorted_map&& result) {
    SortedObject* m = as_sorted(self);
    if (result.identical(m->map)) return Py_NewRef(self);
    return new_sorted(Py_TYPE(self), m->state, std::move(result));
}

PyObject* make_sorted_iterator(PyObject* map, sorted_iterator first, sorted_iterator last, view_kind kind,
                               bool reverse) {
    PyTypeObject* type = as_sorted(map)->state->sorted_iterator_type;
    auto* it = reinterpret_cast<SortedIteratorObject*>(type->tp_alloc(type, 0));
    if (!it) return nullptr;
    it->map = Py_NewRef(map);
    new (&it->cursor) sorted_iterator(reverse ? last : first);
    new (&it->stop) sorted_iterator(reverse ? first : last);
    it->kind = kind;
    it->reverse = reverse;
    return reinterpret_cast<PyObject*>(it);
}

PyObject* iterate_all(PyObject* map, view_kind kind, bool reverse) {
    const object_sorted_map& m = as_sorted(map)->map;
    return make_sorted_iterator(map, m.begin(), m.end(), kind, reverse);
}

PyObject* pair_of(const sorted_entry& e) { return PyTuple_Pack(2, e.first.object(), e.second); }

// ---- filling from Python input ----------------------------------------------------------------

// Passes everything `source` holds (a sorted dict, map, dict, object with keys(), or iterable of
// pairs), then the keyword arguments, to add(key, value). Returns false with a Python error set;
// may throw.
template <class Add>
bool fill_sorted_with(PyObject* source, PyObject* kwargs, Add&& add) {
    if (source) {
        if (is_psorted(source)) {
            for (const auto& e : as_sorted(source)->map) add(e.first.object(), e.second);
        } else if (is_map(source)) {
            for (const auto& e : reinterpret_cast<MapObject*>(source)->map) add(e.first, e.second);
        } else if (!fill_from_source(source, add)) {
            return false;
        }
    }
    if (kwargs && PyDict_GET_SIZE(kwargs) > 0) return fill_from_dict(kwargs, add);
    return true;
}

// Sets everything `source` holds and the keyword arguments in `t`, in their order.
bool fill_sorted(object_sorted_transient& t, PyObject* source, PyObject* kwargs) {
    return fill_sorted_with(source, kwargs, [&t](PyObject* key, PyObject* value) {
        t.set(key, value);
        return true;
    });
}

// A new map's pairs, gathered and then built in bulk: sorted by key (n log n comparisons, most of
// them decided by the keys' inline bits, far cheaper than a search per insert), then laid out
// by from_range in O(n). The pairs are held by strong references: the sort's `<` calls run user
// code, which may drop the source's own references.
class bulk_pairs {
public:
    bulk_pairs() = default;
    bulk_pairs(const bulk_pairs&) = delete;
    bulk_pairs& operator=(const bulk_pairs&) = delete;
    ~bulk_pairs() {
        for (const sorted_entry& e : pairs_) {
            deferred_releases::release(e.first.object());
            deferred_releases::release(e.second);
        }
    }

    bool add(PyObject* key, PyObject* value) {
        pairs_.emplace_back(key, value);
        Py_INCREF(key);
        Py_INCREF(value);
        return true;
    }

    // A stable merge sort of positions, so that of equal keys the later stays later (and wins in
    // from_range, as in repeated assignment). Whatever `<` answers, or if it raises, every index
    // stays in bounds: a merge only ever advances through its two runs. Two runs already in
    // order cost one comparison, so sorted input costs about n.
    object_sorted_map build() const {
        const std::size_t n = pairs_.size();
        std::vector<std::size_t> order(n), merged(n);
        for (std::size_t i = 0; i < n; ++i) order[i] = i;
        const auto before = [this](std::size_t a, std::size_t b) { return sorted_key_less{}(pairs_[a].first, pairs_[b].first); };
        for (std::size_t width = 1; width < n; width *= 2) {
            for (std::size_t lo = 0; lo < n; lo += 2 * width) {
                const std::size_t mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
                std::size_t i = lo, j = mid, k = lo;
                if (mid < hi && before(order[mid], order[mid - 1])) {
                    while (i < mid && j < hi) merged[k++] = before(order[j], order[i]) ? order[j++] : order[i++];
                }
                while (i < mid) merged[k++] = order[i++];
                while (j < hi) merged[k++] = order[j++];
            }
            order.swap(merged);
        }
        std::vector<sorted_entry> in_order;  // copies of the pairs: no references taken
        in_order.reserve(n);
        for (std::size_t i : order) in_order.push_back(pairs_[i]);
        return object_sorted_map::from_range(in_order.begin(), in_order.end());
    }

private:
    std::vector<sorted_entry> pairs_;
};

// ---- construction -------------------------------------------------------------------------------

PyObject* build_sorted(PyTypeObject* type, PyObject* source, PyObject* kwargs) {
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    if (source && is_psorted(source) && (!kwargs || PyDict_GET_SIZE(kwargs) == 0) && Py_TYPE(source) == type) {
        return Py_NewRef(source);
    }
    return guarded([&]() -> PyObject* {
        bulk_pairs pairs;
        if (!fill_sorted_with(source, kwargs, [&pairs](PyObject* key, PyObject* value) { return pairs.add(key, value); })) {
            return nullptr;
        }
        return new_sorted(type, state, pairs.build());
    });
}

PyObject* sorted_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    PyObject* source = nullptr;
    if (!PyArg_UnpackTuple(args, "PersistentSortedDict", 0, 1, &source)) return nullptr;
    return build_sorted(type, source, kwargs);
}

PyObject* sorted_create(PyObject* cls, PyObject* args, PyObject* kwargs) {
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError, "PersistentSortedDict.create() takes keyword arguments only");
        return nullptr;
    }
    return build_sorted(reinterpret_cast<PyTypeObject*>(cls), nullptr, kwargs);
}

PyObject* sorted_from_dict(PyObject* cls, PyObject* source) {
    return build_sorted(reinterpret_cast<PyTypeObject*>(cls), source, nullptr);
}

// ---- ranges ---------------------------------------------------------------------------------------

// A new map of the entries in [lo, hi) (a null bound is open); this map when that is all of it.
PyObject* range_map(PyObject* self, PyObject* lo, PyObject* hi) {
    SortedObject* m = as_sorted(self);
    return guarded([&]() -> PyObject* {
        // Shares every subtree inside the range: O(log^2 n) new nodes, no comparison after the bounds.
        const sorted_key lo_key(lo ? lo : Py_None), hi_key(hi ? hi : Py_None);
        object_sorted_map sub = m->map.subseq(lo ? &lo_key : nullptr, hi ? &hi_key : nullptr);
        if (sub.identical(m->map)) return Py_NewRef(self);
        return new_sorted(Py_TYPE(self), m->state, std::move(sub));
    });
}

// None stands for an open bound.
PyObject* bound_or_open(PyObject* o) { return o == Py_None ? nullptr : o; }

// m[lo:hi]: the entries with lo <= key < hi; a missing bound is open. No step.
PyObject* sorted_slice(PyObject* self, PyObject* slice) {
    auto* s = reinterpret_cast<PySliceObject*>(slice);
    if (s->step != Py_None) {
        PyErr_SetString(PyExc_ValueError, "PersistentSortedDict slices take no step: m[lo:hi] is the keys lo <= k < hi");
        return nullptr;
    }
    return range_map(self, bound_or_open(s->start), bound_or_open(s->stop));
}

// ---- protocols ------------------------------------------------------------------------------------

Py_ssize_t sorted_length(PyObject* self) { return static_cast<Py_ssize_t>(as_sorted(self)->map.size()); }

PyObject* sorted_subscript(PyObject* self, PyObject* key) {
    if (PySlice_Check(key)) return sorted_slice(self, key);
    return guarded([&]() -> PyObject* {
        PyObject* const* v = as_sorted(self)->map.find(key);
        if (!v) {
            set_key_error(key);
            return nullptr;
        }
        return Py_NewRef(*v);
    });
}

int sorted_contains(PyObject* self, PyObject* key) {
    try {
        return as_sorted(self)->map.contains(key) ? 1 : 0;
    } catch (const python_error&) {
        return -1;
    }
}

int sorted_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    return traverse_sorted(self, as_sorted(self)->state, as_sorted(self)->map.parts(), visit, arg);
}

PyObject* sorted_iter(PyObject* self) { return iterate_all(self, view_kind::keys, false); }

// PersistentMap's hash (map_object.cpp), computed from hash(key) instead of a cached hash:
// a PersistentSortedDict equals the PersistentMap (and dict) with the same items, so equal
// objects must hash equal across the two types.
Py_hash_t sorted_hash(PyObject* self) {
    SortedObject* m = as_sorted(self);
    const Py_hash_t cached = m->hash.load(std::memory_order_relaxed);
    if (cached != hash_not_computed) return cached;
    if (Py_EnterRecursiveCall(" while hashing a PersistentSortedDict")) return -1;
    std::uint64_t acc = 0x345678u + m->map.size() * 0x9E3779B97F4A7C15ull;
    for (const auto& e : m->map) {
        const Py_hash_t hk = PyObject_Hash(e.first.object());
        const Py_hash_t hv = hk == -1 ? -1 : PyObject_Hash(e.second);
        if (hv == -1) {
            Py_LeaveRecursiveCall();
            return -1;
        }
        std::uint64_t x = static_cast<std::uint64_t>(hk) ^ (static_cast<std::uint64_t>(hv) * 0xBF58476D1CE4E5B9ull);
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

// Whether `a` equals `other`: truth::error with an error set; nullopt-like `not_comparable`
// (returned through `comparable`) when `other` is not a mapping.
truth sorted_equals(SortedObject* a, PyObject* other, bool& comparable) {
    comparable = true;
    if (is_psorted(other)) {
        try {
            return truth_of_bool(
                a->map.equal(as_sorted(other)->map, object_sorted_map::equivalent_keys(), object_equal()));
        } catch (const python_error&) {
            return truth::error;
        }
    }
    if (!is_mapping(other)) {
        comparable = false;
        return truth::no;
    }
    const Py_ssize_t other_len = PyObject_Size(other);
    if (other_len < 0) return truth::error;
    if (static_cast<std::size_t>(other_len) != a->map.size()) return truth::no;
    for (const auto& e : a->map) {
        PyObject* theirs = PyObject_GetItem(other, e.first.object());
        if (!theirs) {
            if (PyErr_ExceptionMatches(PyExc_KeyError)) {
                PyErr_Clear();
                return truth::no;
            }
            return truth::error;
        }
        const int same = PyObject_RichCompareBool(e.second, theirs, Py_EQ);
        Py_DECREF(theirs);
        if (same <= 0) return truth_of(same);
    }
    return truth::yes;
}

PyObject* sorted_richcompare(PyObject* self, PyObject* other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    bool comparable = true;
    const truth eq = sorted_equals(as_sorted(self), other, comparable);
    if (eq == truth::error) return nullptr;
    if (!comparable) Py_RETURN_NOTIMPLEMENTED;
    return PyBool_FromLong((op == Py_EQ) == (eq == truth::yes));
}

PyObject* sorted_repr(PyObject* self) {
    const int entered = Py_ReprEnter(self);
    if (entered != 0) return entered > 0 ? PyUnicode_FromString("PersistentSortedDict({...})") : nullptr;
    PyObject* parts = PyList_New(0);
    PyObject* result = nullptr;
    if (parts) {
        bool ok = true;
        for (const auto& e : as_sorted(self)->map) {
            PyObject* piece = PyUnicode_FromFormat("%R: %R", e.first.object(), e.second);
            if (!piece || PyList_Append(parts, piece) < 0) ok = false;
            Py_XDECREF(piece);
            if (!ok) break;
        }
        if (ok) {
            PyObject* sep = PyUnicode_FromString(", ");
            PyObject* body = sep ? PyUnicode_Join(sep, parts) : nullptr;
            if (body) result = PyUnicode_FromFormat("PersistentSortedDict({%U})", body);
            Py_XDECREF(body);
            Py_XDECREF(sep);
        }
        Py_DECREF(parts);
    }
    Py_ReprLeave(self);
    return result;
}

// self | other, other | self: the right side wins, as dict's |.
PyObject* sorted_or(PyObject* left, PyObject* right) {
    if (is_psorted(left)) {
        if (!is_mapping(right)) Py_RETURN_NOTIMPLEMENTED;
        return guarded([&]() -> PyObject* {
            object_sorted_transient t = as_sorted(left)->map.transient();
            if (!fill_sorted(t, right, nullptr)) return nullptr;
            return sorted_or_self(left, t.persistent());
        });
    }
    if (!is_mapping(left)) Py_RETURN_NOTIMPLEMENTED;
    return guarded([&]() -> PyObject* {
        object_sorted_transient t;
        if (!fill_sorted(t, left, nullptr)) return nullptr;
        if (!fill_sorted(t, right, nullptr)) return nullptr;
        return new_sorted(Py_TYPE(right), as_sorted(right)->state, t.persistent());
    });
}

// ---- methods -------------------------------------------------------------------------------------

PyObject* sorted_assoc(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs != 2) return argument_count_error(name, "exactly 2 arguments", nargs);
    return guarded([&] { return sorted_or_self(self, as_sorted(self)->map.set(args[0], args[1])); });
}

PyObject* sorted_dissoc(PyObject* self, PyObject* key) {
    return guarded([&] { return sorted_or_self(self, as_sorted(self)->map.erase(key)); });
}

PyObject* sorted_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("PersistentSortedDict.get", "1 or 2 arguments", nargs);
    return guarded([&]() -> PyObject* {
        PyObject* const* v = as_sorted(self)->map.find(args[0]);
        if (v) return Py_NewRef(*v);
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    });
}

PyObject* sorted_contains_method(PyObject* self, PyObject* key) {
    const int r = sorted_contains(self, key);
    return r < 0 ? nullptr : PyBool_FromLong(r);
}

PyObject* sorted_update(PyObject* self, PyObject* args, PyObject* kwargs, const char* name) {
    const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) return argument_count_error(name, "at most 1 argument", nargs);
    PyObject* source = nargs == 1 ? PyTuple_GET_ITEM(args, 0) : nullptr;
    return guarded([&]() -> PyObject* {
        object_sorted_transient t = as_sorted(self)->map.transient();
        if (!fill_sorted(t, source, kwargs)) return nullptr;
        return sorted_or_self(self, t.persistent());
    });
}

PyObject* sorted_clear(PyObject* self, PyObject*) {
    if (as_sorted(self)->map.empty()) return Py_NewRef(self);
    return new_sorted(Py_TYPE(self), as_sorted(self)->state, object_sorted_map());
}

PyObject* sorted_copy(PyObject* self, PyObject*) { return Py_NewRef(self); }

// A list of one item per entry, in key order. The walk stops at the tree's end.
template <class Make>
PyObject* sorted_list(PyObject* self, Make make) {
    const object_sorted_map& map = as_sorted(self)->map;
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
    if (i != n && PyList_SetSlice(list, i, n, nullptr) < 0) {
        Py_DECREF(list);
        return nullptr;
    }
    return list;
}

PyObject* sorted_items_list(PyObject* self, PyObject*) { return sorted_list(self, pair_of); }
PyObject* sorted_keys_list(PyObject* self, PyObject*) {
    return sorted_list(self, [](const sorted_entry& e) { return Py_NewRef(e.first.object()); });
}
PyObject* sorted_values_list(PyObject* self, PyObject*) {
    return sorted_list(self, [](const sorted_entry& e) { return Py_NewRef(e.second); });
}

PyObject* sorted_dict(PyObject* self, PyObject*) {
    PyObject* d = PyDict_New();
    if (!d) return nullptr;
    for (const auto& e : as_sorted(self)->map) {
        if (PyDict_SetItem(d, e.first.object(), e.second) < 0) {
            Py_DECREF(d);
            return nullptr;
        }
    }
    return d;
}

PyObject* sorted_deepcopy(PyObject* self, PyObject* memo) {
    return deepcopy_through(Py_TYPE(self), sorted_items_list(self, nullptr), memo);
}

PyObject* sorted_reduce(PyObject* self, PyObject*) { return reduce_to(Py_TYPE(self), sorted_items_list(self, nullptr)); }

PyObject* make_sorted_view(PyObject* self, PyTypeObject* type, view_kind kind) {
    auto* v = reinterpret_cast<SortedViewObject*>(type->tp_alloc(type, 0));
    if (!v) return nullptr;
    v->map = Py_NewRef(self);
    v->kind = kind;
    return reinterpret_cast<PyObject*>(v);
}

PyObject* sorted_keys(PyObject* self, PyObject*) {
    return make_sorted_view(self, as_sorted(self)->state->sorted_keys_type, view_kind::keys);
}
PyObject* sorted_values(PyObject* self, PyObject*) {
    return make_sorted_view(self, as_sorted(self)->state->sorted_values_type, view_kind::values);
}
PyObject* sorted_items(PyObject* self, PyObject*) {
    return make_sorted_view(self, as_sorted(self)->state->sorted_items_type, view_kind::items);
}

PyObject* sorted_reversed(PyObject* self, PyObject*) { return iterate_all(self, view_kind::keys, true); }

PyObject* sorted_transient(PyObject* self, PyObject*) {
    SortedObject* m = as_sorted(self);
    return guarded([&] {
        return new_transient<TransientSortedObject>(m->state->transient_sorted_type, m->state,
                                                    new object_sorted_transient(m->map.transient()));
    });
}

// first() / last(): 2.0's, as a (key, value) tuple; RuntimeError on an empty map, as in 2.0.
PyObject* end_entry(const sorted_entry* e, const char* which) {
    if (!e) {
        PyErr_Format(PyExc_RuntimeError, "%s() called on an empty PersistentSortedDict", which);
        return nullptr;
    }
    return pair_of(*e);
}
PyObject* sorted_first(PyObject* self, PyObject*) { return end_entry(as_sorted(self)->map.first(), "first"); }
PyObject* sorted_last(PyObject* self, PyObject*) { return end_entry(as_sorted(self)->map.last(), "last"); }

// floor / ceiling / lower / higher: the (key, value) pair found, or default (None).
enum class nearest { floor, ceiling, lower, higher };

template <nearest Which>
PyObject* sorted_nearest(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs < 1 || nargs > 2) return argument_count_error(name, "1 or 2 arguments", nargs);
    return guarded([&]() -> PyObject* {
        const object_sorted_map& m = as_sorted(self)->map;
        const sorted_entry* e = Which == nearest::floor     ? m.floor(args[0])
                                : Which == nearest::ceiling ? m.ceiling(args[0])
                                : Which == nearest::lower   ? m.lower(args[0])
                                                            : m.higher(args[0]);
        if (e) return pair_of(*e);
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    });
}

PyObject* sorted_subseq(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs > 2) return argument_count_error(name, "at most 2 arguments", nargs);
    PyObject* lo = nargs > 0 ? bound_or_open(args[0]) : nullptr;
    PyObject* hi = nargs > 1 ? bound_or_open(args[1]) : nullptr;
    return range_map(self, lo, hi);
}

// irange(minimum=None, maximum=None, inclusive=(True, True), reverse=False): sortedcontainers'.
PyObject* sorted_irange(PyObject* self, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"minimum", "maximum", "inclusive", "reverse", nullptr};
    PyObject* minimum = Py_None;
    PyObject* maximum = Py_None;
    PyObject* inclusive = nullptr;
    int reverse = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOOp:irange", const_cast<char**>(keywords), &minimum, &maximum,
                                     &inclusive, &reverse)) {
        return nullptr;
    }
    bool include_min = true, include_max = true;
    if (inclusive) {
        PyObject* pair = PySequence_Tuple(inclusive);
        if (!pair) return nullptr;
        if (PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_ValueError, "irange(): inclusive must be a pair of booleans");
            return nullptr;
        }
        const int a = PyObject_IsTrue(PyTuple_GET_ITEM(pair, 0));
        const int b = a < 0 ? -1 : PyObject_IsTrue(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        if (b < 0) return nullptr;
        include_min = a != 0;
        include_max = b != 0;
    }
    return guarded([&]() -> PyObject* {
        const object_sorted_map& m = as_sorted(self)->map;
        sorted_iterator first = minimum == Py_None ? m.begin()
                                : include_min      ? m.lower_bound(minimum)
                                                   : m.upper_bound(minimum);
        sorted_iterator last = maximum == Py_None ? m.end()
                               : include_max      ? m.upper_bound(maximum)
                                                  : m.lower_bound(maximum);
        if (last.before(first)) last = first;
        return make_sorted_iterator(self, first, last, view_kind::keys, reverse != 0);
    });
}

// Collects a core diff: the entries come in key order, so each part is built at the end in
// O(k) by from_sorted, without comparing keys again. The maps diffed are alive for the whole
// call, so their entries are borrowed; the (old value, new value) pairs of `changed` are owned.
struct diff_collector {
    std::vector<sorted_entry> added_entries, removed_entries, changed_entries;
    diff_collector() = default;
    diff_collector(const diff_collector&) = delete;
    diff_collector& operator=(const diff_collector&) = delete;
    ~diff_collector() {
        for (auto& e : changed_entries) Py_DECREF(e.second);
    }
    void added(const sorted_entry& e) { added_entries.push_back(e); }
    void removed(const sorted_entry& e) { removed_entries.push_back(e); }
    void changed(const sorted_entry& a, const sorted_entry& b) {
        if (changed_entries.size() == changed_entries.capacity()) {  // so that emplace_back cannot throw
            changed_entries.reserve(2 * changed_entries.size() + 8);
        }
        PyObject* pair = PyTuple_Pack(2, a.second, b.second);
        if (!pair) throw python_error{};
        changed_entries.emplace_back(a.first, pair);
    }
};

// old.diff(new): MapDiff(added, removed, changed) of PersistentSortedDicts, by the core's diff:
// a merge walk over both maps in key order that skips every subtree the two versions share, so
// versions that differ in k keys cost about k log n (unrelated maps: one O(n + m) merge).
PyObject* sorted_diff(PyObject* self, PyObject* other) {
    if (!is_psorted(other)) {
        PyErr_Format(PyExc_TypeError, "PersistentSortedDict.diff() argument must be a PersistentSortedDict, not %.200s",
                     Py_TYPE(other)->tp_name);
        return nullptr;
    }
    module_state* state = as_sorted(self)->state;
    return guarded([&]() -> PyObject* {
        const object_sorted_map& a = as_sorted(self)->map;
        const object_sorted_map& b = as_sorted(other)->map;
        // The maps are immutable and held by this call, so the Python code the walk runs (`<`,
        // `==`) cannot change the nodes it stands on.
        diff_collector found;
        a.diff(b, found, object_equal());
        PyObject* result = PyStructSequence_New(state->map_diff_type);
        if (!result) return nullptr;
        const std::vector<sorted_entry>* parts[] = {&found.added_entries, &found.removed_entries,
                                                     &found.changed_entries};
        for (Py_ssize_t i = 0; i < 3; ++i) {
            PyObject* part = nullptr;
            try {
                part = new_sorted(state->sorted_map_type, state,
                                  object_sorted_map::from_sorted(parts[i]->begin(), parts[i]->end()));
            } catch (...) {
                Py_DECREF(result);
                throw;
            }
            if (!part) {
                Py_DECREF(result);
                return nullptr;
            }
            PyStructSequence_SetItem(result, i, part);
        }
        return result;
    });
}

#define PP_NEAREST(which, name) PP_NAMED_FASTCALL(sorted_nearest<nearest::which>, name)

PyMethodDef sorted_methods[] = {
    {"assoc", PP_NAMED_FASTCALL(sorted_assoc, "PersistentSortedDict.assoc"), METH_FASTCALL,
     "assoc($self, key, value, /)\n--\n\nA new map with key set to value."},
    {"set", PP_NAMED_FASTCALL(sorted_assoc, "PersistentSortedDict.set"), METH_FASTCALL,
     "set($self, key, value, /)\n--\n\nA new map with key set to value (same as assoc())."},
    {"dissoc", sorted_dissoc, METH_O, "dissoc($self, key, /)\n--\n\nA new map without key (this map if key is absent)."},
    {"delete", sorted_dissoc, METH_O, "delete($self, key, /)\n--\n\nA new map without key (same as dissoc())."},
    {"get", as_method(sorted_get), METH_FASTCALL,
     "get($self, key, default=None, /)\n--\n\nThe value for key if key is in the map, else default."},
    {"contains", sorted_contains_method, METH_O,
     "contains($self, key, /)\n--\n\nWhether key is in the map (same as key in self)."},
    {"update", PP_NAMED_KEYWORDS(sorted_update, "PersistentSortedDict.update"), METH_VARARGS | METH_KEYWORDS,
     "update($self, other=(), /, **kwargs)\n--\n\n"
     "A new map with the items of other (what dict.update accepts) and kwargs added."},
    {"merge", PP_NAMED_KEYWORDS(sorted_update, "PersistentSortedDict.merge"), METH_VARARGS | METH_KEYWORDS,
     "merge($self, other=(), /, **kwargs)\n--\n\nA new map with the items of other and kwargs added (same as update())."},
    {"clear", sorted_clear, METH_NOARGS, "clear($self, /)\n--\n\nAn empty map."},
    {"first", sorted_first, METH_NOARGS,
     "first($self, /)\n--\n\nThe (key, value) pair of the smallest key; RuntimeError if the map is empty."},
    {"last", sorted_last, METH_NOARGS,
     "last($self, /)\n--\n\nThe (key, value) pair of the largest key; RuntimeError if the map is empty."},
    {"floor", PP_NEAREST(floor, "PersistentSortedDict.floor"), METH_FASTCALL,
     "floor($self, key, default=None, /)\n--\n\nThe (key, value) pair of the largest key <= key, else default."},
    {"ceiling", PP_NEAREST(ceiling, "PersistentSortedDict.ceiling"), METH_FASTCALL,
     "ceiling($self, key, default=None, /)\n--\n\nThe (key, value) pair of the smallest key >= key, else default."},
    {"lower", PP_NEAREST(lower, "PersistentSortedDict.lower"), METH_FASTCALL,
     "lower($self, key, default=None, /)\n--\n\nThe (key, value) pair of the largest key < key, else default."},
    {"higher", PP_NEAREST(higher, "PersistentSortedDict.higher"), METH_FASTCALL,
     "higher($self, key, default=None, /)\n--\n\nThe (key, value) pair of the smallest key > key, else default."},
    {"subseq", PP_NAMED_FASTCALL(sorted_subseq, "PersistentSortedDict.subseq"), METH_FASTCALL,
     "subseq($self, start=None, end=None, /)\n--\n\n"
     "A new map of the entries with start <= key < end (same as self[start:end]; None is open)."},
    {"rsubseq", PP_NAMED_FASTCALL(sorted_subseq, "PersistentSortedDict.rsubseq"), METH_FASTCALL,
     "rsubseq($self, start=None, end=None, /)\n--\n\n"
     "The same map as subseq() (2.0's name; a map iterates in key order: use reversed() on it)."},
    {"irange", as_method(sorted_irange), METH_VARARGS | METH_KEYWORDS,
     "irange($self, /, minimum=None, maximum=None, inclusive=(True, True), reverse=False)\n--\n\n"
     "An iterator over the keys from minimum to maximum (None: unbounded), as sortedcontainers'."},
    {"diff", sorted_diff, METH_O,
     "diff($self, other, /)\n--\n\n"
     "What changed from this map to other: MapDiff(added, removed, changed) of PersistentSortedDicts.\n\n"
     "changed maps each key whose values differ (neither the same object nor ==) to the pair\n"
     "(old value, new value). Subtrees the two versions share are skipped: versions that differ\n"
     "in k keys cost about k log n."},
    {"copy", sorted_copy, METH_NOARGS, "copy($self, /)\n--\n\nThis map itself: it is immutable."},
    {"__copy__", sorted_copy, METH_NOARGS, "__copy__($self, /)\n--\n\nThis map itself: it is immutable."},
    {"__deepcopy__", sorted_deepcopy, METH_O,
     "__deepcopy__($self, memo, /)\n--\n\nA map of deep copies of the keys and values."},
    {"__reduce__", sorted_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickling support: the map is rebuilt from its (key, value) pairs."},
    {"__reversed__", sorted_reversed, METH_NOARGS,
     "__reversed__($self, /)\n--\n\nAn iterator over the keys, largest first."},
    {"__sizeof__", object_sizeof, METH_NOARGS, sizeof_doc},
    {"dict", sorted_dict, METH_NOARGS, "dict($self, /)\n--\n\nA dict of the items, in key order."},
    {"items_list", sorted_items_list, METH_NOARGS,
     "items_list($self, /)\n--\n\nA list of the (key, value) pairs, in key order."},
    {"keys_list", sorted_keys_list, METH_NOARGS, "keys_list($self, /)\n--\n\nA list of the keys, in order."},
    {"values_list", sorted_values_list, METH_NOARGS,
     "values_list($self, /)\n--\n\nA list of the values, in key order."},
    {"keys", sorted_keys, METH_NOARGS, "keys($self, /)\n--\n\nA set-like view of the keys, in order."},
    {"values", sorted_values, METH_NOARGS, "values($self, /)\n--\n\nA view of the values, in key order."},
    {"items", sorted_items, METH_NOARGS,
     "items($self, /)\n--\n\nA set-like view of the (key, value) pairs, in key order."},
    {"transient", sorted_transient, METH_NOARGS,
     "transient($self, /)\n--\n\n"
     "A TransientSortedDict (a mutable builder) starting from this map; its persistent() freezes it in O(1)."},
    {"create", as_method(sorted_create), METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "create($type, /, **kwargs)\n--\n\nA map of the keyword arguments."},
    {"from_dict", sorted_from_dict, METH_O | METH_CLASS,
     "from_dict($type, mapping, /)\n--\n\nA map of the items of mapping (or of an iterable of pairs)."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef sorted_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SortedObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

const char sorted_doc[] =
    "PersistentSortedDict(mapping_or_pairs=(), /, **kwargs)\n--\n\n"
    "An immutable map ordered by its keys (a persistent B+-tree).\n\n"
    "Made from a mapping or an iterable of (key, value) pairs and keyword arguments, as dict is.\n"
    "Keys are ordered by Python's <, and two keys are the same key when neither is < the other.\n"
    "Iteration, keys(), values() and items() go in key order; m[lo:hi] and subseq() take ranges,\n"
    "floor()/ceiling()/lower()/higher() find neighbours, first()/last() the ends. Every update\n"
    "returns a new map sharing all untouched nodes with the old one.";

PyType_Slot sorted_slots[] = {
    {Py_tp_doc, const_cast<char*>(sorted_doc)},
    {Py_tp_new, reinterpret_cast<void*>(sorted_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(sorted_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(sorted_traverse)},
    {Py_tp_hash, reinterpret_cast<void*>(sorted_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(sorted_richcompare)},
    {Py_tp_iter, reinterpret_cast<void*>(sorted_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(sorted_repr)},
    {Py_tp_methods, sorted_methods},
    {Py_tp_members, sorted_members},
    {Py_mp_length, reinterpret_cast<void*>(sorted_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(sorted_subscript)},
    {Py_sq_contains, reinterpret_cast<void*>(sorted_contains)},
    {Py_nb_or, reinterpret_cast<void*>(sorted_or)},
    {0, nullptr},
};

void sorted_dealloc(PyObject* self) {
    dealloc_structure<SortedObject>(self, sorted_dealloc, [](SortedObject& m) {
        m.map.~object_sorted_map();
        m.hash.~atomic();
    });
}

// ---- iterator --------------------------------------------------------------------------------------

PyObject* siter_next(PyObject* self) {
    SortedIteratorObject* it = as_siter(self);
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    const view_kind kind = it->kind;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (it->cursor != it->stop) {
        if (it->reverse) --it->cursor;
        const sorted_entry& entry = *it->cursor;
        if (kind != view_kind::values) key = Py_NewRef(entry.first.object());
        if (kind != view_kind::keys) value = Py_NewRef(entry.second);
        if (!it->reverse) ++it->cursor;
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

int siter_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(as_siter(self)->map);
    return 0;
}

void siter_dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_XDECREF(as_siter(self)->map);
    type->tp_free(self);
    Py_DECREF(type);
}

PyType_Slot siter_slots[] = {
    {Py_tp_doc, const_cast<char*>("An iterator over a PersistentSortedDict's keys, values or items, in key order.")},
    {Py_tp_dealloc, reinterpret_cast<void*>(siter_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(siter_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(PyObject_SelfIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(siter_next)},
    {0, nullptr},
};

// ---- views -------------------------------------------------------------------------------------------

Py_ssize_t sview_length(PyObject* self) { return sorted_length(as_sview(self)->map); }
PyObject* sview_iter(PyObject* self) { return iterate_all(as_sview(self)->map, as_sview(self)->kind, false); }
PyObject* sview_reversed(PyObject* self, PyObject*) {
    return iterate_all(as_sview(self)->map, as_sview(self)->kind, true);
}

int skeys_contains(PyObject* self, PyObject* key) { return sorted_contains(as_sview(self)->map, key); }

int sitems_contains(PyObject* self, PyObject* item) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) return 0;
    try {
        PyObject* const* v = as_sorted(as_sview(self)->map)->map.find(PyTuple_GET_ITEM(item, 0));
        if (!v) return 0;
        PyObject* value = Py_NewRef(*v);
        const int r = PyObject_RichCompareBool(value, PyTuple_GET_ITEM(item, 1), Py_EQ);
        Py_DECREF(value);
        return r;
    } catch (const python_error&) {
        return -1;
    }
}

int svalues_contains(PyObject* self, PyObject* value) {
    for (const auto& e : as_sorted(as_sview(self)->map)->map) {
        const int r = PyObject_RichCompareBool(e.second, value, Py_EQ);
        if (r != 0) return r;
    }
    return 0;
}

// Set operations and comparisons as dict views': through a set of the left operand / membership.
PyObject* sview_set_operation(PyObject* left, PyObject* right, const char* method) {
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
PyObject* sview_and(PyObject* a, PyObject* b) { return sview_set_operation(a, b, "intersection_update"); }
PyObject* sview_or(PyObject* a, PyObject* b) { return sview_set_operation(a, b, "update"); }
PyObject* sview_sub(PyObject* a, PyObject* b) { return sview_set_operation(a, b, "difference_update"); }
PyObject* sview_xor(PyObject* a, PyObject* b) { return sview_set_operation(a, b, "symmetric_difference_update"); }

truth all_in(PyObject* a, PyObject* b) {
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

PyObject* sview_richcompare(PyObject* self, PyObject* other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    const bool set_like = PyAnySet_Check(other) || PyDictViewSet_Check(other) ||
                          (Py_TYPE(other)->tp_richcompare == sview_richcompare &&
                           as_sview(other)->kind != view_kind::values);
    if (!set_like) Py_RETURN_NOTIMPLEMENTED;
    const Py_ssize_t mine = PyObject_Size(self);
    const Py_ssize_t theirs = PyObject_Size(other);
    if (mine < 0 || theirs < 0) return nullptr;
    truth result = mine == theirs ? all_in(self, other) : truth::no;
    if (result == truth::error) return nullptr;
    return PyBool_FromLong((op == Py_EQ) == (result == truth::yes));
}

PyObject* sview_repr(PyObject* self) {
    const int entered = Py_ReprEnter(self);
    if (entered != 0) return entered > 0 ? PyUnicode_FromString("...") : nullptr;
    PyObject* list = PySequence_List(self);
    PyObject* result = nullptr;
    if (list) {
        static const char* const names[] = {"PersistentSortedDictKeys", "PersistentSortedDictValues",
                                            "PersistentSortedDictItems"};
        result = PyUnicode_FromFormat("%s(%R)", names[static_cast<int>(as_sview(self)->kind)], list);
        Py_DECREF(list);
    }
    Py_ReprLeave(self);
    return result;
}

PyObject* sview_mapping(PyObject* self, void*) { return Py_NewRef(as_sview(self)->map); }

int sview_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(as_sview(self)->map);
    return 0;
}

void sview_dealloc(PyObject* self) {
    PyTypeObject* type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_XDECREF(as_sview(self)->map);
    type->tp_free(self);
    Py_DECREF(type);
}

PyMethodDef sview_methods[] = {
    {"__reversed__", sview_reversed, METH_NOARGS, "__reversed__($self, /)\n--\n\nAn iterator in descending key order."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef sview_getset[] = {
    {"mapping", sview_mapping, nullptr, "The map this view reflects.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

constexpr char skeys_doc[] = "A set-like view of a PersistentSortedDict's keys, in order (what keys() returns).";
constexpr char sitems_doc[] =
    "A set-like view of a PersistentSortedDict's (key, value) pairs, in key order (what items() returns).";

template <int (*Contains)(PyObject*, PyObject*), const char* Doc>
PyType_Slot sset_view_slots[] = {
    {Py_tp_doc, const_cast<char*>(Doc)},
    {Py_tp_dealloc, reinterpret_cast<void*>(sview_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(sview_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(sview_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(sview_repr)},
    {Py_tp_richcompare, reinterpret_cast<void*>(sview_richcompare)},
    {Py_tp_methods, sview_methods},
    {Py_tp_getset, sview_getset},
    {Py_sq_length, reinterpret_cast<void*>(sview_length)},
    {Py_sq_contains, reinterpret_cast<void*>(Contains)},
    {Py_nb_and, reinterpret_cast<void*>(sview_and)},
    {Py_nb_or, reinterpret_cast<void*>(sview_or)},
    {Py_nb_subtract, reinterpret_cast<void*>(sview_sub)},
    {Py_nb_xor, reinterpret_cast<void*>(sview_xor)},
    {0, nullptr},
};

PyType_Slot svalues_slots[] = {
    {Py_tp_doc, const_cast<char*>("A view of a PersistentSortedDict's values, in key order (what values() returns).")},
    {Py_tp_dealloc, reinterpret_cast<void*>(sview_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(sview_traverse)},
    {Py_tp_iter, reinterpret_cast<void*>(sview_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(sview_repr)},
    {Py_tp_methods, sview_methods},
    {Py_tp_getset, sview_getset},
    {Py_sq_length, reinterpret_cast<void*>(sview_length)},
    {Py_sq_contains, reinterpret_cast<void*>(svalues_contains)},
    {0, nullptr},
};

// ---- TransientSortedDict ---------------------------------------------------------------------------

constexpr const char* tname = "TransientSortedDict";

template <class R, class F>
R locked(PyObject* self, R failed, F&& body) {
    return locked_transient<TransientSortedObject>(self, tname, failed, std::forward<F>(body));
}

PyObject* lookup(object_sorted_transient& t, PyObject* key, PyObject* fallback) {
    PyObject* const* v = t.find(key);
    if (v) return Py_NewRef(*v);
    if (fallback) return Py_NewRef(fallback);
    set_key_error(key);
    return nullptr;
}

Py_ssize_t tsorted_length(PyObject* self) {
    return locked<Py_ssize_t>(self, -1, [](object_sorted_transient& t) { return static_cast<Py_ssize_t>(t.size()); });
}

PyObject* tsorted_subscript(PyObject* self, PyObject* key) {
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) { return lookup(t, key, nullptr); });
}

int tsorted_ass_subscript(PyObject* self, PyObject* key, PyObject* value) {
    return locked<int>(self, -1, [&](object_sorted_transient& t) -> int {
        if (value) {
            t.set(key, value);
            return 0;
        }
        if (t.erase(key)) return 0;
        set_key_error(key);
        return -1;
    });
}

int tsorted_contains(PyObject* self, PyObject* key) {
    return locked<int>(self, -1, [&](object_sorted_transient& t) -> int { return t.contains(key) ? 1 : 0; });
}

PyObject* tsnapshot(PyObject* self) {
    module_state* state = as_tsorted(self)->state;
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) {
        return new_sorted(state->sorted_map_type, state, t.persistent());
    });
}

PyObject* tsorted_iter(PyObject* self) {
    PyObject* snap = tsnapshot(self);
    if (!snap) return nullptr;
    PyObject* it = iterate_all(snap, view_kind::keys, false);
    Py_DECREF(snap);
    return it;
}

PyObject* tsorted_reversed(PyObject* self, PyObject*) {
    PyObject* snap = tsnapshot(self);
    if (!snap) return nullptr;
    PyObject* it = iterate_all(snap, view_kind::keys, true);
    Py_DECREF(snap);
    return it;
}

PyObject* tsorted_assoc(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs != 2) return argument_count_error(name, "exactly 2 arguments", nargs);
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) -> PyObject* {
        t.set(args[0], args[1]);
        return Py_NewRef(self);
    });
}

PyObject* tsorted_dissoc(PyObject* self, PyObject* key) {
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) -> PyObject* {
        t.erase(key);
        return Py_NewRef(self);
    });
}

PyObject* tsorted_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("TransientSortedDict.get", "1 or 2 arguments", nargs);
    PyObject* fallback = nargs == 2 ? args[1] : Py_None;
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) { return lookup(t, args[0], fallback); });
}

PyObject* tsorted_contains_method(PyObject* self, PyObject* key) {
    const int r = tsorted_contains(self, key);
    return r < 0 ? nullptr : PyBool_FromLong(r);
}

PyObject* tsorted_update(PyObject* self, PyObject* args, PyObject* kwargs) {
    const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) return argument_count_error("TransientSortedDict.update", "at most 1 argument", nargs);
    PyObject* source = nargs == 1 ? PyTuple_GET_ITEM(args, 0) : nullptr;
    // A transient source (this one included) is read through a snapshot taken first.
    PyObject* frozen = nullptr;
    if (source && Py_TYPE(source)->tp_dealloc == tsorted_dealloc) {
        frozen = tsnapshot(source);
        if (!frozen) return nullptr;
        source = frozen;
    }
    PyObject* result = locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) {
        return fill_sorted(t, source, kwargs) ? Py_NewRef(self) : nullptr;
    });
    Py_XDECREF(frozen);
    return result;
}

PyObject* tfreeze(PyObject* self, object_sorted_transient& t) {
    module_state* state = as_tsorted(self)->state;
    return new_sorted(state->sorted_map_type, state, t.persistent());
}

PyObject* tsorted_persistent(PyObject* self, PyObject*) {
    return finish_transient<TransientSortedObject>(self, tname,
                                                   [&](object_sorted_transient& t) { return tfreeze(self, t); });
}

PyObject* tsorted_enter(PyObject* self, PyObject*) { return Py_NewRef(self); }

PyObject* tsorted_exit(PyObject* self, PyObject* const*, Py_ssize_t nargs) {
    if (nargs != 3) return argument_count_error("TransientSortedDict.__exit__", "exactly 3 arguments", nargs);
    return exit_transient<TransientSortedObject>(self, tname,
                                                 [&](object_sorted_transient& t) { return tfreeze(self, t); });
}

PyObject* tsorted_repr(PyObject* self) { return repr_transient<TransientSortedObject>(self, tname, tsnapshot); }

PyObject* tsorted_pop(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("TransientSortedDict.pop", "1 or 2 arguments", nargs);
    PyObject* key = args[0];
    PyObject* fallback = nargs == 2 ? args[1] : nullptr;
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) -> PyObject* {
        PyObject* const* v = t.find(key);
        if (!v) {
            if (fallback) return Py_NewRef(fallback);
            set_key_error(key);
            return nullptr;
        }
        PyObject* value = Py_NewRef(*v);
        try {
            t.erase(key);
        } catch (...) {
            Py_DECREF(value);
            throw;
        }
        return value;
    });
}

// popitem(): removes and returns the pair of the largest key (sortedcontainers' default).
PyObject* tsorted_popitem(PyObject* self, PyObject*) {
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) -> PyObject* {
        const sorted_entry* e = t.last();
        if (!e) {
            PyErr_SetString(PyExc_KeyError, "popitem(): TransientSortedDict is empty");
            return nullptr;
        }
        PyObject* pair = pair_of(*e);
        if (!pair) return nullptr;
        bool removed = false;
        try {
            // The entry's own key: the comparisons find it unless `<` answers inconsistently.
            removed = t.erase(PyTuple_GET_ITEM(pair, 0));
        } catch (...) {
            Py_DECREF(pair);
            throw;
        }
        if (!removed) {  // never claim a removal that did not happen (a `while t: t.popitem()` loop)
            Py_DECREF(pair);
            PyErr_SetString(PyExc_RuntimeError,
                            "popitem(): the largest key was not found again (its __lt__ answers inconsistently)");
            return nullptr;
        }
        return pair;
    });
}

PyObject* tsorted_setdefault(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("TransientSortedDict.setdefault", "1 or 2 arguments", nargs);
    PyObject* key = args[0];
    PyObject* fallback = nargs == 2 ? args[1] : Py_None;
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) -> PyObject* {
        if (PyObject* const* v = t.find(key)) return Py_NewRef(*v);
        t.set(key, fallback);
        return Py_NewRef(fallback);
    });
}

template <bool Last>
PyObject* tsorted_end(PyObject* self, PyObject*) {
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) -> PyObject* {
        return end_entry(Last ? t.last() : t.first(), Last ? "last" : "first");
    });
}

PyObject* tsorted_clear_method(PyObject* self, PyObject*) {
    TransientSortedObject* obj = as_tsorted(self);
    return guarded([&]() -> PyObject* {
        auto* fresh = new object_sorted_transient();
        object_sorted_transient* old = nullptr;
        const bool swapped = locked<bool>(self, false, [&](object_sorted_transient&) {
            old = obj->transient;
            obj->transient = fresh;
            return true;
        });
        delete (swapped ? old : fresh);
        return swapped ? Py_NewRef(Py_None) : nullptr;
    });
}

PyObject* tsorted_copy(PyObject* self, PyObject*) {
    TransientSortedObject* obj = as_tsorted(self);
    return locked<PyObject*>(self, nullptr, [&](object_sorted_transient& t) {
        return new_transient<TransientSortedObject>(Py_TYPE(self), obj->state,
                                                    new object_sorted_transient(t.persistent().transient()));
    });
}

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
PyObject* tsorted_keys(PyObject* self, PyObject*) { return abc_view(self, "KeysView"); }
PyObject* tsorted_values(PyObject* self, PyObject*) { return abc_view(self, "ValuesView"); }
PyObject* tsorted_items(PyObject* self, PyObject*) { return abc_view(self, "ItemsView"); }

PyObject* tsorted_richcompare(PyObject* self, PyObject* other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    PyObject* mine = tsnapshot(self);
    if (!mine) return nullptr;
    PyObject* theirs = Py_TYPE(other) == Py_TYPE(self) ? tsnapshot(other) : Py_NewRef(other);
    PyObject* result = theirs ? PyObject_RichCompare(mine, theirs, op) : nullptr;
    Py_DECREF(mine);
    Py_XDECREF(theirs);
    return result;
}

int tsorted_traverse(PyObject* self, visitproc visit, void* arg) {
    Py_VISIT(Py_TYPE(self));
    TransientSortedObject* obj = as_tsorted(self);
    if (const int r = visit_frozen<TransientSortedObject>(self, visit, arg)) return r;
    if (!obj->transient) return 0;
    return traverse_sorted(self, obj->state, obj->transient->parts(), visit, arg);
}

int tsorted_clear(PyObject* self) { return clear_transient<TransientSortedObject>(self); }

PyObject* tsorted_new(PyTypeObject*, PyObject*, PyObject*) {
    PyErr_SetString(PyExc_TypeError,
                    "TransientSortedDict cannot be created directly: use PersistentSortedDict.transient()");
    return nullptr;
}

PyMethodDef tsorted_methods[] = {
    {"assoc", PP_NAMED_FASTCALL(tsorted_assoc, "TransientSortedDict.assoc"), METH_FASTCALL,
     "assoc($self, key, value, /)\n--\n\nSets key to value in place; returns this transient."},
    {"set", PP_NAMED_FASTCALL(tsorted_assoc, "TransientSortedDict.set"), METH_FASTCALL,
     "set($self, key, value, /)\n--\n\nSets key to value in place; returns this transient (same as assoc())."},
    {"dissoc", tsorted_dissoc, METH_O, "dissoc($self, key, /)\n--\n\nRemoves key in place if present; returns this transient."},
    {"delete", tsorted_dissoc, METH_O,
     "delete($self, key, /)\n--\n\nRemoves key in place if present; returns this transient (same as dissoc())."},
    {"get", as_method(tsorted_get), METH_FASTCALL,
     "get($self, key, default=None, /)\n--\n\nThe value for key if key is in the transient, else default."},
    {"contains", tsorted_contains_method, METH_O,
     "contains($self, key, /)\n--\n\nWhether key is in the transient (same as key in self)."},
    {"update", as_method(tsorted_update), METH_VARARGS | METH_KEYWORDS,
     "update($self, other=(), /, **kwargs)\n--\n\n"
     "Adds the items of other (what dict.update accepts) and kwargs in place; returns this transient."},
    {"persistent", tsorted_persistent, METH_NOARGS,
     "persistent($self, /)\n--\n\n"
     "Freezes the contents into a PersistentSortedDict in O(1) and finishes the transient.\n\n"
     "So does the end of its with-block: edits raise RuntimeError afterwards, and persistent()\n"
     "returns the same PersistentSortedDict again."},
    {"pop", as_method(tsorted_pop), METH_FASTCALL,
     "pop($self, key, /, *default)\n--\n\n"
     "Removes key and returns its value; if key is absent, returns default if given, else raises KeyError."},
    {"popitem", tsorted_popitem, METH_NOARGS,
     "popitem($self, /)\n--\n\nRemoves and returns the (key, value) pair of the largest key; KeyError if empty."},
    {"setdefault", as_method(tsorted_setdefault), METH_FASTCALL,
     "setdefault($self, key, default=None, /)\n--\n\nThe value of key, after setting it to default if key is absent."},
    {"first", tsorted_end<false>, METH_NOARGS,
     "first($self, /)\n--\n\nThe (key, value) pair of the smallest key; RuntimeError if empty."},
    {"last", tsorted_end<true>, METH_NOARGS,
     "last($self, /)\n--\n\nThe (key, value) pair of the largest key; RuntimeError if empty."},
    {"clear", tsorted_clear_method, METH_NOARGS, "clear($self, /)\n--\n\nRemoves every item in place."},
    {"copy", tsorted_copy, METH_NOARGS, "copy($self, /)\n--\n\nA new TransientSortedDict with the same items, made in O(1)."},
    {"keys", tsorted_keys, METH_NOARGS, "keys($self, /)\n--\n\nA live view of the keys."},
    {"values", tsorted_values, METH_NOARGS, "values($self, /)\n--\n\nA live view of the values."},
    {"items", tsorted_items, METH_NOARGS, "items($self, /)\n--\n\nA live view of the (key, value) pairs."},
    {"__reversed__", tsorted_reversed, METH_NOARGS,
     "__reversed__($self, /)\n--\n\nAn iterator over (a snapshot of) the keys, largest first."},
    {"__enter__", tsorted_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nThis transient; the end of the with-block finishes it as persistent() does."},
    {"__exit__", as_method(tsorted_exit), METH_FASTCALL,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\n"
     "Finishes the transient as persistent() does; returns False (an exception propagates)."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef tsorted_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TransientSortedObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot tsorted_slots[] = {
    {Py_tp_doc, const_cast<char*>("TransientSortedDict()\n--\n\n"
                                  "A mutable builder made by PersistentSortedDict.transient(), not called directly.\n\n"
                                  "A MutableMapping in key order whose persistent() freezes the contents into a\n"
                                  "PersistentSortedDict in O(1).")},
    {Py_tp_new, reinterpret_cast<void*>(tsorted_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(tsorted_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(tsorted_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(tsorted_clear)},
    {Py_tp_iter, reinterpret_cast<void*>(tsorted_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(tsorted_repr)},
    {Py_tp_richcompare, reinterpret_cast<void*>(tsorted_richcompare)},
    {Py_tp_methods, tsorted_methods},
    {Py_tp_members, tsorted_members},
    {Py_mp_length, reinterpret_cast<void*>(tsorted_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(tsorted_subscript)},
    {Py_mp_ass_subscript, reinterpret_cast<void*>(tsorted_ass_subscript)},
    {Py_sq_contains, reinterpret_cast<void*>(tsorted_contains)},
    {0, nullptr},
};

void tsorted_dealloc(PyObject* self) { dealloc_transient<TransientSortedObject>(self, tsorted_dealloc); }

constexpr unsigned long view_flags =
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION;

}  // namespace

bool is_sorted_map(PyObject* o) noexcept { return is_psorted(o); }

PyType_Spec sorted_map_spec = {
    "pypersistent.PersistentSortedDict",
    static_cast<int>(sizeof(SortedObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_MAPPING | Py_TPFLAGS_IMMUTABLETYPE,
    sorted_slots,
};
PyType_Spec transient_sorted_spec = {
    "pypersistent.TransientSortedDict",
    static_cast<int>(sizeof(TransientSortedObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    tsorted_slots,
};
PyType_Spec sorted_iterator_spec = {"pypersistent.PersistentSortedDictIterator",
                                    static_cast<int>(sizeof(SortedIteratorObject)), 0, view_flags, siter_slots};
PyType_Spec sorted_keys_spec = {"pypersistent.PersistentSortedDictKeys", static_cast<int>(sizeof(SortedViewObject)), 0,
                                view_flags, sset_view_slots<skeys_contains, skeys_doc>};
PyType_Spec sorted_values_spec = {"pypersistent.PersistentSortedDictValues",
                                  static_cast<int>(sizeof(SortedViewObject)), 0, view_flags, svalues_slots};
PyType_Spec sorted_items_spec = {"pypersistent.PersistentSortedDictItems", static_cast<int>(sizeof(SortedViewObject)),
                                 0, view_flags, sset_view_slots<sitems_contains, sitems_doc>};

}  // namespace pypersistent::python
