// The bridge between the C++ core and CPython: the trie instantiated over PyObject* exactly as
// the extension module uses it, and the helpers a C++ program that embeds Python needs to pass
// maps both ways without copying. This is the only header outside src/ that includes Python.
//
// Rules for hosts:
// - to_python(), from_python() and atom_snapshot() take an attached thread state (on a GIL
//   build: hold the GIL) of the interpreter the maps belong to.
// - A python_map (an object_map plus the interpreter it belongs to) may be copied, read and
//   destroyed on any thread, with no thread state. Reading entries only reads pointers; turning
//   them into values (PyLong_AsLong...) is Python API and needs a thread state. Destroying the
//   last reference to a node must drop Python references, so python_map's destructor then
//   attaches a thread state of the recorded interpreter for the time of the release. It uses
//   PyThreadState_New on that interpreter, not PyGILState_Ensure, which always attaches to the
//   main interpreter and so is wrong for maps made in a subinterpreter.
// - On a GIL build even node reference counts are guarded by the GIL (see object_policy), so a
//   thread without it must not copy a python_map either; free-threaded builds have no such rule.
#pragma once

#include <Python.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "pypersistent.hpp"

namespace pypersistent::python {

// Thrown when a Python call failed; the Python error indicator is already set.
struct python_error {};

// While a transient edits nodes in place, dropping a reference must not run Python code: a
// __del__ could start the garbage collector (which walks the trie) or reach the transient while
// a node is half-moved. Each such edit therefore runs inside a `deferred_releases` scope (the
// policy's edit_scope), and references the trie drops meanwhile are released when the outermost
// scope on this thread ends, right after the edit.
//
// The scope covers the trie's own code only. Python code that the trie calls meanwhile (a key's
// __eq__) runs in a `user_code_window`, with no scope open: what it drops is released at once,
// as anywhere else in Python, and in the interpreter it runs in (such code may switch this
// thread to another interpreter, whose objects must never reach this interpreter's queue); a
// scope it opens itself is released when it closes, inside the window.
struct deferred_releases {
private:
    // One edit drops a few references at most (an entry pushed one level down, a replaced
    // value): they wait in a small inline array, so scopes opened for every edit allocate
    // nothing; only more than that (a merge that frees a subtree) spills into a vector.
    static constexpr unsigned inline_capacity = 6;

    // Trivial, so the thread-local needs no constructor guard and no exit hook, and (on ELF)
    // the initial-exec model makes each access one load instead of a __tls_get_addr call:
    // every Py_DECREF of a key or value goes through here. It costs 64 bytes of the static TLS
    // space that glibc reserves for modules loaded later.
    struct per_thread {
        int depth;
        unsigned held;                         // used slots of `inline_held`
        std::vector<PyObject*>* pending;       // the overflow, allocated only when needed
        PyObject* inline_held[inline_capacity];
    };
    static per_thread& state() noexcept {
#if defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
        static thread_local per_thread value __attribute__((tls_model("initial-exec"))) = {0, 0, nullptr, {}};
#else
        static thread_local per_thread value = {0, 0, nullptr, {}};
#endif
        return value;
    }

public:
    deferred_releases() noexcept { ++state().depth; }
    ~deferred_releases() {
        per_thread& s = state();
        if (--s.depth == 0 && (s.held || s.pending)) release_pending(s);
    }
    deferred_releases(const deferred_releases&) = delete;
    deferred_releases& operator=(const deferred_releases&) = delete;

    // Py_DECREF now, or at the end of the outermost scope if one is open on this thread.
    static void release(PyObject* o) noexcept {
        per_thread& s = state();
        if (s.depth == 0) {
            Py_DECREF(o);
            return;
        }
        if (s.held < inline_capacity) {
            s.inline_held[s.held++] = o;
            return;
        }
        spill(s, o);
    }

    // Suspends the open scopes of this thread while Python code runs (see above): their held
    // references are set aside, and scopes the code opens start empty.
    class user_code_window {
    public:
        user_code_window() noexcept : state_(state()), saved_(state_) {
            state_.depth = 0;
            state_.held = 0;
            state_.pending = nullptr;
        }
        ~user_code_window() { state_ = saved_; }
        user_code_window(const user_code_window&) = delete;
        user_code_window& operator=(const user_code_window&) = delete;

