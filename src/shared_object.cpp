// SharedMap, TransientSharedMap and SharedAtom: the interpreter-neutral map (neutral_value.hpp)
// for Python.
//
// A SharedMap holds a pypersistent::shared_map: keys and values are neutral values (None, bool,
// int, float, str, bytes, tuples of these, nested maps), which hold no PyObject*, so the nodes
// belong to no interpreter. Reading converts to fresh Python objects, except that m[k] and get()
// hand out the interpreter's cached object for a short str or an int they returned before
// (shared_value_cache.hpp); writing converts Python objects of the exact allowed types (see
// to_neutral). SharedAtom(name) opens a process-wide
// named cell (shared_cell_registry.hpp): every interpreter of the process that opens the same
// name sees the same cell, which is how a map is handed from one interpreter to another in O(1).
//
// Conversion rules (Python -> neutral):
//   * exact types only when storing: None, bool, int, float, str, bytes, tuple, SharedMap.
//     Subclasses (IntEnum, str subclasses, named tuples...) raise TypeError: converting them
//     would silently lose their type (and possibly their __eq__/__hash__); convert them first.
//   * lookups (m[k], k in m, get, delete) accept subclasses of int, float, str, bytes and tuple
//     and look them up by their base value, as dict would find them for well-behaved
//     subclasses. A hashable key of another type (Fraction, Decimal...) is simply absent; an
//     unhashable one raises TypeError as dict does.
//   * ints of any size; str with lone surrogates (stored as "surrogatepass" UTF-8).
//   * 1 == 1.0 == True are one key, and all NaNs are one key (the core's choice: a neutral value
//     has no identity), unlike dict, which keeps distinct NaN objects apart.
//
// Thread safety: SharedMap objects are immutable (the hash cache is an atomic, idempotent
// store); a SharedAtom is immutable after creation and its cell operations are lock-free in the
// core; iterators and transients lock themselves (critical sections) like the other types.
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <pypersistent/shared_cell_registry.hpp>

#include "bindings.hpp"
#include "fill_support.hpp"
#include "shared_object.hpp"
#include "transient_support.hpp"

