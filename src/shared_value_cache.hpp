// shared_value_cache: the Python objects that SharedMap lookups (m[k], get) last returned, one
// small table per interpreter (a member of module_state), so that reading the same value again
// hands out the same object instead of building a new str or int and deallocating it again.
//
// A SharedMap's values are neutral values (neutral_value.hpp), not Python objects, so every read
// has to produce a Python object; strs and ints are immutable, so returning one object for equal
// values is what CPython's small-int cache and string interning do too (`m[k] is m[k]` may now be
// true; nothing promises either answer).
//
// Reads through a SharedMap object of a small map look first in that object's own
// handle_value_cache (at the end of this file), keyed by where the value lies in the trie; its
// misses, and reads of larger maps, come here.
//
// Layout: three direct-mapped tables, allocated on first use. A slot holds a key and a strong
// reference to the object built for it. A key that misses is cached only when it misses on its
// slot a second time before another key does (see admit), so that reads spread over more values
// than the table holds do not churn the cache; a map whose values fit the table ends up with all
// of them cached. Maps much larger than the table bypass it (max_cached_map_size).
//   * ints (small_int values outside CPython's own small-int cache): keyed by the value itself,
//     which identifies the object exactly.
//   * short strs (up to 13 ASCII characters inside the value, no block; neutral_value.hpp):
//     a slot holds the value's two words, which are the str's whole content, so comparing them
//     proves a hit without reading the cached object's characters.
//   * other strs (ASCII, up to max_cached_str_bytes): keyed by the address of the value's str
//     block. The cache holds no reference to the block, so the address may meanwhile have been
//     freed and reused for another string, and keys may collide; a hit is therefore proven by
//     content: the cached str's length and characters must equal the block's bytes. Only
//     compact ASCII strs are cached, whose characters are their UTF-8, so the comparison is a
//     byte comparison. Long strs are left out: comparing them costs what copying does, and the
//     table would keep them alive.
//
// Thread safety: on GIL builds (including subinterpreters with their own GIL, where each
// interpreter has its own module_state) the interpreter's GIL serialises every use of its
// cache. Nothing in a hit or a miss can run Python code or release the GIL (strs and ints have
// trivial deallocators), and a slot is rewritten before the evicted object is released. On
// free-threaded builds (Py_GIL_DISABLED) the cache is compiled out: readers on several threads
// would all write the same slots and reference counts, and fresh objects scale across threads.
//
// Lifetime: the cached objects belong to the interpreter whose module_state holds the table;
// module_state is destroyed by its capsule's destructor while that interpreter still runs,
// and ~shared_value_cache releases every cached object then. The cached objects are strs and
// ints, which the cycle collector does not track, so the table needs no traverse or clear slot.
#pragma once

#include <Python.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <pypersistent/neutral_value.hpp>

namespace pypersistent::python {

// a[0..n) == b[0..n) for the strings of most lookups without a call into libc's memcmp: 8-byte
// words, the last one overlapping the one before it rather than a loop over the tail, and never
// past either end. Past max_inline_compare bytes, memcmp's vector loop is the faster.
inline constexpr std::size_t max_inline_compare = 64;
PYPERSISTENT_ALWAYS_INLINE bool same_bytes(const char* a, const char* b, std::size_t n) noexcept {
    auto load8 = [](const char* p) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        return v;
    };
    auto load4 = [](const char* p) {
        std::uint32_t v;
        std::memcpy(&v, p, 4);
        return v;
    };
    if (n >= 8) {
        if (n > max_inline_compare) return std::memcmp(a, b, n) == 0;
        for (std::size_t i = 0; i + 8 < n; i += 8) {
            if (load8(a + i) != load8(b + i)) return false;
        }
        return load8(a + n - 8) == load8(b + n - 8);
    }
    if (n >= 4) return load4(a) == load4(b) && load4(a + n - 4) == load4(b + n - 4);
    for (std::size_t i = 0; i < n; ++i) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

#ifndef Py_GIL_DISABLED

class shared_value_cache {
public:
    // Slots per table (a power of two).
    static constexpr unsigned slot_bits = 12;
    static constexpr std::size_t slot_count = std::size_t(1) << slot_bits;
    // Longer strs are converted afresh on every read (see the top of this file).
    static constexpr std::size_t max_cached_str_bytes = 64;