    private:
        per_thread& state_;
        per_thread saved_;
    };

private:
    // Out of line, so that release() stays small enough to inline into the loops that free a
    // node's values.
    PYPERSISTENT_NOINLINE
    static void spill(per_thread& s, PyObject* o) noexcept {
        try {
            if (!s.pending) s.pending = new std::vector<PyObject*>();
            s.pending->push_back(o);
        } catch (...) {
            Py_DECREF(o);  // out of memory: release now rather than leak
        }
    }

    // Runs with depth 0: what the Py_DECREFs run (a __del__) releases at once or in scopes of
    // its own, which empty themselves; this loop only ever takes what was held before.
    PYPERSISTENT_NOINLINE
    static void release_pending(per_thread& s) noexcept {
        while (s.held || s.pending) {
            PyObject* batch_inline[inline_capacity];
            const unsigned n = s.held;
            for (unsigned i = 0; i < n; ++i) batch_inline[i] = s.inline_held[i];
            s.held = 0;
            std::vector<PyObject*>* batch = s.pending;
            s.pending = nullptr;
            for (unsigned i = 0; i < n; ++i) Py_DECREF(batch_inline[i]);
            if (batch) {
                for (PyObject* o : *batch) Py_DECREF(o);
                delete batch;
            }
        }
    }
};

struct object_hash {
    pypersistent::hash_t operator()(PyObject* key) const {
        deferred_releases::user_code_window window;
        const Py_hash_t h = PyObject_Hash(key);
        if (h == -1) throw python_error{};
        return static_cast<pypersistent::hash_t>(h);
    }
};

struct object_equal {
    bool operator()(PyObject* a, PyObject* b) const {
        if (a == b) return true;  // the common case stays inline
        return call_eq(a, b);
    }

private:
    PYPERSISTENT_NOINLINE
    static bool call_eq(PyObject* a, PyObject* b) {
        int r;
        {
            deferred_releases::user_code_window window;
            r = PyObject_RichCompareBool(a, b, Py_EQ);
        }
        if (r < 0) throw python_error{};
        return r != 0;
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
    static void release(PyObject* const& o) noexcept { deferred_releases::release(o); }
    // Nodes come from Python's own allocator (pymalloc, or mimalloc on free-threaded builds),
    // which serves the bursts of small same-sized blocks that path copies make and drop much
    // faster than malloc: `m.update(u)` with 1,000 keys on a 100K map went from 216 to 150 ns
    // per key, one-key variants of a 1M map from 340 to 280 ns. Its rule is the rule for the
    // keys and values already: a thread state of the map's interpreter is attached whenever a
    // node is made or freed (python_map attaches one before it drops a last reference).
    using edit_scope = deferred_releases;
    static void* allocate(std::size_t bytes) {
        void* p = PyMem_Malloc(bytes);
        if (!p) throw std::bad_alloc();
        return p;
    }
    static void deallocate(void* p, std::size_t) noexcept { PyMem_Free(p); }
    static bool same_value(PyObject* a, PyObject* b) noexcept { return a == b; }
    // A persistent append copies the list's tail; borrowing the copied references from the old
    // tail saves a Py_INCREF per copied element now and a Py_DECREF when the old version dies.
    static constexpr bool lend_tail_prefixes = true;
    // dict's order too: the same object is the same key, before hashes are compared.
    static constexpr bool identical_key(PyObject* a, PyObject* b) noexcept { return a == b; }
};

using object_map = pypersistent::persistent_map<PyObject*, PyObject*, object_hash, object_equal, object_equal, object_policy>;
using object_transient = object_map::transient_type;
using object_trie = object_map::trie;
// The set over the same policy: key-only entries (16 bytes: the key and its cached hash).
using object_set = pypersistent::persistent_set<PyObject*, object_hash, object_equal, object_policy>;
using object_set_transient = object_set::transient_type;
using object_set_trie = object_set::trie;
// PersistentList's vector over the same policy (strong references, deferred releases).
using object_vector = pypersistent::persistent_vector<PyObject*, object_policy>;
using object_vector_transient = object_vector::transient_type;
using object_vector_trie = object_vector::trie;

// Python's `<` as the ordering of persistent_sorted_map: a raising __lt__ throws python_error
// (the map is unchanged: see sorted_map.hpp). Exact ints that fit a C long, exact floats and
// exact strs of two of the same type compare inline, as `<` would; anything else calls
// PyObject_RichCompareBool(a, b, Py_LT) in a user_code_window, like object_equal.
struct object_less {
    bool operator()(PyObject* a, PyObject* b) const {
        PyTypeObject* ta = Py_TYPE(a);
        if (ta == Py_TYPE(b)) {
            if (ta == &PyLong_Type) {
                long x, y;
                if (small_int(a, x) && small_int(b, y)) return x < y;
                int overflow_a = 0, overflow_b = 0;
                x = PyLong_AsLongAndOverflow(a, &overflow_a);
                y = PyLong_AsLongAndOverflow(b, &overflow_b);
                if (!overflow_a && !overflow_b) return x < y;  // exact ints never fail here
            } else if (ta == &PyFloat_Type) {
                return PyFloat_AS_DOUBLE(a) < PyFloat_AS_DOUBLE(b);
            } else if (ta == &PyUnicode_Type) {
                return str_less(a, b);
            }
        }
        return call_lt(a, b);
    }