namespace pypersistent::python {
namespace {

using pypersistent::neutral_probe;
using pypersistent::neutral_value;
using pypersistent::shared_cell_registry;
using pypersistent::shared_map;
using pypersistent::shared_transient;
using shared_iterator = shared_map::iterator;

// ---- object layouts ----------------------------------------------------------------------

struct SharedMapObject {
    PyObject_HEAD
    shared_map map;  // set once by new_shared, never changed: `values` keys on its nodes' addresses
    std::atomic<Py_hash_t> hash;  // hash_not_computed until computed
    PyObject* weakreflist;
    module_state* state;
    handle_value_cache values;  // see shared_value_cache.hpp
};

struct SharedIteratorObject {
    PyObject_HEAD
    PyObject* owner;  // the SharedMap (strong)
    shared_map::iterator cursor;
    Py_ssize_t remaining;
};

struct TransientSharedObject {
    PyObject_HEAD
    shared_transient* transient;  // nullptr once finished
    PyObject* frozen;             // the SharedMap it was finished into
    bool busy;
    PyObject* weakreflist;
    module_state* state;
};

struct SharedAtomObject {
    PyObject_HEAD
    shared_cell_registry::handle cell;
    PyObject* name;  // str
    PyObject* weakreflist;
    module_state* state;
};

constexpr const char* transient_name = "TransientSharedMap";

SharedMapObject* as_shared(PyObject* o) { return reinterpret_cast<SharedMapObject*>(o); }

void shared_dealloc(PyObject* self);
void iterator_dealloc(PyObject* self);

bool is_shared_map(PyObject* o) noexcept { return Py_TYPE(o)->tp_dealloc == shared_dealloc; }
bool is_mapping(PyObject* o) { return PyType_HasFeature(Py_TYPE(o), Py_TPFLAGS_MAPPING); }

// Tuples and maps nested too deeply for the core to compare or hash (neutral_nesting_error):
// Python's RecursionError, as for deeply nested dicts.
void set_nesting_error() {
    PyErr_SetString(PyExc_RecursionError, "maximum recursion depth exceeded comparing or hashing nested SharedMap values");
}

// Runs body, turning C++ exceptions into Python errors.
template <class R, class F>
R guard(R failed, F&& body) {
    try {
        return body();
    } catch (const python_error&) {
        return failed;
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
        return failed;
    } catch (const neutral_nesting_error&) {
        set_nesting_error();
        return failed;
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
        return failed;
    }
}
template <class F>
PyObject* guard(F&& body) {
    return guard<PyObject*>(nullptr, std::forward<F>(body));
}

PyObject* new_shared(module_state* state, shared_map&& map) {
    PyTypeObject* type = state->shared_map_type;
    auto* m = reinterpret_cast<SharedMapObject*>(type->tp_alloc(type, 0));
    if (!m) return nullptr;
    new (&m->map) shared_map(std::move(map));
    new (&m->hash) std::atomic<Py_hash_t>(hash_not_computed);
    m->weakreflist = nullptr;
    m->state = state;
    new (&m->values) handle_value_cache();
    return reinterpret_cast<PyObject*>(m);
}

// Returns self when the update changed nothing.
PyObject* shared_or_self(PyObject* self, shared_map&& result) {
    if (result.identical(as_shared(self)->map)) return Py_NewRef(self);
    return new_shared(as_shared(self)->state, std::move(result));
}

// ---- Python -> neutral -------------------------------------------------------------------

enum class conv : int { error = -1, ok = 0, unsupported = 1 };

constexpr const char* allowed_types =
    "SharedMap keys and values must be None, bool, int, float, str, bytes, tuples of these or SharedMap";

void unsupported_type_error(PyObject* o) {
    const char* full = Py_TYPE(o)->tp_name;
    const char* dot = std::strrchr(full, '.');
    const char* name = dot ? dot + 1 : full;  // "PersistentMap", not "pypersistent.PersistentMap"
    const char* hint = "";
    if (PyLong_Check(o) || PyFloat_Check(o) || PyUnicode_Check(o) || PyBytes_Check(o) || PyTuple_Check(o)) {
        hint = " (subclasses are not converted: convert to the base type first)";
    } else if (PyDict_Check(o) || is_mapping(o)) {
        hint = " (wrap a nested mapping in SharedMap(...))";
    }
    PyErr_Format(PyExc_TypeError, "%s, not %.200s%s", allowed_types, name, hint);
}

// UTF-8 of a str, with lone surrogates as "surrogatepass" writes them. `holder` receives a new
// bytes object when the fallback was needed. Returns false with an error set.
bool str_utf8(PyObject* o, const char** data, Py_ssize_t* size, PyObject** holder) {
    *holder = nullptr;
    *data = PyUnicode_AsUTF8AndSize(o, size);
    if (*data) return true;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return false;
    PyErr_Clear();
    PyObject* b = PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass");
    if (!b) return false;
    *holder = b;
    *data = PyBytes_AS_STRING(b);
    *size = PyBytes_GET_SIZE(b);
    return true;
}

conv int_to_neutral(PyObject* o, neutral_value& out) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return conv::error;
    if (!overflow) {
        out = neutral_value(static_cast<std::int64_t>(v));
        return conv::ok;
    }
#if PY_VERSION_HEX >= 0x030D0000
    const int flags = Py_ASNATIVEBYTES_LITTLE_ENDIAN;
    const Py_ssize_t needed = PyLong_AsNativeBytes(o, nullptr, 0, flags);
    if (needed < 0) return conv::error;
    std::vector<unsigned char> buf(static_cast<std::size_t>(needed) + 1);
    if (PyLong_AsNativeBytes(o, buf.data(), static_cast<Py_ssize_t>(buf.size()), flags) < 0) return conv::error;
#else
    const std::size_t bits = _PyLong_NumBits(o);
    if (bits == static_cast<std::size_t>(-1) && PyErr_Occurred()) return conv::error;
    std::vector<unsigned char> buf(bits / 8 + 1);
    if (_PyLong_AsByteArray(reinterpret_cast<PyLongObject*>(o), buf.data(), buf.size(), 1, 1) < 0) return conv::error;
#endif
    out = neutral_value::from_le_bytes(buf.data(), buf.size(), true);
    return conv::ok;
}

// Converts o. Storing (lookup false): exact types only, anything else raises TypeError.
// Looking up (lookup true): subclasses of the allowed types convert as their base type, and an
// unsupported type returns conv::unsupported with no error set.
conv to_neutral(PyObject* o, neutral_value& out, bool lookup) {
    if (o == Py_None) {
        out = neutral_value();
        return conv::ok;
    }
    if (PyBool_Check(o)) {
        out = neutral_value(o == Py_True);
        return conv::ok;
    }
    if (lookup ? PyLong_Check(o) : PyLong_CheckExact(o)) return int_to_neutral(o, out);
    if (lookup ? PyFloat_Check(o) : PyFloat_CheckExact(o)) {
        out = neutral_value(PyFloat_AS_DOUBLE(o));
        return conv::ok;
    }
    if (lookup ? PyUnicode_Check(o) : PyUnicode_CheckExact(o)) {
        const char* data;
        Py_ssize_t size;
        PyObject* holder;
        if (!str_utf8(o, &data, &size, &holder)) return conv::error;
        out = neutral_value::str_unchecked(std::string_view(data, static_cast<std::size_t>(size)),
                                           static_cast<std::size_t>(PyUnicode_GET_LENGTH(o)),
                                           static_cast<std::uint32_t>(PyUnicode_MAX_CHAR_VALUE(o)));
        Py_XDECREF(holder);
        return conv::ok;
    }
    if (lookup ? PyBytes_Check(o) : PyBytes_CheckExact(o)) {
        out = neutral_value::bytes(PyBytes_AS_STRING(o), static_cast<std::size_t>(PyBytes_GET_SIZE(o)));
        return conv::ok;
    }
    if (lookup ? PyTuple_Check(o) : PyTuple_CheckExact(o)) {
        const Py_ssize_t n = PyTuple_GET_SIZE(o);
        std::vector<neutral_value> items(static_cast<std::size_t>(n));
        if (Py_EnterRecursiveCall(" while converting a tuple for SharedMap")) return conv::error;
        for (Py_ssize_t i = 0; i < n; ++i) {
            conv r;
            try {
                r = to_neutral(PyTuple_GET_ITEM(o, i), items[static_cast<std::size_t>(i)], lookup);
            } catch (...) {
                Py_LeaveRecursiveCall();
                throw;
            }
            if (r != conv::ok) {
                Py_LeaveRecursiveCall();
                return r;
            }
        }
        Py_LeaveRecursiveCall();
        out = neutral_value::tuple(items);
        return conv::ok;
    }
    if (is_shared_map(o)) {
        out = neutral_value(as_shared(o)->map);
        return conv::ok;
    }
    if (lookup) return conv::unsupported;
    unsupported_type_error(o);
    return conv::error;
}

// For storing: throws python_error on failure.
neutral_value store_value(PyObject* o) {
    neutral_value v;
    if (to_neutral(o, v, false) != conv::ok) throw python_error{};
    return v;
}

// Calls f(const neutral_value&) with key converted for a lookup (str and bytes keys through an
// allocation-free probe). Returns conv::unsupported (f not called) for a hashable key of another
// type, conv::error with an error set (an unhashable key: TypeError, as dict).
template <class F>
conv with_lookup_key(PyObject* key, F&& f) {
    if (PyUnicode_Check(key)) {
        const char* data;
        Py_ssize_t size;
        PyObject* holder;
        if (!str_utf8(key, &data, &size, &holder)) return conv::error;
        struct releaser {
            PyObject* h;
            ~releaser() { Py_XDECREF(h); }
        } release{holder};
        const neutral_probe probe =
            neutral_probe::str(std::string_view(data, static_cast<std::size_t>(size)),
                               static_cast<std::size_t>(PyUnicode_GET_LENGTH(key)),
                               static_cast<std::uint32_t>(PyUnicode_MAX_CHAR_VALUE(key)));
        f(probe.value());
        return conv::ok;
    }
    if (PyBytes_Check(key)) {
        const neutral_probe probe = neutral_probe::bytes(
            std::string_view(PyBytes_AS_STRING(key), static_cast<std::size_t>(PyBytes_GET_SIZE(key))));
        f(probe.value());
        return conv::ok;
    }
    neutral_value v;
    const conv r = to_neutral(key, v, true);
    if (r == conv::ok) {
        try {  // hashing a tuple key that holds deeply nested maps may throw
            f(static_cast<const neutral_value&>(v));
        } catch (const neutral_nesting_error&) {
            set_nesting_error();
            return conv::error;
        }
        return r;
    }
    if (r == conv::unsupported && PyObject_Hash(key) == -1) return conv::error;  // unhashable: TypeError
    return r;
}

// ---- the lookup fast path ------------------------------------------------------------------

// The value of an exact int of one digit (3.12+: a compact int), read inline; false for the
// others, which int64_of reads. Where the int layout is not known (see exact_int_hash), false.
PYPERSISTENT_ALWAYS_INLINE bool one_digit_int_of(PyObject* o, std::int64_t* out) {
#if PY_VERSION_HEX >= 0x030C0000
    auto* as_long = reinterpret_cast<PyLongObject*>(o);
    if (!PyUnstable_Long_IsCompact(as_long)) return false;
    *out = static_cast<std::int64_t>(PyUnstable_Long_CompactValue(as_long));
    return true;
#elif defined(PYPERSISTENT_INLINE_INT_HASH)
    const Py_ssize_t size = Py_SIZE(o);
    if (size < -1 || size > 1) return false;
    *out = size == 0 ? 0 : size * static_cast<std::int64_t>(reinterpret_cast<PyLongObject*>(o)->ob_digit[0]);
    return true;
#else
    (void)o;
    (void)out;
    return false;
#endif
}

// The value of an int that fits in 64 bits; false (no error set) if it does not. 3.12+ reads a
// one-digit int inline; PyLong_AsLongLongAndOverflow is a call that checks the type again.
bool int64_of(PyObject* o, std::int64_t* out) {
#if PY_VERSION_HEX >= 0x030C0000
    auto* as_long = reinterpret_cast<PyLongObject*>(o);
    if (PyUnstable_Long_IsCompact(as_long)) {
        *out = static_cast<std::int64_t>(PyUnstable_Long_CompactValue(as_long));
        return true;
    }
#endif
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);  // cannot fail on an exact int
    *out = static_cast<std::int64_t>(v);
    return overflow == 0;
}

// The key tests of the lookup fast path, inlined into the trie walk: GCC otherwise calls them out
// of line, once per lookup, on the path every m[k] and `k in m` takes.
#if defined(__GNUC__) || defined(__clang__)
#define PYPERSISTENT_INLINE_PROBE __attribute__((always_inline))
#else
#define PYPERSISTENT_INLINE_PROBE
#endif

// find_value for keys other than exact strs and 64-bit ints: through a neutral key built in a
// probe's inline storage. Out of line, so that the fast paths do not carry that storage's stack
// frame (and the saved registers of its conversions) on every lookup.
template <class Map>
PYPERSISTENT_NOINLINE conv find_value_by_neutral_key(const Map& map, PyObject* key, const neutral_value** found) {
    return with_lookup_key(key, [&](const neutral_value& k) { *found = map.find(k); });
}