    shared_value_cache() = default;
    shared_value_cache(const shared_value_cache&) = delete;
    shared_value_cache& operator=(const shared_value_cache&) = delete;
    ~shared_value_cache() { clear(); }

    // Maps with more entries than this are read without the cache: reads spread over them hit
    // it too rarely to pay for looking in it (a miss reads a slot that is rarely in the CPU's
    // cache, on top of the conversion it does anyway).
    static constexpr std::size_t max_cached_map_size = 2 * slot_count;

    // A new reference to a Python object for v, read from a map of map_size entries: the cached
    // one when there is one, otherwise convert(v) (a new reference or nullptr with an error
    // set), remembered when cacheable.
    template <class Convert>
    PyObject* get(const neutral_value& v, std::size_t map_size, Convert&& convert) {
        if (map_size > max_cached_map_size) return convert(v);
        if (v.is_small_int()) {
            const std::int64_t i = v.as_int64();
            if (i >= python_small_int_min && i <= python_small_int_max) return convert(v);
            const auto key = static_cast<std::uint64_t>(i);
            const std::size_t at = index_of(key);
            if (!ensure_table(ints_)) return convert(v);
            const slot& s = ints_.slots[at];
            if (s.object && s.key == key) return Py_NewRef(s.object);
            return admit(ints_, at, key, convert(v));
        }
        if (v.is_short_str()) {
            const std::uint64_t w0 = v.word(0), w1 = v.word(1);
            if (!ensure_shorts()) return convert(v);
            short_slot& s = shorts_[short_index_of(w0, w1)];
            if (s.object && s.words[0] == w0 && s.words[1] == w1) return Py_NewRef(s.object);
            return admit_short(s, w0, w1, convert(v));
        }
        if (v.is_str() && v.str_is_ascii()) {
            const std::string_view bytes = v.str_view();
            if (bytes.size() > max_cached_str_bytes) return convert(v);
            const std::uint64_t key = reinterpret_cast<std::uint64_t>(bytes.data()) >> 4;  // the block's address
            const std::size_t at = index_of(key);
            if (!ensure_table(strs_)) return convert(v);
            const slot& s = strs_.slots[at];
            if (s.object && s.key == key && holds_ascii(s.object, bytes)) return Py_NewRef(s.object);
            return admit(strs_, at, key, convert(v));
        }
        return convert(v);
    }

    // Releases every cached object and the tables (a later get allocates them again).
    void clear() noexcept {
        for (table* t : {&ints_, &strs_}) {
            if (!t->slots) continue;
            for (std::size_t i = 0; i < slot_count; ++i) {
                PyObject* old = t->slots[i].object;
                t->slots[i].object = nullptr;
                Py_XDECREF(old);
            }
            std::free(t->slots);
            t->slots = nullptr;
            t->candidates = nullptr;
        }
        if (shorts_) {
            for (std::size_t i = 0; i < slot_count; ++i) {
                PyObject* old = shorts_[i].object;
                shorts_[i].object = nullptr;
                Py_XDECREF(old);
            }
            std::free(shorts_);
            shorts_ = nullptr;
        }
    }

private:
    struct slot {
        std::uint64_t key;
        PyObject* object;  // strong; nullptr when empty
    };
    // Direct-mapped: a key lives only in slots[index_of(key)]. candidates[i] is the key that
    // last missed on slots[i] (see admit), kept apart so that hits read 16-byte slots only.
    struct table {
        slot* slots = nullptr;
        std::uint64_t* candidates = nullptr;
    };

    // A short str's slot: its two words are the str's whole content (neutral_value.hpp), so
    // a hit is proven by comparing them, without reading the cached object's characters.
    // candidate: short_fingerprint of the words that last missed here (see admit_short).
    struct short_slot {
        std::uint64_t words[2];
        PyObject* object;  // strong; nullptr when empty
        std::uint64_t candidate;
    };

    // CPython returns its own immortal objects for these (PyLong_FromLongLong's small ints).
    static constexpr std::int64_t python_small_int_min = -5;
    static constexpr std::int64_t python_small_int_max = 256;