    // memcmp's sign, inline: keys are short, and a call into the C library costs more than
    // comparing them eight bytes at a time.
    static int compare_bytes(const Py_UCS1* a, const Py_UCS1* b, std::size_t n) noexcept {
        std::size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            std::uint64_t x, y;
            std::memcpy(&x, a + i, 8);
            std::memcpy(&y, b + i, 8);
            if (x != y) break;  // the bytes below decide
        }
        for (; i < n; ++i) {
            if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
        }
        return 0;
    }

    // Two exact strs. Latin-1 strs (one byte per code point: nearly every key) compare their
    // bytes, whose order is the code points'; others go through PyUnicode_Compare, which cannot
    // fail on two strs.
    static bool str_less(PyObject* a, PyObject* b) noexcept {
        if (PyUnicode_KIND(a) == PyUnicode_1BYTE_KIND && PyUnicode_KIND(b) == PyUnicode_1BYTE_KIND) {
            return latin1_less(a, b, 0);
        }
        return PyUnicode_Compare(a, b) < 0;
    }
    // Two latin-1 strs whose first `same` bytes (of the shorter one's) are known to be equal.
    static bool latin1_less(PyObject* a, PyObject* b, std::size_t same) noexcept {
        const std::size_t la = static_cast<std::size_t>(PyUnicode_GET_LENGTH(a));
        const std::size_t lb = static_cast<std::size_t>(PyUnicode_GET_LENGTH(b));
        const std::size_t common = la < lb ? la : lb;
        if (common > same) {
            const int c = compare_bytes(PyUnicode_1BYTE_DATA(a) + same, PyUnicode_1BYTE_DATA(b) + same, common - same);
            if (c != 0) return c < 0;
        }
        return la < lb;
    }

private:
    // The value of an exact int of one digit (|x| < 2**30), read inline from CPython's layout
    // (the compact-int API from 3.12 on); false for others, which take PyLong_AsLongAndOverflow.
    static bool small_int(PyObject* o, long& out) noexcept {
#if PY_VERSION_HEX >= 0x030C0000
        PyLongObject* v = reinterpret_cast<PyLongObject*>(o);
        if (!PyUnstable_Long_IsCompact(v)) return false;
        out = static_cast<long>(PyUnstable_Long_CompactValue(v));
        return true;
#else
        const Py_ssize_t size = Py_SIZE(o);
        if (size < -1 || size > 1) return false;
        const long digit0 = size == 0 ? 0 : static_cast<long>(reinterpret_cast<PyLongObject*>(o)->ob_digit[0]);
        out = size < 0 ? -digit0 : digit0;
        return true;
#endif
    }