// The value stored under key in map, or nullptr (absent, or a hashable key of a type a
// SharedMap never holds). Returns conv::error with an error set (an unhashable key).
//
// Exact str and int keys, nearly every lookup, skip building a neutral key: a short ASCII str
// is compared with the stored keys as the two words its short str would have; another str is
// hashed and compared where CPython keeps its UTF-8 (no copy into a probe, no generic
// equality); an int by its 64-bit value (a stored key of another numeric kind, 1.0 or True for
// 1, is compared by the general rules). Everything else goes through with_lookup_key.
// will_read_value: the caller converts the value found, so a str key's entry prefetches the
// value's block before its own key block is read (two cache misses at once in a large map, not
// one after the other).
// Map: shared_map or shared_transient (both have find_entry_matching and find).
// Never throws: only building a neutral key (find_value_by_neutral_key) can, and
// find_value_other turns that into a Python error, so callers need no handler.
//
// The paths of short ASCII strs and one-digit ints are find_value itself, inlined into each
// caller; a longer ASCII str goes straight to find_by_utf8, every other key to
// find_value_other, each a call. (With all paths in one function, every lookup paid that
// function's call and the saving of the registers its other paths use.)
template <class Map>
PYPERSISTENT_NOINLINE conv find_value_other(const Map& map, PyObject* key, const neutral_value** found,
                                            bool will_read_value);

PYPERSISTENT_NOINLINE bool stored_key_equals_int64(const neutral_value& stored, std::int64_t i) {
    return stored == neutral_value(i);
}

// find_value for an int key that fits in 64 bits: compared by value (a stored key of another
// numeric kind, 1.0 or True for 1, by the general rules, out of line). No neutral probe is
// built for it: the probe's destructor was a call on every lookup.
template <class Map>
PYPERSISTENT_ALWAYS_INLINE conv find_int64(const Map& map, std::int64_t i, const neutral_value** found) {
    using entry_type = typename Map::value_type;
    const auto* e = map.find_entry_matching(neutral_detail::hash_int64(i),
                                            [&](const entry_type& entry) PYPERSISTENT_INLINE_PROBE {
        const neutral_value& k = entry.first;
        return k.is_small_int() ? k.as_int64() == i : stored_key_equals_int64(k, i);
    });
    *found = e ? &e->second : nullptr;
    return conv::ok;
}

// find_value for a str whose UTF-8 is utf8 and that is not stored as a short str (longer than
// short_str_capacity, or not ASCII): hashed and compared where CPython keeps its UTF-8, with
// no copy into a probe and no generic equality. A call of its own with nothing else in it, so
// that it saves few registers and the short str path inlined into the callers none for it.
template <class Map>
PYPERSISTENT_NOINLINE const neutral_value* find_by_utf8(const Map& map, std::string_view utf8, bool will_read_value) {
    const hash_t hash = neutral_value::str_hash_of(utf8);
    const auto* e = map.find_entry_matching(hash, [&](const typename Map::value_type& entry) PYPERSISTENT_INLINE_PROBE {
        if (will_read_value) entry.second.prefetch();
        const neutral_value& k = entry.first;
        // Long or non-ASCII keys are stored in blocks; a short stored key can still match a
        // str whose form hid that it is short ASCII (a legacy, non-compact str before 3.12).
        if (k.is_short_str()) return k.str_view() == utf8;
        if (!k.is_block_str() || k.str_hash() != hash) return false;
        const std::string_view stored = k.str_view();
        return stored.size() == utf8.size() && same_bytes(stored.data(), utf8.data(), utf8.size());
    });
    return e ? &e->second : nullptr;
}

template <class Map>
PYPERSISTENT_ALWAYS_INLINE conv find_value(const Map& map, PyObject* key, const neutral_value** found,
                                           bool will_read_value) {
    if (PyUnicode_CheckExact(key) && PyUnicode_IS_COMPACT_ASCII(key)) {
        const auto size = static_cast<std::size_t>(PyUnicode_GET_LENGTH(key));
        const char* data = static_cast<const char*>(PyUnicode_DATA(key));
        if (size > neutral_value::short_str_capacity) {
            *found = find_by_utf8(map, std::string_view(data, size), will_read_value);
            return conv::ok;
        }
        // Stored as a short str (canonical form): the stored key matches exactly when its 16
        // bytes are the probe's, and no key block is read.
        std::uint64_t probe[2];
        neutral_value::short_str_words(data, size, probe);
        const auto* e = map.find_entry_matching(neutral_value::short_str_hash_of(probe),
                                                [&](const typename Map::value_type& entry) PYPERSISTENT_INLINE_PROBE {
            if (will_read_value) entry.second.prefetch();
            return entry.first.word(0) == probe[0] && entry.first.word(1) == probe[1];
        });
        *found = e ? &e->second : nullptr;
        return conv::ok;
    }
    std::int64_t i;
    if (PyLong_CheckExact(key) && one_digit_int_of(key, &i)) return find_int64(map, i, found);
    return find_value_other(map, key, found, will_read_value);
}

template <class Map>
conv find_value_other(const Map& map, PyObject* key, const neutral_value** found, bool will_read_value) {
    *found = nullptr;
    if (PyUnicode_CheckExact(key)) {
        // Not compact ASCII (find_value took those): CPython's cached UTF-8, made on first use.
        const char* data;
        Py_ssize_t size;
        PyObject* holder;
        if (!str_utf8(key, &data, &size, &holder)) return conv::error;
        *found = find_by_utf8(map, std::string_view(data, static_cast<std::size_t>(size)), will_read_value);
        Py_XDECREF(holder);
        return conv::ok;
    }
    std::int64_t i;
    if (PyLong_CheckExact(key) && int64_of(key, &i)) return find_int64(map, i, found);
    return guard<conv>(conv::error, [&] { return find_value_by_neutral_key(map, key, found); });
}

// ---- neutral -> Python -------------------------------------------------------------------