    // The slot of a key. Folding the higher bits onto the low ones keeps runs of consecutive
    // ints, and blocks allocated one after another, in distinct slots, and spreads strided keys.
    static std::size_t index_of(std::uint64_t key) noexcept {
        const std::uint64_t folded = key ^ (key >> slot_bits) ^ (key >> (2 * slot_bits));
        return static_cast<std::size_t>(folded & (slot_count - 1));
    }

    // A short str's words folded into one (any fold does: it only picks a slot and names a
    // candidate; hits are proven by the words themselves). The slot is the product's top bits,
    // which every bit of the fold reaches.
    static std::uint64_t short_fingerprint(std::uint64_t w0, std::uint64_t w1) noexcept {
        return w0 ^ neutral_detail::rotl(w1, 29);
    }
    static std::size_t short_index_of(std::uint64_t w0, std::uint64_t w1) noexcept {
        return static_cast<std::size_t>((short_fingerprint(w0, w1) * 0x9E3779B97F4A7C15ull) >> (64 - slot_bits));
    }

    bool ensure_shorts() noexcept {
        if (!shorts_) shorts_ = static_cast<short_slot*>(std::calloc(slot_count, sizeof(short_slot)));
        return shorts_ != nullptr;
    }

    // admit for short strs: the same policy, the candidate kept in the slot.
    static PyObject* admit_short(short_slot& s, std::uint64_t w0, std::uint64_t w1, PyObject* fresh) noexcept {
        if (!fresh) return nullptr;
        const std::uint64_t fingerprint = short_fingerprint(w0, w1);
        if (s.object && s.candidate != fingerprint) {
            s.candidate = fingerprint;
            return fresh;
        }
        PyObject* old = s.object;
        s.words[0] = w0;
        s.words[1] = w1;
        s.object = Py_NewRef(fresh);
        Py_XDECREF(old);
        return fresh;
    }

    // Allocates t on first use (slots and candidates in one block); false if that fails.
    static bool ensure_table(table& t) noexcept {
        if (t.slots) return true;
        void* block = std::calloc(slot_count, sizeof(slot) + sizeof(std::uint64_t));
        if (!block) return false;
        t.slots = static_cast<slot*>(block);
        t.candidates = reinterpret_cast<std::uint64_t*>(t.slots + slot_count);
        return true;
    }

    // Whether str (a cached compact ASCII str) has exactly these characters.
    static bool holds_ascii(PyObject* str, std::string_view bytes) noexcept {
        return static_cast<std::size_t>(PyUnicode_GET_LENGTH(str)) == bytes.size() &&
               same_bytes(static_cast<const char*>(PyUnicode_DATA(str)), bytes.data(), bytes.size());
    }

    // After a miss on s: returns fresh (a new reference, or nullptr) and caches it if its key
    // missed on this slot twice in a row. A key seen once is only noted as the candidate: in a
    // map much larger than the table nearly every read misses, and evicting on each of them
    // would make every miss pay for churning the cache (the evicted object's dealloc lands on
    // cold memory) with no hits to show for it. The slot is rewritten before the evicted object
    // is released.
    static PyObject* admit(table& t, std::size_t at, std::uint64_t key, PyObject* fresh) noexcept {
        if (!fresh) return nullptr;
        slot& s = t.slots[at];
        if (s.object && t.candidates[at] != key) {
            t.candidates[at] = key;
            return fresh;
        }
        PyObject* old = s.object;
        s.key = key;
        s.object = Py_NewRef(fresh);
        Py_XDECREF(old);
        return fresh;
    }