    PYPERSISTENT_NOINLINE
    static bool call_lt(PyObject* a, PyObject* b) {
        int r;
        {
            deferred_releases::user_code_window window;
            r = PyObject_RichCompareBool(a, b, Py_LT);
        }
        if (r < 0) throw python_error{};
        return r != 0;
    }
};

// A key as PersistentSortedDict's B+-tree stores it: the key object and, for the two kinds of key
// nearly every sorted map holds, 16 bytes that decide most comparisons without reading the key
// object: an exact int that fits in 64 bits carries its value; a latin-1 str (one byte per code
// point) its first sixteen bytes, big-endian and zero-padded, so that two different prefixes
// order the strs as `<` does (equal prefixes decide nothing: the rest of the strs is compared),
// unless both strs are whole in them (at most sixteen characters, none of them NUL, so that the
// zero padding marks where each ends): two such strs with equal prefixes are equal, and the
// comparison that finds the key a lookup asks for reads neither object. A lookup makes about
// log2(n) comparisons, each against a stored key: decided inline, a descent through a large map
// costs one cache miss per level instead of one per comparison. The kind of the inline bytes
// lives in the low bits of the object pointer (objects are at least 4-byte aligned), so a key is
// three words. Any other pair of keys compares through object_less: the order is Python's `<`.
class sorted_key {
public:
    // latin1_whole: latin1_prefix whose str lies whole in the prefix (see above); the two
    // latin-1 kinds share the bit latin1_prefix, so keys of either kind compare by prefix.
    enum kind : std::uintptr_t { other = 0, exact_int = 1, latin1_prefix = 2, latin1_whole = 3 };

    // Implicit: every key a caller passes in (a probe, a new key) is a PyObject*.
    sorted_key(PyObject* o) noexcept : tagged_(reinterpret_cast<std::uintptr_t>(o)), bits_(0), more_bits_(0) {
        if (PyLong_CheckExact(o)) {
            if (int64_of(o, bits_)) tagged_ |= exact_int;
        } else if (PyUnicode_CheckExact(o) && PyUnicode_KIND(o) == PyUnicode_1BYTE_KIND) {
            const Py_UCS1* s = PyUnicode_1BYTE_DATA(o);
            const Py_ssize_t length = PyUnicode_GET_LENGTH(o);
            bits_ = static_cast<std::int64_t>(eight_bytes_of(s, length, 0));
            more_bits_ = eight_bytes_of(s, length, 8);
            const bool whole = length <= 16 && !has_zero_byte(static_cast<std::uint64_t>(bits_), length) &&
                               !has_zero_byte(more_bits_, length - 8);
            tagged_ |= whole ? latin1_whole : latin1_prefix;
        }
    }
    PyObject* object() const noexcept { return reinterpret_cast<PyObject*>(tagged_ & ~kind_mask); }
    kind key_kind() const noexcept { return static_cast<kind>(tagged_ & kind_mask); }
    std::int64_t int_value() const noexcept { return bits_; }
    // A latin-1 str's bytes 0-7 and 8-15.
    std::uint64_t prefix() const noexcept { return static_cast<std::uint64_t>(bits_); }
    std::uint64_t prefix_rest() const noexcept { return more_bits_; }
    bool same_object(const sorted_key& other) const noexcept { return tagged_ == other.tagged_; }

private:
    static constexpr std::uintptr_t kind_mask = 3;
    std::uintptr_t tagged_;
    std::int64_t bits_;
    std::uint64_t more_bits_;