PyObject* to_python(const neutral_value& v, module_state* state) {
    using kind = neutral_value::kind;
    switch (v.type()) {
        case kind::none: return Py_NewRef(Py_None);
        case kind::boolean: return PyBool_FromLong(v.as_bool());
        case kind::small_int: return PyLong_FromLongLong(v.as_int64());
        case kind::big_int: {
            std::vector<unsigned char> buf(v.le_byte_length());
            v.to_le_bytes(buf.data(), buf.size());
#if PY_VERSION_HEX >= 0x030D0000
            return PyLong_FromNativeBytes(buf.data(), buf.size(), Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
            return _PyLong_FromByteArray(buf.data(), buf.size(), 1, 1);
#endif
        }
        case kind::floating: return PyFloat_FromDouble(v.as_double());
        case kind::short_str:  // a storage form of str; type() reports kind::str
        case kind::str: {
            const std::string_view s = v.str_view();
            if (v.str_is_ascii()) {
                PyObject* r = PyUnicode_New(static_cast<Py_ssize_t>(s.size()), 127);
                if (r && !s.empty()) std::memcpy(PyUnicode_DATA(r), s.data(), s.size());
                return r;
            }
            return PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogatepass");
        }
        case kind::bytes: {
            const std::string_view s = v.bytes_view();
            return PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
        }
        case kind::tuple: {
            const std::size_t n = v.tuple_size();
            PyObject* t = PyTuple_New(static_cast<Py_ssize_t>(n));
            if (!t) return nullptr;
            if (Py_EnterRecursiveCall(" while converting a tuple from SharedMap")) {
                Py_DECREF(t);
                return nullptr;
            }
            for (std::size_t i = 0; i < n; ++i) {
                PyObject* item = to_python(v[i], state);
                if (!item) {
                    Py_LeaveRecursiveCall();
                    Py_DECREF(t);
                    return nullptr;
                }
                PyTuple_SET_ITEM(t, static_cast<Py_ssize_t>(i), item);
            }
            Py_LeaveRecursiveCall();
            return t;
        }
        case kind::map: return new_shared(state, shared_map(v.as_map()));
    }
    PyErr_SetString(PyExc_SystemError, "SharedMap: unknown value kind");
    return nullptr;
}

// ---- Python's hash of the Python form of a value -------------------------------------------

// hash(to_python(v)), computed without building numbers; a tuple's is CPython's tuplehash of
// its items' hashes, a map's the SharedMap hash below. NaN hashes to 0 (all NaNs are one value
// here). Returns -1 with an error set.
Py_hash_t python_hash(const neutral_value& v, module_state* state);

Py_hash_t hash_entries(const shared_map& map, module_state* state) {
    // PersistentMap's map_hash (map_object.cpp), so that equal maps of either type hash alike.
    if (Py_EnterRecursiveCall(" while hashing a SharedMap")) return -1;
    std::uint64_t acc = 0x345678u + map.size() * 0x9E3779B97F4A7C15ull;
    for (const auto& e : map) {
        const Py_hash_t hk = python_hash(e.first, state);
        const Py_hash_t hv = hk == -1 ? -1 : python_hash(e.second, state);
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
    return result;
}

Py_hash_t python_hash(const neutral_value& v, module_state* state) {
    using kind = neutral_value::kind;
    switch (v.type()) {
        case kind::boolean:
        case kind::small_int:
        case kind::big_int:
        case kind::floating:
            return static_cast<Py_hash_t>(v.hash());  // Python's numeric hash (NaN: 0)
        case kind::tuple: {
            // CPython's tuplehash (Objects/tupleobject.c), 64-bit.
            constexpr std::uint64_t p1 = 11400714785074694791ull, p2 = 14029467366897019727ull,
                                    p5 = 2870177450012600261ull;
            std::uint64_t acc = p5;
            const std::size_t n = v.tuple_size();
            if (Py_EnterRecursiveCall(" while hashing a tuple")) return -1;
            for (std::size_t i = 0; i < n; ++i) {
                const Py_hash_t h = python_hash(v[i], state);
                if (h == -1) {
                    Py_LeaveRecursiveCall();
                    return -1;
                }
                acc += static_cast<std::uint64_t>(h) * p2;
                acc = (acc << 31) | (acc >> 33);
                acc *= p1;
            }
            Py_LeaveRecursiveCall();
            acc += n ^ (p5 ^ 3527539ull);
            if (acc == static_cast<std::uint64_t>(-1)) return 1546275796;
            return static_cast<Py_hash_t>(acc);
        }
        case kind::map: return hash_entries(v.as_map(), state);
        default: {  // None, str, bytes: Python's own hash
            PyObject* o = to_python(v, state);
            if (!o) return -1;
            const Py_hash_t h = PyObject_Hash(o);
            Py_DECREF(o);
            return h;
        }
    }
}

// ---- filling a transient from Python input -----------------------------------------------

// t[key] = value; every failure is a python_error (the callers hold critical sections that only
// python_error and bad_alloc may cross).
void set_entry(shared_transient& t, PyObject* key, PyObject* value) {
    neutral_value k = store_value(key);
    neutral_value v = store_value(value);
    try {
        t.set(k, v);
    } catch (const neutral_nesting_error&) {
        set_nesting_error();
        throw python_error();
    }
}

// Adds source (a SharedMap, PersistentMap, dict, object with keys(), or iterable of pairs) and
// kwargs. Returns false with an error set (or throws python_error / bad_alloc).
bool fill_shared(shared_transient& t, PyObject* source, PyObject* kwargs) {
    auto add = [&t](PyObject* key, PyObject* value) {
        set_entry(t, key, value);
        return true;
    };
    if (source) {
        if (is_shared_map(source)) {
            t.merge(as_shared(source)->map);
        } else if (is_map(source)) {
            // A PersistentMap: immutable, and converting exact types runs no Python code.
            for (const auto& e : reinterpret_cast<MapObject*>(source)->map) set_entry(t, e.first, e.second);
        } else if (!fill_from_source(source, add)) {
            return false;
        }
    }
    if (kwargs && PyDict_GET_SIZE(kwargs) > 0) return fill_from_dict(kwargs, add);
    return true;
}

// A SharedMap of `value`: the object itself if it is one, else a conversion of a mapping.
PyObject* coerce_shared(module_state* state, PyObject* value, const char* what) {
    if (is_shared_map(value)) return Py_NewRef(value);
    if (!is_mapping(value) && !PyDict_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be a SharedMap or a mapping, not %.200s", what, Py_TYPE(value)->tp_name);
        return nullptr;
    }
    return guard([&]() -> PyObject* {
        shared_transient t;
        if (!fill_shared(t, value, nullptr)) return nullptr;
        return new_shared(state, t.persistent());
    });
}

// ---- SharedMap: construction and protocols ------------------------------------------------

PyObject* shared_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    PyObject* source = nullptr;
    if (!PyArg_UnpackTuple(args, "SharedMap", 0, 1, &source)) return nullptr;
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    if (source && is_shared_map(source) && (!kwargs || PyDict_GET_SIZE(kwargs) == 0)) return Py_NewRef(source);
    return guard([&]() -> PyObject* {
        shared_transient t;
        if (!fill_shared(t, source, kwargs)) return nullptr;
        return new_shared(state, t.persistent());
    });
}

Py_ssize_t shared_length(PyObject* self) { return static_cast<Py_ssize_t>(as_shared(self)->map.size()); }

// A value the handle's own cache did not hold: through the interpreter's cache, or converted
// (nullptr with an error set if that fails). Out of line, so that a lookup the handle's cache
// answers saves no registers for this path.
PYPERSISTENT_NOINLINE PyObject* value_missed_by_handle(SharedMapObject* m, const neutral_value& v, std::size_t size) {
    return guard([&] {
        return m->state->shared_values.get(v, size, [m](const neutral_value& y) { return to_python(y, m->state); });
    });
}

// The value for key, or nullptr; `status` conv::error when an error is set (else absent).
// Inlined into m[k] and get(), and with no exception handler of its own (find_value never
// throws): a lookup that the handle's cache answers then makes no call beyond the trie's.
PYPERSISTENT_ALWAYS_INLINE PyObject* lookup(PyObject* self, PyObject* key, conv* status) {
    SharedMapObject* m = as_shared(self);
    const neutral_value* v = nullptr;
    *status = find_value(m->map, key, &v, true);
    if (!v) return nullptr;
    const std::size_t size = m->map.size();
    PyObject* result = m->values.get(*v, size, [m, size](const neutral_value& x) { return value_missed_by_handle(m, x, size); });
    if (!result) *status = conv::error;
    return result;
}

PyObject* shared_subscript(PyObject* self, PyObject* key) {
    conv status;
    PyObject* v = lookup(self, key, &status);
    if (v || status == conv::error) return v;
    set_key_error(key);
    return nullptr;
}

int shared_contains(PyObject* self, PyObject* key) {
    const neutral_value* v;
    if (find_value(as_shared(self)->map, key, &v, false) == conv::error) return -1;
    return v ? 1 : 0;
}

PyObject* shared_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return argument_count_error("SharedMap.get", "1 or 2 arguments", nargs);
    conv status;
    PyObject* v = lookup(self, args[0], &status);
    if (v || status == conv::error) return v;
    return Py_NewRef(nargs == 2 ? args[1] : Py_None);
}

Py_hash_t shared_hash(PyObject* self) {
    SharedMapObject* m = as_shared(self);
    const Py_hash_t cached = m->hash.load(std::memory_order_relaxed);
    if (cached != hash_not_computed) return cached;
    const Py_hash_t h = guard<Py_hash_t>(-1, [&] { return hash_entries(m->map, m->state); });
    if (h != -1) m->hash.store(h, std::memory_order_relaxed);
    return h;
}

enum class equality : int { error = -1, unequal = 0, equal = 1, not_comparable = -2 };