    table ints_;
    table strs_;
    short_slot* shorts_ = nullptr;
};

// The objects that one SharedMap object (one interpreter's handle on one version) returned,
// keyed by the address of the value inside the trie. The handle holds its version, so every
// node of it stays alive and unchanged while the table exists: an address names one value for
// the table's whole life, and a hit needs no proof (no hashing, no comparing characters), which
// shared_value_cache's content-keyed tables cannot skip. Values of every kind are cached (they
// are all immutable). A miss goes on to the interpreter's shared_value_cache.
//
// Only for maps of at most max_map_size entries, and allocated only once the handle has served
// as many reads as half its map's entries, so that a map read a few times never pays for the
// table. Direct-mapped by the value's address, 16 bytes a slot: 4 slots per entry for maps of up
// to roomy_map_size entries, one per entry above (a 16K-entry map: a 256 KiB table). A read that
// hits hands out an object the handle keeps instead of building a new one and freeing it again.
// Above roomy_map_size the kept objects are spread over more memory than the CPU's nearest
// caches hold, and a fresh int or float (built in the block the allocator freed last, which is
// in cache) costs less than fetching a kept one: those are converted afresh there, and only
// values that cost more to build (strs, bytes, tuples, big ints) are kept. Beyond max_map_size
// the same holds for every kind.
//
// Thread safety: as shared_value_cache (the interpreter's GIL; compiled out on free-threaded
// builds). A conversion on a miss may run Python code (allocating a tuple may start the cycle
// collector, which runs finalizers), and that code may read this handle again: the slot is
// written after the conversion returns, the object it held released after that, and the table
// is freed only by the handle's deallocation, which cannot run while a read holds the handle.
// The cached objects refer to nothing that refers to the handle (conversions build new
// objects), so they form no cycle through it.
class handle_value_cache {
public:
    static constexpr std::size_t max_map_size = 16384;
    static constexpr std::size_t roomy_map_size = 2048;

    handle_value_cache() = default;
    handle_value_cache(const handle_value_cache&) = delete;
    handle_value_cache& operator=(const handle_value_cache&) = delete;
    ~handle_value_cache() { clear(); }

    // A new reference to an object for v, the value stored in the handle's trie (v is that
    // value itself, not a copy): the cached one, or convert(v) (a new reference, or nullptr
    // with an error set), remembered.
    template <class Convert>
    PyObject* get(const neutral_value& v, std::size_t map_size, Convert&& convert) {
        if (map_size > roomy_map_size && (v.is_small_int() || v.is_float() || v.is_none() || v.is_bool())) {
            return convert(v);
        }
        if (!slots_ && !ensure_table(map_size)) return convert(v);
        const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(&v) / entry_bytes;
        slot& s = slots_[(at ^ (at >> slot_bits_)) & (slot_count() - 1)];
        if (s.value == &v) return Py_NewRef(s.object);
        PyObject* fresh = convert(v);
        if (!fresh) return nullptr;
        PyObject* old = s.object;
        s.value = &v;
        s.object = Py_NewRef(fresh);
        Py_XDECREF(old);
        return fresh;
    }

    // Releases every cached object and the table.
    void clear() noexcept {
        if (!slots_) return;
        slot* slots = slots_;
        const std::size_t n = slot_count();
        slots_ = nullptr;
        for (std::size_t i = 0; i < n; ++i) Py_XDECREF(slots[i].object);
        std::free(slots);
    }

private:
    // Entries (key, value) are adjacent in a node: consecutive entries get consecutive slots.
    static constexpr std::size_t entry_bytes = 2 * sizeof(neutral_value);
    struct slot {
        const neutral_value* value;  // nullptr when empty
        PyObject* object;            // strong
    };

    std::size_t slot_count() const noexcept { return std::size_t(1) << slot_bits_; }

    bool ensure_table(std::size_t map_size) noexcept {
        if (map_size > max_map_size || ++reads_ < map_size / 2) return false;
        unsigned bits = 4;
        const std::size_t slots_per_entry = map_size <= roomy_map_size ? 4 : 1;
        while ((std::size_t(1) << bits) < slots_per_entry * map_size) ++bits;
        slots_ = static_cast<slot*>(std::calloc(std::size_t(1) << bits, sizeof(slot)));
        if (!slots_) return false;
        slot_bits_ = bits;
        return true;
    }

    slot* slots_ = nullptr;
    unsigned slot_bits_ = 0;
    std::size_t reads_ = 0;  // reads before the table exists
};

#else  // Py_GIL_DISABLED: no cache (see the top of this file)

class handle_value_cache {
public:
    template <class Convert>
    PyObject* get(const neutral_value& v, std::size_t, Convert&& convert) {
        return convert(v);
    }
    void clear() noexcept {}
};


class shared_value_cache {
public:
    template <class Convert>
    PyObject* get(const neutral_value& v, std::size_t, Convert&& convert) {
        return convert(v);
    }
    void clear() noexcept {}
};

#endif

}  // namespace pypersistent::python