    static bool int64_of(PyObject* o, std::int64_t& out) noexcept {
#if PY_VERSION_HEX >= 0x030C0000
        PyLongObject* as_long = reinterpret_cast<PyLongObject*>(o);
        if (PyUnstable_Long_IsCompact(as_long)) {
            out = static_cast<std::int64_t>(PyUnstable_Long_CompactValue(as_long));
            return true;
        }
#endif
        int overflow = 0;
        const long long value = PyLong_AsLongLongAndOverflow(o, &overflow);  // cannot fail on an exact int
        out = static_cast<std::int64_t>(value);
        return overflow == 0;
    }
    // Whether the first `count` bytes (at most 8; none if count <= 0) of a big-endian word hold a
    // zero: the bytes past them are set first, then the classic test for a zero byte.
    static bool has_zero_byte(std::uint64_t word, Py_ssize_t count) noexcept {
        const std::uint64_t past = count >= 8 ? 0 : count <= 0 ? ~std::uint64_t{0} : ~std::uint64_t{0} >> (8 * count);
        const std::uint64_t v = word | past;
        return ((v - 0x0101010101010101ull) & ~v & 0x8080808080808080ull) != 0;
    }
    // Bytes from..from+7, big-endian, zero past the end.
    static std::uint64_t eight_bytes_of(const Py_UCS1* s, Py_ssize_t length, Py_ssize_t from) noexcept {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        std::uint64_t word;
        if (from + 8 <= length) {
            std::memcpy(&word, s + from, 8);
            return __builtin_bswap64(word);
        }
        if (length >= 8 && from < length) {
            // The last eight bytes, big-endian, shifted up past the ones before `from`: the
            // bytes from `from` on at the top, zeros below (one load, not a loop of eight).
            std::memcpy(&word, s + length - 8, 8);
            return __builtin_bswap64(word) << (8 * (from + 8 - length));
        }
#endif
        std::uint64_t p = 0;
        for (Py_ssize_t i = from; i < from + 8; ++i) p = (p << 8) | (i < length ? s[i] : 0u);
        return p;
    }
};
static_assert(alignof(PyObject) >= 4, "sorted_key keeps its kind in the low bits of an object pointer");

struct sorted_key_less {
    // Inline, with no jump on the answer (the search selects on it): two ints, two latin-1 strs
    // whose inline bytes differ, two whole latin-1 strs. The rest (equal prefixes of longer
    // strs, other keys) is out of line.
    PYPERSISTENT_ALWAYS_INLINE bool operator()(const sorted_key& a, const sorted_key& b) const {
        const sorted_key::kind k = a.key_kind(), bk = b.key_kind();
        if (k == sorted_key::exact_int && bk == sorted_key::exact_int) return a.int_value() < b.int_value();
        if ((k & bk & sorted_key::latin1_prefix) != 0) {
            const std::uint64_t ap = a.prefix(), bp = b.prefix(), ar = a.prefix_rest(), br = b.prefix_rest();
            if (((ap ^ bp) | (ar ^ br)) != 0) return (ap < bp) | ((ap == bp) & (ar < br));
            if ((k & bk) == sorted_key::latin1_whole) return false;  // the same str
        }
        return out_of_line(a, b);
    }

    // The B+-tree's search of one node (see has_node_search in sorted_map.hpp) for the probes
    // whose inline bytes decide: an exact int among exact ints, a latin-1 str among latin-1 strs.
    // A binary search whose step selects the next key rather than jumping on the answer (a jump
    // on a comparison is mispredicted half the time), comparing inline words only. It declines,
    // and the comparator's binary search decides, when a key it compared is of another kind, or
    // when the key at the edge it found (the first key not below the probe; Upper: the last key
    // below or equal) is a str whose sixteen inline bytes equal the probe's without both strs
    // being whole in them. That one check covers every key with the probe's bytes: the search
    // compared both keys at the edge (see select_search), and in a node whose keys are in order
    // the keys with the probe's bytes are a run that starts (Upper: ends) there whenever the
    // search met one of them. So when it answers, each answer it used is the one `<` gives, and
    // in a node whose keys are in order its count is the comparator's.
    template <bool Upper>
    static PYPERSISTENT_ALWAYS_INLINE bool node_bound(const char* first, std::size_t stride, unsigned n,
                                                      const sorted_key& key, unsigned& pos) noexcept {
        const sorted_key::kind kind = key.key_kind();
        if (kind == sorted_key::exact_int) {
            const std::int64_t value = key.int_value();
            return select_search(first, stride, n, pos, [value](const sorted_key& k, unsigned& odd) noexcept {
                odd |= static_cast<unsigned>(k.key_kind() ^ sorted_key::exact_int);
                return Upper ? k.int_value() <= value : k.int_value() < value;
            });
        }
        if ((kind & sorted_key::latin1_prefix) == 0) return false;
        const inline_bytes probe = inline_bytes_of(key);
        const auto below = [probe](const sorted_key& k, unsigned& odd) noexcept {
            odd |= ~static_cast<unsigned>(k.key_kind()) & sorted_key::latin1_prefix;
            const inline_bytes bytes = inline_bytes_of(k);
            return Upper ? bytes <= probe : bytes < probe;
        };
        const bool decided = select_search(first, stride, n, pos, below);
        if (!decided || pos == (Upper ? 0u : n)) return decided;
        const sorted_key& edge = *reinterpret_cast<const sorted_key*>(first + (Upper ? pos - 1 : pos) * stride);
        // Same bytes, both whole: the same str.
        return !(inline_bytes_of(edge) == probe) ||
               (kind == sorted_key::latin1_whole && edge.key_kind() == sorted_key::latin1_whole);
    }

private:
    // A latin-1 key's sixteen inline bytes as one number, so that comparing two of them is a
    // subtraction rather than a jump on the first word.
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 inline_bytes;  // __extension__: -Wpedantic rejects the type
    static inline_bytes inline_bytes_of(const sorted_key& k) noexcept {
        return static_cast<inline_bytes>(k.prefix()) << 64 | k.prefix_rest();
    }
#else
    struct inline_bytes {
        std::uint64_t high, low;
        bool operator==(const inline_bytes& o) const noexcept { return high == o.high && low == o.low; }
        bool operator<(const inline_bytes& o) const noexcept {
            return high < o.high || (high == o.high && low < o.low);
        }
        bool operator<=(const inline_bytes& o) const noexcept { return !(o < *this); }
    };
    static inline_bytes inline_bytes_of(const sorted_key& k) noexcept { return {k.prefix(), k.prefix_rest()}; }
#endif