equality shared_equals(SharedMapObject* a, PyObject* other) {
    if (is_shared_map(other)) return a->map == as_shared(other)->map ? equality::equal : equality::unequal;
    if (!is_mapping(other) && !PyDict_Check(other)) return equality::not_comparable;
    const Py_ssize_t other_len = PyObject_Size(other);
    if (other_len < 0) return equality::error;
    if (static_cast<std::size_t>(other_len) != a->map.size()) return equality::unequal;
    for (const auto& e : a->map) {
        PyObject* key = to_python(e.first, a->state);
        if (!key) return equality::error;
        PyObject* theirs = PyObject_GetItem(other, key);
        Py_DECREF(key);
        if (!theirs) {
            if (PyErr_ExceptionMatches(PyExc_KeyError)) {
                PyErr_Clear();
                return equality::unequal;
            }
            return equality::error;
        }
        // Compared as neutral values when theirs converts (so NaN equals NaN, as between two
        // SharedMaps); otherwise by Python's == on our value's Python form.
        neutral_value converted;
        conv r = to_neutral(theirs, converted, false);
        int same;
        if (r == conv::ok) {
            same = converted == e.second ? 1 : 0;
        } else {
            PyErr_Clear();
            PyObject* ours = to_python(e.second, a->state);
            same = ours ? PyObject_RichCompareBool(ours, theirs, Py_EQ) : -1;
            Py_XDECREF(ours);
        }
        Py_DECREF(theirs);
        if (same < 0) return equality::error;
        if (same == 0) return equality::unequal;
    }
    return equality::equal;
}

PyObject* shared_richcompare(PyObject* self, PyObject* other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    const equality eq = guard<equality>(equality::error, [&] { return shared_equals(as_shared(self), other); });
    if (eq == equality::error) return nullptr;
    if (eq == equality::not_comparable) Py_RETURN_NOTIMPLEMENTED;
    return PyBool_FromLong((op == Py_EQ) == (eq == equality::equal));
}

PyObject* shared_repr(PyObject* self) {
    SharedMapObject* m = as_shared(self);
    PyObject* parts = PyList_New(0);
    if (!parts) return nullptr;
    PyObject* result = nullptr;
    bool ok = true;
    for (const auto& e : m->map) {
        PyObject* k = to_python(e.first, m->state);
        PyObject* v = k ? to_python(e.second, m->state) : nullptr;
        PyObject* piece = v ? PyUnicode_FromFormat("%R: %R", k, v) : nullptr;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (!piece || PyList_Append(parts, piece) < 0) ok = false;
        Py_XDECREF(piece);
        if (!ok) break;
    }
    if (ok) {
        PyObject* sep = PyUnicode_FromString(", ");
        PyObject* body = sep ? PyUnicode_Join(sep, parts) : nullptr;
        if (body) result = PyUnicode_FromFormat("SharedMap({%U})", body);
        Py_XDECREF(body);
        Py_XDECREF(sep);
    }
    Py_DECREF(parts);
    return result;
}

PyObject* shared_iter(PyObject* self) {
    SharedMapObject* m = as_shared(self);
    PyTypeObject* type = m->state->shared_map_iterator_type;
    auto* it = reinterpret_cast<SharedIteratorObject*>(type->tp_alloc(type, 0));
    if (!it) return nullptr;
    it->owner = Py_NewRef(self);
    new (&it->cursor) shared_map::iterator(m->map.begin());
    it->remaining = static_cast<Py_ssize_t>(m->map.size());
    return reinterpret_cast<PyObject*>(it);
}

// self | other, other | self
PyObject* shared_or(PyObject* left, PyObject* right) {
    if (is_shared_map(left)) {
        if (!is_mapping(right) && !PyDict_Check(right)) Py_RETURN_NOTIMPLEMENTED;
        return guard([&]() -> PyObject* {
            if (is_shared_map(right)) return shared_or_self(left, as_shared(left)->map.merge(as_shared(right)->map));
            shared_transient t = as_shared(left)->map.transient();
            if (!fill_shared(t, right, nullptr)) return nullptr;
            return shared_or_self(left, t.persistent());
        });
    }
    if (!is_mapping(left) && !PyDict_Check(left)) Py_RETURN_NOTIMPLEMENTED;
    return guard([&]() -> PyObject* {
        shared_transient t;
        if (!fill_shared(t, left, nullptr)) return nullptr;
        t.merge(as_shared(right)->map);
        return new_shared(as_shared(right)->state, t.persistent());
    });
}

// ---- SharedMap: methods --------------------------------------------------------------------

PyObject* shared_assoc(PyObject* self, PyObject* const* args, Py_ssize_t nargs, const char* name) {
    if (nargs != 2) return argument_count_error(name, "exactly 2 arguments", nargs);
    return guard([&] {
        neutral_value k = store_value(args[0]);
        neutral_value v = store_value(args[1]);
        return shared_or_self(self, as_shared(self)->map.set(k, v));
    });
}

PyObject* shared_dissoc(PyObject* self, PyObject* key) {
    SharedMapObject* m = as_shared(self);
    shared_map result = m->map;
    const conv r = guard<conv>(conv::error, [&] {
        return with_lookup_key(key, [&](const neutral_value& k) { result = m->map.erase(k); });
    });
    if (r == conv::error) return nullptr;
    return guard([&] { return shared_or_self(self, std::move(result)); });
}

PyObject* shared_update(PyObject* self, PyObject* args, PyObject* kwargs, const char* name) {
    const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 1) return argument_count_error(name, "at most 1 argument", nargs);
    PyObject* source = nargs == 1 ? PyTuple_GET_ITEM(args, 0) : nullptr;
    SharedMapObject* m = as_shared(self);
    const bool no_kwargs = !kwargs || PyDict_GET_SIZE(kwargs) == 0;
    return guard([&]() -> PyObject* {
        if (no_kwargs && source && is_shared_map(source)) return shared_or_self(self, m->map.merge(as_shared(source)->map));
        shared_transient t = m->map.transient();
        if (!fill_shared(t, source, kwargs)) return nullptr;
        return shared_or_self(self, t.persistent());
    });
}

PyObject* shared_self(PyObject* self, PyObject*) { return Py_NewRef(self); }

template <class Make>
PyObject* entries_list(PyObject* self, Make make) {
    SharedMapObject* m = as_shared(self);
    const auto n = static_cast<Py_ssize_t>(m->map.size());
    PyObject* list = PyList_New(n);
    if (!list) return nullptr;
    Py_ssize_t i = 0;
    for (const auto& e : m->map) {
        if (i == n) break;
        PyObject* item = make(e, m->state);
        if (!item) {
            Py_DECREF(list);
            return nullptr;
        }
        PyList_SET_ITEM(list, i++, item);
    }
    return list;
}

PyObject* make_pair(const shared_map::value_type& e, module_state* state) {
    PyObject* k = to_python(e.first, state);
    if (!k) return nullptr;
    PyObject* v = to_python(e.second, state);
    if (!v) {
        Py_DECREF(k);
        return nullptr;
    }
    PyObject* pair = PyTuple_New(2);
    if (!pair) {
        Py_DECREF(k);
        Py_DECREF(v);
        return nullptr;
    }
    PyTuple_SET_ITEM(pair, 0, k);
    PyTuple_SET_ITEM(pair, 1, v);
    return pair;
}

PyObject* shared_items_list(PyObject* self, PyObject*) { return entries_list(self, make_pair); }
PyObject* shared_keys_list(PyObject* self, PyObject*) {
    return entries_list(self, [](const shared_map::value_type& e, module_state* s) { return to_python(e.first, s); });
}
PyObject* shared_values_list(PyObject* self, PyObject*) {
    return entries_list(self, [](const shared_map::value_type& e, module_state* s) { return to_python(e.second, s); });
}