    // Khuong and Morin's branch-free lower bound over the n keys: `below(k, odd)` answers whether
    // k goes before the probe and sets odd when it cannot tell. Each step selects the next key's
    // address (a conditional move) instead of jumping on the answer; the offsets depend on n only,
    // so a step waits for one load and one comparison. Whatever `below` answers (as long as it
    // answers the same for the same key), the search has asked it about both keys at the edge it
    // returns: the one before (answered below) and the one at it (answered not below).
    template <class Below>
    static PYPERSISTENT_ALWAYS_INLINE bool select_search(const char* first, std::size_t stride, unsigned n,
                                                         unsigned& pos, Below below) noexcept {
        if (n == 0) {
            pos = 0;
            return true;
        }
        unsigned odd = 0;
        const char* at = first;
        while (n > 1) {
            const unsigned half = n / 2;
            const char* mid = at + half * stride;
            at = below(*reinterpret_cast<const sorted_key*>(mid), odd) ? mid : at;
            n -= half;
        }
        pos = static_cast<unsigned>(static_cast<std::size_t>(at - first) / stride) +
              static_cast<unsigned>(below(*reinterpret_cast<const sorted_key*>(at), odd));
        return odd == 0;
    }

    PYPERSISTENT_NOINLINE
    static bool out_of_line(const sorted_key& a, const sorted_key& b) {
        if ((a.key_kind() & b.key_kind() & sorted_key::latin1_prefix) != 0) {
            // Equal prefixes: the first sixteen bytes (or all of the shorter str) are the same.
            // One str object is not less than itself (no need to read it: exact strs).
            if (a.same_object(b)) return false;
            return object_less::latin1_less(a.object(), b.object(), 16);
        }
        return object_less{}(a.object(), b.object());
    }
};

// object_policy, extended to sorted_key (its object is the reference the tree holds).
struct sorted_object_policy : object_policy {
    using object_policy::identical_key;
    using object_policy::release;
    using object_policy::retain;
    static void retain(const sorted_key& k) noexcept { Py_INCREF(k.object()); }
    static void release(const sorted_key& k) noexcept { deferred_releases::release(k.object()); }
    static bool identical_key(const sorted_key& a, const sorted_key& b) noexcept { return a.same_object(b); }
};

// PersistentSortedDict's B+-tree over the same policy (strong references, deferred releases),
// ordered by Python's `<`.
using object_sorted_map = pypersistent::persistent_sorted_map<sorted_key, PyObject*, sorted_key_less, sorted_object_policy>;
using object_sorted_transient = object_sorted_map::transient_type;
using object_sorted_tree = object_sorted_map::tree_type;

inline pypersistent::hash_t to_trie_hash(Py_hash_t h) { return static_cast<pypersistent::hash_t>(h); }


// ---- the extension's C API, for hosts --------------------------------------------------------

// Bumped whenever the node layout or this table changes; hosts refuse a mismatch.
constexpr unsigned c_api_version = 1;

// Published by each (sub)interpreter's module as the capsule "pypersistent._pypersistent._C_API".
struct c_api {
    unsigned version;
    unsigned node_header_bytes;  // layout check: sizeof of the node header
    unsigned atomic_refcounts;   // 1 on free-threaded builds
    // A new PersistentMap of this interpreter taking over one reference to `root`.
    PyObject* (*wrap)(const c_api* api, object_trie::node* root, std::size_t size);
    // Retains the root of a PersistentMap; 0, or -1 with TypeError set.
    int (*unwrap)(PyObject* map, object_trie::node** root, std::size_t* size);
    // Retains the root of an Atom's current map without calling Python (free-threaded: safe
    // without a thread state); 0, or -1 (TypeError set if a thread state is attached).
    int (*atom_current)(PyObject* atom, object_trie::node** root, std::size_t* size);
    void* module_state;  // for the module's own use
};

inline unsigned expected_node_header_bytes() { return static_cast<unsigned>(object_trie::header_bytes); }

// The C API of the current interpreter's module (imports it). nullptr with an exception set.
inline const c_api* import_c_api() {
    auto* api = static_cast<const c_api*>(PyCapsule_Import("pypersistent._pypersistent._C_API", 0));
    if (!api) return nullptr;
    if (api->version != c_api_version || api->node_header_bytes != expected_node_header_bytes() ||
        api->atomic_refcounts != (std::is_same<object_policy::refcount, atomic_refcount>::value ? 1u : 0u)) {
        PyErr_SetString(PyExc_ImportError,
                        "pypersistent: the extension module was built from a different version of the headers");
        return nullptr;
    }
    return api;
}

// A PersistentMap object sharing `map`'s trie (no copy). Needs an attached thread state.
inline PyObject* to_python(const c_api* api, const object_map& map) {
    object_map copy = map;
    const std::size_t size = copy.size();
    return api->wrap(api, copy.release_root(), size);
}

// The trie of a PersistentMap (no copy). Needs an attached thread state. Throws python_error.
inline object_map from_python(const c_api* api, PyObject* obj) {
    object_trie::node* root = nullptr;
    std::size_t size = 0;
    if (api->unwrap(obj, &root, &size) < 0) throw python_error{};
    return object_map::adopt(root, size);
}

// The map an Atom holds now. On free-threaded builds this needs no thread state at all.
inline object_map atom_snapshot(const c_api* api, PyObject* atom) {
    object_trie::node* root = nullptr;
    std::size_t size = 0;
    if (api->atom_current(atom, &root, &size) < 0) throw python_error{};
    return object_map::adopt(root, size);
}

// ---- the extension's named shared cells, for hosts ---------------------------------------------

// SharedAtom(name) opens cells of the extension module's shared_cell_registry. The extension is
// built with hidden visibility, so in a host program shared_cell_registry::instance() is another
// registry, whose cells Python never sees. A host that shares named cells with Python uses the
// extension's registry instead: import_shared_registry() returns it (one per process, the same
// from every interpreter). Its handles, maps and values are plain C++ (no PyObject*): once
// obtained they need no thread state and may be used from any thread, before and after the
// interpreters come and go. Host and extension must be built from the same headers; the
// capsule carries the sizes of the shared types so that a mismatch is refused.
struct shared_registry_export {
    unsigned version;  // shared_registry_export_version
    unsigned value_bytes, map_bytes, registry_bytes, node_header_bytes;
    pypersistent::shared_cell_registry* registry;
};
// Raised whenever neutral values change form or hash without changing size (2: short strs
// stored inside the value; 3: short strs hashed by their words), so that a host built from older
// headers is refused rather than misreading them or searching with other hashes.
constexpr unsigned shared_registry_export_version = 3;

inline shared_registry_export make_shared_registry_export(pypersistent::shared_cell_registry* registry) noexcept {
    return {shared_registry_export_version,
            static_cast<unsigned>(sizeof(pypersistent::neutral_value)),
            static_cast<unsigned>(sizeof(pypersistent::shared_map)),
            static_cast<unsigned>(sizeof(pypersistent::shared_cell_registry)),
            static_cast<unsigned>(pypersistent::shared_map::trie::header_bytes),
            registry};
}

// The extension's registry (imports pypersistent._pypersistent in the current interpreter:
// needs an attached thread state). nullptr with an exception set.
inline pypersistent::shared_cell_registry* import_shared_registry() {
    auto* exported = static_cast<const shared_registry_export*>(
        PyCapsule_Import("pypersistent._pypersistent._shared_registry", 0));
    if (!exported) return nullptr;
    const shared_registry_export expected = make_shared_registry_export(nullptr);
    if (exported->version != expected.version || exported->value_bytes != expected.value_bytes ||
        exported->map_bytes != expected.map_bytes || exported->registry_bytes != expected.registry_bytes ||
        exported->node_header_bytes != expected.node_header_bytes) {
        PyErr_SetString(PyExc_ImportError,
                        "pypersistent: the extension module was built from a different version of the headers");
        return nullptr;
    }
    return exported->registry;
}

inline PyThreadState* current_thread_state() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#elif PY_VERSION_HEX >= 0x030C0000
    return _PyThreadState_UncheckedGet();  // thread-local from 3.12 on
#else
    // Before 3.12 the "current" thread state is the GIL holder's, whichever thread that is:
    // it is this thread's only if it is the one PyGILState knows for this thread.
    PyThreadState* mine = PyGILState_GetThisThreadState();
    return mine && mine == _PyThreadState_UncheckedGet() ? mine : nullptr;
#endif
}

// Runs f with a thread state of `interp` attached: the caller's own if it already has one for
// that interpreter, else a temporary one.
template <class F>
void with_thread_state(PyInterpreterState* interp, F&& f) {
    PyThreadState* mine = current_thread_state();
    if (mine && PyThreadState_GetInterpreter(mine) == interp) {
        f();
        return;
    }
    // Undone on every way out, exceptions from f included.
    struct attached {
        PyThreadState* saved;
        explicit attached(PyInterpreterState* i, PyThreadState* current)
            : saved(current ? PyEval_SaveThread() : nullptr) {
            PyEval_RestoreThread(PyThreadState_New(i));
        }
        ~attached() {
            PyThreadState_Clear(PyThreadState_Get());
            PyThreadState_DeleteCurrent();
            if (saved) PyEval_RestoreThread(saved);
        }
        attached(const attached&) = delete;
        attached& operator=(const attached&) = delete;
    } scope(interp, mine);
    f();
}

// An object_map together with the interpreter its objects belong to. Safe to destroy on any
// thread, with or without a thread state.
class python_map {
public:
    python_map() noexcept = default;
    // Needs an attached thread state of the map's interpreter.
    explicit python_map(object_map map) : map_(std::move(map)), interp_(PyInterpreterState_Get()) {}
    // For threads without a thread state (free-threaded atom_snapshot): `interp` is the
    // interpreter the map's objects belong to.
    python_map(object_map map, PyInterpreterState* interp) noexcept : map_(std::move(map)), interp_(interp) {}
    python_map(const python_map&) = default;
    python_map(python_map&&) noexcept = default;
    python_map& operator=(python_map other) noexcept {
        std::swap(map_, other.map_);
        std::swap(interp_, other.interp_);
        return *this;
    }
    ~python_map() { release(); }

    const object_map& map() const noexcept { return map_; }
    const object_map* operator->() const noexcept { return &map_; }
    PyInterpreterState* interpreter() const noexcept { return interp_; }

private:
    void release() noexcept {
        object_trie::node* root = map_.release_root();
        if (!root) return;
#ifdef Py_GIL_DISABLED
        // Dropping a reference that is not the last one touches no Python object.
        if (root->refs.release_unless_last()) return;
#endif
        with_thread_state(interp_, [&] { object_trie::release(root); });
    }

    object_map map_;
    PyInterpreterState* interp_ = nullptr;
};

}  // namespace pypersistent::python