// keys() / values() / items(): collections.abc's views over the map (set operations included).
PyObject* abc_view(PyObject* self, const char* view) {
    PyObject* abc = PyImport_ImportModule("collections.abc");
    if (!abc) return nullptr;
    PyObject* cls = PyObject_GetAttrString(abc, view);
    Py_DECREF(abc);
    if (!cls) return nullptr;
    PyObject* result = PyObject_CallOneArg(cls, self);
    Py_DECREF(cls);
    return result;
}
PyObject* shared_keys(PyObject* self, PyObject*) { return abc_view(self, "KeysView"); }
PyObject* shared_values(PyObject* self, PyObject*) { return abc_view(self, "ValuesView"); }
PyObject* shared_items(PyObject* self, PyObject*) { return abc_view(self, "ItemsView"); }

// A dict of the contents (nested SharedMaps stay SharedMaps).
PyObject* to_dict(PyObject* self) {
    SharedMapObject* m = as_shared(self);
    PyObject* d = PyDict_New();
    if (!d) return nullptr;
    for (const auto& e : m->map) {
        PyObject* k = to_python(e.first, m->state);
        PyObject* v = k ? to_python(e.second, m->state) : nullptr;
        const int r = v ? PyDict_SetItem(d, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (r < 0) {
            Py_DECREF(d);
            return nullptr;
        }
    }
    return d;
}

PyObject* shared_to_dict(PyObject* self, PyObject*) { return guard([&] { return to_dict(self); }); }

PyObject* shared_reduce(PyObject* self, PyObject*) {
    PyObject* d = guard([&] { return to_dict(self); });
    if (!d) return nullptr;
    return Py_BuildValue("O(N)", reinterpret_cast<PyObject*>(Py_TYPE(self)), d);
}

PyObject* shared_deepcopy(PyObject* self, PyObject*) { return Py_NewRef(self); }

PyObject* shared_to_persistent(PyObject* self, PyObject*) {
    SharedMapObject* m = as_shared(self);
    module_state* state = m->state;
    return guard([&]() -> PyObject* {
        object_transient t;
        for (const auto& e : m->map) {
            PyObject* k = to_python(e.first, state);
            if (!k) return nullptr;
            PyObject* v = to_python(e.second, state);
            if (!v) {
                Py_DECREF(k);
                return nullptr;
            }
            const Py_hash_t h = key_hash(k);
            bool ok = h != -1;
            if (ok) {
                try {
                    t.set_hashed(k, v, to_trie_hash(h));
                } catch (...) {
                    Py_DECREF(k);
                    Py_DECREF(v);
                    throw;
                }
            }
            Py_DECREF(k);
            Py_DECREF(v);
            if (!ok) return nullptr;
        }
        return new_map(state->map_type, state, t.persistent());
    });
}

PyObject* shared_transient_method(PyObject* self, PyObject*) {
    SharedMapObject* m = as_shared(self);
    return guard([&] {
        return new_transient<TransientSharedObject>(m->state->transient_shared_map_type, m->state,
                                                    new shared_transient(m->map.transient()));
    });
}

PyObject* shared_from_dict(PyObject* cls, PyObject* source) {
    PyTypeObject* type = reinterpret_cast<PyTypeObject*>(cls);
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    return guard([&]() -> PyObject* {
        shared_transient t;
        if (!fill_shared(t, source, nullptr)) return nullptr;
        return new_shared(state, t.persistent());
    });
}

PyObject* shared_sizeof(PyObject* self, PyObject*) {
    return PyLong_FromSsize_t(static_cast<Py_ssize_t>(Py_TYPE(self)->tp_basicsize));
}

PyMethodDef shared_methods[] = {
    {"assoc", PP_NAMED_FASTCALL(shared_assoc, "SharedMap.assoc"), METH_FASTCALL,
     "assoc($self, key, value, /)\n--\n\nA new map with key set to value."},
    {"set", PP_NAMED_FASTCALL(shared_assoc, "SharedMap.set"), METH_FASTCALL,
     "set($self, key, value, /)\n--\n\nA new map with key set to value (same as assoc())."},
    {"dissoc", shared_dissoc, METH_O, "dissoc($self, key, /)\n--\n\nA new map without key (this map if key is absent)."},
    {"delete", shared_dissoc, METH_O, "delete($self, key, /)\n--\n\nA new map without key (same as dissoc())."},
    {"get", as_method(shared_get), METH_FASTCALL,
     "get($self, key, default=None, /)\n--\n\nThe value for key if key is in the map, else default."},
    {"update", PP_NAMED_KEYWORDS(shared_update, "SharedMap.update"), METH_VARARGS | METH_KEYWORDS,
     "update($self, other=(), /, **kwargs)\n--\n\nA new map with the items of other and kwargs added."},
    {"merge", PP_NAMED_KEYWORDS(shared_update, "SharedMap.merge"), METH_VARARGS | METH_KEYWORDS,
     "merge($self, other=(), /, **kwargs)\n--\n\nA new map with the items of other and kwargs added (same as update())."},
    {"keys", shared_keys, METH_NOARGS, "keys($self, /)\n--\n\nA KeysView of the map."},
    {"values", shared_values, METH_NOARGS, "values($self, /)\n--\n\nA ValuesView of the map."},
    {"items", shared_items, METH_NOARGS, "items($self, /)\n--\n\nAn ItemsView of the map."},
    {"items_list", shared_items_list, METH_NOARGS, "items_list($self, /)\n--\n\nA list of the (key, value) pairs."},
    {"keys_list", shared_keys_list, METH_NOARGS, "keys_list($self, /)\n--\n\nA list of the keys."},
    {"values_list", shared_values_list, METH_NOARGS, "values_list($self, /)\n--\n\nA list of the values."},
    {"to_dict", shared_to_dict, METH_NOARGS,
     "to_dict($self, /)\n--\n\nA dict of the contents (nested SharedMaps are kept as they are)."},
    {"to_persistent", shared_to_persistent, METH_NOARGS,
     "to_persistent($self, /)\n--\n\nA PersistentMap of the contents (O(n); nested SharedMaps are kept)."},
    {"transient", shared_transient_method, METH_NOARGS,
     "transient($self, /)\n--\n\nA TransientSharedMap (a mutable builder) starting from this map."},
    {"from_dict", shared_from_dict, METH_O | METH_CLASS,
     "from_dict($type, mapping, /)\n--\n\nA SharedMap of the items of mapping (or of an iterable of pairs)."},
    {"copy", shared_self, METH_NOARGS, "copy($self, /)\n--\n\nThis map itself: it is immutable."},
    {"__copy__", shared_self, METH_NOARGS, "__copy__($self, /)\n--\n\nThis map itself: it is immutable."},
    {"__deepcopy__", shared_deepcopy, METH_O,
     "__deepcopy__($self, memo, /)\n--\n\nThis map itself: it is immutable all the way down."},
    {"__reduce__", shared_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nPickling support: the map is rebuilt from a dict of its contents."},
    {"__sizeof__", shared_sizeof, METH_NOARGS, sizeof_doc},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, class_getitem_doc},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef shared_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SharedMapObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

const char shared_doc[] =
    "SharedMap(mapping_or_pairs=(), /, **kwargs)\n--\n\n"
    "An immutable hash map whose contents belong to no interpreter.\n\n"
    "Keys and values must be None, bool, int, float, str, bytes, tuples of these or SharedMap\n"
    "(exact types: subclasses raise TypeError). They are stored converted, and reading gives\n"
    "new, equal Python objects. 1, 1.0 and True are one key, and all NaNs are one key.\n"
    "Maps are immutable and may be used from any thread; hand one to another interpreter\n"
    "through a SharedAtom.";

PyType_Slot shared_slots[] = {
    {Py_tp_doc, const_cast<char*>(shared_doc)},
    {Py_tp_new, reinterpret_cast<void*>(shared_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(shared_dealloc)},
    {Py_tp_hash, reinterpret_cast<void*>(shared_hash)},
    {Py_tp_richcompare, reinterpret_cast<void*>(shared_richcompare)},
    {Py_tp_iter, reinterpret_cast<void*>(shared_iter)},
    {Py_tp_repr, reinterpret_cast<void*>(shared_repr)},
    {Py_tp_methods, shared_methods},
    {Py_tp_members, shared_members},
    {Py_mp_length, reinterpret_cast<void*>(shared_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(shared_subscript)},
    {Py_sq_contains, reinterpret_cast<void*>(shared_contains)},
    {Py_nb_or, reinterpret_cast<void*>(shared_or)},
    {0, nullptr},
};

void shared_dealloc(PyObject* self) {
    SharedMapObject* m = as_shared(self);
    PyTypeObject* type = Py_TYPE(self);
    if (m->weakreflist) PyObject_ClearWeakRefs(self);
    m->values.~handle_value_cache();
    m->map.~shared_map();
    m->hash.~atomic();
    type->tp_free(self);
    Py_DECREF(type);
}

// ---- the iterator (keys) ---------------------------------------------------------------------

PyObject* iterator_next(PyObject* self) {
    auto* it = reinterpret_cast<SharedIteratorObject*>(self);
    const neutral_value* key = nullptr;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (it->remaining > 0 && it->cursor != shared_map::iterator()) {
        key = &it->cursor->first;  // kept alive by the owner map
        ++it->cursor;
        --it->remaining;
    } else {
        it->remaining = 0;
    }
    Py_END_CRITICAL_SECTION();
    if (!key) return nullptr;
    return guard([&] { return to_python(*key, as_shared(it->owner)->state); });
}

PyObject* iterator_length_hint(PyObject* self, PyObject*) {
    return PyLong_FromSsize_t(reinterpret_cast<SharedIteratorObject*>(self)->remaining);
}

PyMethodDef iterator_methods[] = {
    {"__length_hint__", iterator_length_hint, METH_NOARGS, length_hint_doc},
    {nullptr, nullptr, 0, nullptr},
};

void iterator_dealloc(PyObject* self) {
    auto* it = reinterpret_cast<SharedIteratorObject*>(self);
    PyTypeObject* type = Py_TYPE(self);
    it->cursor.~shared_iterator();
    Py_XDECREF(it->owner);
    type->tp_free(self);
    Py_DECREF(type);
}

PyType_Slot iterator_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(iterator_dealloc)},
    {Py_tp_iter, reinterpret_cast<void*>(PyObject_SelfIter)},
    {Py_tp_iternext, reinterpret_cast<void*>(iterator_next)},
    {Py_tp_methods, iterator_methods},
    {0, nullptr},
};

// ---- TransientSharedMap ------------------------------------------------------------------

PyObject* transient_subscript(PyObject* self, PyObject* key) {
    TransientSharedObject* obj = reinterpret_cast<TransientSharedObject*>(self);
    return locked_transient<TransientSharedObject, PyObject*>(self, transient_name, nullptr, [&](shared_transient& t) {
        const neutral_value* v;
        if (find_value(t, key, &v, true) == conv::error) return static_cast<PyObject*>(nullptr);
        if (!v) {
            set_key_error(key);
            return static_cast<PyObject*>(nullptr);
        }
        return to_python(*v, obj->state);
    });
}

int transient_ass_subscript(PyObject* self, PyObject* key, PyObject* value) {
    return locked_transient<TransientSharedObject, int>(self, transient_name, -1, [&](shared_transient& t) {
        if (value) {
            set_entry(t, key, value);
            return 0;
        }
        bool removed = false;
        const conv r = with_lookup_key(key, [&](const neutral_value& k) { removed = t.erase(k); });
        if (r == conv::error) return -1;
        if (!removed) {
            set_key_error(key);
            return -1;
        }
        return 0;
    });
}

Py_ssize_t transient_length(PyObject* self) {
    return locked_transient<TransientSharedObject, Py_ssize_t>(
        self, transient_name, -1, [](shared_transient& t) { return static_cast<Py_ssize_t>(t.size()); });
}

int transient_contains(PyObject* self, PyObject* key) {
    return locked_transient<TransientSharedObject, int>(self, transient_name, -1, [&](shared_transient& t) {
        const neutral_value* v;
        if (find_value(t, key, &v, false) == conv::error) return -1;
        return v ? 1 : 0;
    });
}

PyObject* freeze_transient(PyObject* self, shared_transient& t) {
    return new_shared(reinterpret_cast<TransientSharedObject*>(self)->state, t.persistent());
}

PyObject* transient_persistent(PyObject* self, PyObject*) {
    return finish_transient<TransientSharedObject>(self, transient_name,
                                                   [self](shared_transient& t) { return freeze_transient(self, t); });
}

PyObject* transient_enter(PyObject* self, PyObject*) { return Py_NewRef(self); }

PyObject* transient_exit(PyObject* self, PyObject* const*, Py_ssize_t nargs) {
    if (nargs != 3) return argument_count_error("TransientSharedMap.__exit__", "exactly 3 arguments", nargs);
    return exit_transient<TransientSharedObject>(self, transient_name,
                                                 [self](shared_transient& t) { return freeze_transient(self, t); });
}

PyObject* transient_snapshot(PyObject* self) {
    return locked_transient<TransientSharedObject, PyObject*>(
        self, transient_name, nullptr, [self](shared_transient& t) { return freeze_transient(self, t); });
}

PyObject* transient_repr(PyObject* self) {
    return repr_transient<TransientSharedObject>(self, transient_name, transient_snapshot);
}

PyMethodDef transient_methods[] = {
    {"persistent", transient_persistent, METH_NOARGS,
     "persistent($self, /)\n--\n\nThe contents as a SharedMap (O(1)); the transient is finished."},
    {"__enter__", transient_enter, METH_NOARGS, "__enter__($self, /)\n--\n\nThe transient itself."},
    {"__exit__", as_method(transient_exit), METH_FASTCALL,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\nFinishes the transient as persistent() does."},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef transient_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TransientSharedObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

void transient_dealloc(PyObject* self) {
    auto* obj = reinterpret_cast<TransientSharedObject*>(self);
    PyTypeObject* type = Py_TYPE(self);
    if (obj->weakreflist) PyObject_ClearWeakRefs(self);
    delete obj->transient;
    Py_XDECREF(obj->frozen);
    type->tp_free(self);
    Py_DECREF(type);
}

PyObject* transient_new_error(PyTypeObject*, PyObject*, PyObject*) {
    PyErr_SetString(PyExc_TypeError, "TransientSharedMap is made by SharedMap.transient()");
    return nullptr;
}

PyType_Slot transient_slots[] = {
    {Py_tp_doc, const_cast<char*>("A mutable builder of a SharedMap (SharedMap.transient()); persistent() freezes it.")},
    {Py_tp_new, reinterpret_cast<void*>(transient_new_error)},
    {Py_tp_dealloc, reinterpret_cast<void*>(transient_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(transient_repr)},
    {Py_tp_hash, reinterpret_cast<void*>(PyObject_HashNotImplemented)},
    {Py_tp_methods, transient_methods},
    {Py_tp_members, transient_members},
    {Py_mp_length, reinterpret_cast<void*>(transient_length)},
    {Py_mp_subscript, reinterpret_cast<void*>(transient_subscript)},
    {Py_mp_ass_subscript, reinterpret_cast<void*>(transient_ass_subscript)},
    {Py_sq_contains, reinterpret_cast<void*>(transient_contains)},
    {0, nullptr},
};

// ---- SharedAtom ------------------------------------------------------------------------------

SharedAtomObject* as_atom(PyObject* o) { return reinterpret_cast<SharedAtomObject*>(o); }

PyObject* atom_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"name", nullptr};
    PyObject* name = nullptr;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U:SharedAtom", const_cast<char**>(keywords), &name)) return nullptr;
    module_state* state = state_of_type(type);
    if (!state) return nullptr;
    Py_ssize_t size;
    const char* utf8 = PyUnicode_AsUTF8AndSize(name, &size);
    if (!utf8) return nullptr;
    return guard([&]() -> PyObject* {
        shared_cell_registry::handle h =
            shared_cell_registry::instance().open(std::string_view(utf8, static_cast<std::size_t>(size)));
        auto* a = reinterpret_cast<SharedAtomObject*>(type->tp_alloc(type, 0));
        if (!a) return nullptr;
        new (&a->cell) shared_cell_registry::handle(std::move(h));
        a->name = Py_NewRef(name);
        a->weakreflist = nullptr;
        a->state = state;
        return reinterpret_cast<PyObject*>(a);
    });
}

PyObject* atom_deref(PyObject* self, PyObject*) {
    SharedAtomObject* a = as_atom(self);
    return guard([&] { return new_shared(a->state, a->cell.deref()); });
}
PyObject* atom_value(PyObject* self, void*) { return atom_deref(self, nullptr); }
PyObject* atom_name(PyObject* self, void*) { return Py_NewRef(as_atom(self)->name); }

PyObject* atom_reset(PyObject* self, PyObject* value) {
    SharedAtomObject* a = as_atom(self);
    PyObject* desired = coerce_shared(a->state, value, "SharedAtom.reset()'s argument");
    if (!desired) return nullptr;
    PyObject* result = guard([&] { return new_shared(a->state, a->cell.reset(as_shared(desired)->map)); });
    Py_DECREF(desired);
    return result;
}

PyObject* atom_compare_and_set(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 2) return argument_count_error("SharedAtom.compare_and_set", "exactly 2 arguments", nargs);
    SharedAtomObject* a = as_atom(self);
    if (!is_shared_map(args[0])) {
        PyErr_Format(PyExc_TypeError, "SharedAtom.compare_and_set()'s expected value must be a SharedMap, not %.200s",
                     Py_TYPE(args[0])->tp_name);
        return nullptr;
    }
    PyObject* desired = coerce_shared(a->state, args[1], "SharedAtom.compare_and_set()'s new value");
    if (!desired) return nullptr;
    PyObject* result = guard([&] {
        return PyBool_FromLong(a->cell.compare_and_set(as_shared(args[0])->map, as_shared(desired)->map));
    });
    Py_DECREF(desired);
    return result;
}

// swap(fn, *args, **kwargs): fn(current, *args, **kwargs) until the result is published.
PyObject* atom_swap(PyObject* self, PyObject* args, PyObject* kwargs) {
    const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 1) return argument_count_error("SharedAtom.swap", "at least 1 positional argument", nargs);
    SharedAtomObject* a = as_atom(self);
    PyObject* fn = PyTuple_GET_ITEM(args, 0);
    PyObject* call_args = PyTuple_New(nargs);  // (current, *args[1:])
    if (!call_args) return nullptr;
    PyTuple_SET_ITEM(call_args, 0, Py_NewRef(Py_None));
    for (Py_ssize_t i = 1; i < nargs; ++i) PyTuple_SET_ITEM(call_args, i, Py_NewRef(PyTuple_GET_ITEM(args, i)));
    PyObject* last = nullptr;  // the SharedMap object of the last result
    PyObject* result = guard([&]() -> PyObject* {
        shared_map published = a->cell.swap([&](const shared_map& current) -> shared_map {
            PyObject* now = new_shared(a->state, shared_map(current));
            if (!now) throw python_error{};
            PyObject* previous = PyTuple_GET_ITEM(call_args, 0);
            PyTuple_SET_ITEM(call_args, 0, now);
            Py_DECREF(previous);
            PyObject* next = PyObject_Call(fn, call_args, kwargs);
            if (!next) throw python_error{};
            PyObject* coerced = coerce_shared(a->state, next, "the value SharedAtom.swap()'s function returned");
            Py_DECREF(next);
            if (!coerced) throw python_error{};
            Py_XSETREF(last, coerced);
            return as_shared(coerced)->map;
        });
        if (last && as_shared(last)->map.identical(published)) return Py_NewRef(last);
        return new_shared(a->state, std::move(published));
    });
    Py_XDECREF(last);
    Py_DECREF(call_args);
    return result;
}

PyObject* atom_repr(PyObject* self) { return PyUnicode_FromFormat("SharedAtom(%R)", as_atom(self)->name); }

void atom_dealloc(PyObject* self) {
    SharedAtomObject* a = as_atom(self);
    PyTypeObject* type = Py_TYPE(self);
    if (a->weakreflist) PyObject_ClearWeakRefs(self);
    a->cell.~handle();  // closes the handle; the last one removes the cell from the registry
    Py_XDECREF(a->name);
    type->tp_free(self);
    Py_DECREF(type);
}

PyMethodDef atom_methods[] = {
    {"deref", atom_deref, METH_NOARGS, "deref($self, /)\n--\n\nThe current SharedMap (wait-free)."},
    {"reset", atom_reset, METH_O,
     "reset($self, new, /)\n--\n\n"
     "Stores new (a SharedMap, or a mapping, converted); returns the SharedMap it replaced."},
    {"compare_and_set", as_method(atom_compare_and_set), METH_FASTCALL,
     "compare_and_set($self, expected, new, /)\n--\n\n"
     "Stores new only if the cell still holds the version expected was read as (the same\n"
     "root, not merely an equal map); returns whether it did."},
    {"swap", as_method(atom_swap), METH_VARARGS | METH_KEYWORDS,
     "swap($self, fn, /, *args, **kwargs)\n--\n\n"
     "Stores fn(current, *args, **kwargs) (a SharedMap or a mapping), retrying on contention;\n"
     "returns the SharedMap stored. fn may run several times."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef atom_getset[] = {
    {"value", atom_value, nullptr, "The current SharedMap (same as deref()).", nullptr},
    {"name", atom_name, nullptr, "The name of the process-wide cell.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMemberDef atom_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SharedAtomObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

const char atom_doc[] =
    "SharedAtom(name)\n--\n\n"
    "A handle to the process-wide cell called name, holding a SharedMap (empty when created).\n\n"
    "Every interpreter of the process that opens the same name sees the same cell, so a map\n"
    "stored by one is read by the others in O(1). The cell lives while any handle to it does.\n"
    "Its operations are lock-free; the handle itself is immutable.";

PyType_Slot atom_slots[] = {
    {Py_tp_doc, const_cast<char*>(atom_doc)},
    {Py_tp_new, reinterpret_cast<void*>(atom_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(atom_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(atom_repr)},
    {Py_tp_methods, atom_methods},
    {Py_tp_getset, atom_getset},
    {Py_tp_members, atom_members},
    {0, nullptr},
};

}  // namespace

PyObject* new_shared_map_object(module_state* state, const shared_map& map) {
    return guard([&] { return new_shared(state, shared_map(map)); });
}

const shared_map* shared_map_of(PyObject* o) noexcept { return is_shared_map(o) ? &as_shared(o)->map : nullptr; }

PyType_Spec shared_map_spec = {
    "pypersistent.SharedMap",
    static_cast<int>(sizeof(SharedMapObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_MAPPING | Py_TPFLAGS_IMMUTABLETYPE,
    shared_slots,
};

PyType_Spec shared_map_iterator_spec = {
    "pypersistent.SharedMapIterator",
    static_cast<int>(sizeof(SharedIteratorObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    iterator_slots,
};

PyType_Spec transient_shared_map_spec = {
    "pypersistent.TransientSharedMap",
    static_cast<int>(sizeof(TransientSharedObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    transient_slots,
};

PyType_Spec shared_atom_spec = {
    "pypersistent.SharedAtom",
    static_cast<int>(sizeof(SharedAtomObject)),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    atom_slots,
};

}  // namespace pypersistent::python
