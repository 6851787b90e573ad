// neutral_value: an immutable, thread-safe value that holds no PyObject*, so that one trie of
// them can be read by every (sub)interpreter of a process; and shared_map, the persistent map of
// neutral values built on it (see shared_map.hpp for conveniences and the named-cell registry).
//
// Kinds: None, bool, int of any size, float, str, bytes, tuple of neutral values, and a nested
// shared_map. Copying retains (one atomic increment), destruction releases; values never change.
//
// ---- Layout ---------------------------------------------------------------------------------
//
// 16 bytes: a one-byte kind tag, 7 bytes used only by short strs (zero otherwise) and an 8-byte
// payload.
//
//   none                  payload unused (zero)
//   short str             an ASCII str of up to short_str_capacity (13) bytes, inside the value:
//                         byte 1 its size, bytes 2..14 its characters, then zeros (so the bytes
//                         are NUL-terminated like a block's). No block: reading such a key or
//                         value touches no other memory. Canonical: every str that fits is
//                         stored so, so two short strs are equal exactly when their 16 bytes
//                         are, and a short str never equals a str in a block. type() and
//                         is_str() say str for both forms; the accessors hide the difference.
//   boolean               payload.b
//   small_int             payload.i, every int in [-2^63, 2^63)
//   floating              payload.d (an IEEE double)
//   big_int               payload.p -> { header, bool negative, uint32 limb count, uint64 limbs[] }
//                         the magnitude as 64-bit limbs, least significant first, no zero limb at
//                         the top. Canonical: a big_int is always outside the int64 range, so a
//                         small_int and a big_int are never equal. On a little-endian machine the
//                         limb array *is* the little-endian byte string of |x| (what
//                         _PyLong_FromByteArray / PyLong_FromUnsignedNativeBytes read), and
//                         from_le_bytes / to_le_bytes convert to and from two's complement.
//   str                   (longer than 13 bytes, or not ASCII) payload.p -> { header, byte size, length in code points, max code
//                         point (exact when validated; else the caller's bound, e.g. CPython's
//                         PyUnicode_MAX_CHAR_VALUE: 127, 255, 65535 or 0x10FFFF, which is all
//                         PyUnicode_New needs), cached hash, UTF-8 bytes, NUL }. Equality and
//                         hashing look at the bytes only. The UTF-8 may encode lone
//                         surrogates (U+D800..U+DFFF, as Python's "surrogatepass" writes them),
//                         because Python strings may hold them.
//   bytes                 payload.p -> { header, size, cached hash, bytes, NUL }
//   tuple                 payload.p -> { header, count, lazily cached hash, neutral_value[] }
//   map                   payload.p -> { header, lazily cached hash, shared_map }
//
// Every heap block starts with an atomic reference count (policy.hpp's atomic_refcount) and its
// kind; releasing the last reference frees it (a tuple or map releases what it holds first).
//
// ---- Equality and hashing: Python's rules ------------------------------------------------------
//
// Keys that are equal in Python must be the same key, so operator== (used as the map's key and
// value equality) follows Python's ==, and hash() follows Python's numeric hash:
//
//   * bool, int and float compare by numeric value: 1 == 1.0 == True, 0 == 0.0 == -0.0 == False.
//     Ints and floats compare *exactly* (2**53 + 1 != float(2**53 + 1)); inf equals no int.
//   * hash() of a bool, int or float is exactly Python's hash() (sys.hash_info: modulus
//     2^61 - 1, inf -> 314159, -inf -> -314159, a result of -1 becomes -2), as a uint64 holding
//     the Py_hash_t bit pattern. So numerically equal keys hash alike, and a binding may use
//     hash(int) / hash(float) of a Python object as the neutral hash of its conversion.
//   * NaN: every NaN equals every NaN (and nothing else), and hashes to 0 (sys.hash_info.nan,
//     Python's NaN hash before 3.10). Python itself finds a NaN key in a dict only by identity
//     (`x is y or x == y`); a neutral value has no identity, and the trie needs an equality that
//     is reflexive (a key must find itself, a map must equal itself, assigning must replace).
//     So "NaN is NaN" is extended to all NaNs: m.set(nan, 1).set(float('nan'), 2) has one key.
//     This differs from dict only for *distinct* NaN objects, which dict keeps apart.
//   * str equals str with the same content; bytes equals bytes with the same content; a str
//     never equals bytes. Their hashes are a 64-bit hash of the content (not Python's seeded
//     SipHash), fixed across processes and shared objects, computed once and cached.
//   * tuples compare elementwise with these rules ((1,) == (1.0,) == (True,)), and hash from
//     their elements' hashes, so equal tuples hash alike.
//   * maps compare by content (same keys, equal values) and hash order-independently from their
//     entries; the hash is computed on first use and cached.
//   * Different kinds are otherwise never equal (None equals only None).
//
// identical(a, b) is the cheap "same value" test the map uses to decide that an assignment
// changes nothing: same kind and same bits (same block for heap kinds). 1 and 1.0 are equal but
// not identical, so assigning 1.0 over 1 replaces the value, as in dict.
//
// Thread safety: all operations are safe from any number of threads; the only writes after
// construction are atomic reference counts and idempotent atomic hash caches.
//
// Nesting: values nest without limit (a map may hold a map holding a map...), and dropping the
// last reference never recurses: a tuple or map whose last reference dies while another one is
// being destroyed on the same thread is queued (linked through its dead hash field) and freed by
// the outermost destroy's loop, so a 300,000-deep chain frees in constant stack. Equality,
// hashing and repr of tuples and maps do recurse, one level per nesting level; past
// max_nesting_depth levels they throw neutral_nesting_error (a binding reports RecursionError,
// as Python does for deeply nested dicts) instead of overflowing the stack.
//
// Lookups without allocation: neutral_probe (below) builds a str or bytes key inside itself, for
// find / contains / erase on a hot path (a binding's str-key lookups).
//
// Tests: defining PYPERSISTENT_NEUTRAL_COUNT_BLOCKS before including this header (in every
// translation unit of the program) counts live heap blocks in neutral_detail::live_blocks.
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "persistent_map.hpp"
#include "policy.hpp"

namespace pypersistent {

// Thrown by equality, hashing and repr when tuples and maps nest deeper than
// neutral_detail::max_nesting_depth (see "Nesting" above).
class neutral_nesting_error : public std::runtime_error {
public:
    neutral_nesting_error() : std::runtime_error("neutral_value: tuples and maps nested too deeply to compare, hash or print") {}
};

class neutral_value;
struct neutral_hash;
struct neutral_equal;

// The shared map's policy: atomic node counts (default_policy's), neutral values retained by
// their own copies (the hooks stay no-ops), and "same value" / "same key" by identical(). (The
// members are templates only so that this can precede neutral_value's definition.)
struct shared_policy : default_policy {
    template <class T>
    static bool same_value(const T& a, const T& b) noexcept {
        return a.identical(b);
    }
    template <class T>
    static bool identical_key(const T& a, const T& b) noexcept {
        return a.is_heap() && a.identical(b);
    }
};

// The interpreter-neutral persistent map: keys and values are neutral values, node counts are
// atomic, and values are retained by neutral_value's own copy semantics.
using shared_map = persistent_map<neutral_value, neutral_value, neutral_hash, neutral_equal, neutral_equal, shared_policy>;
using shared_transient = transient_map<neutral_value, neutral_value, neutral_hash, neutral_equal, neutral_equal, shared_policy>;

namespace neutral_detail {

// ---- Python's numeric hash ---------------------------------------------------------------------

constexpr unsigned py_hash_bits = 61;
constexpr std::uint64_t py_hash_modulus = (std::uint64_t(1) << py_hash_bits) - 1;
constexpr std::uint64_t py_hash_inf = 314159;
constexpr std::uint64_t py_hash_nan = 0;

// x mod (2^61 - 1) for any 64-bit x.
constexpr std::uint64_t mod_p(std::uint64_t x) noexcept {
    x = (x & py_hash_modulus) + (x >> py_hash_bits);
    return x >= py_hash_modulus ? x - py_hash_modulus : x;
}

// Applies the sign and Python's "-1 is reserved" rule to |x| mod P.
constexpr std::uint64_t py_signed_hash(std::uint64_t magnitude_mod_p, bool negative) noexcept {
    std::uint64_t h = negative ? std::uint64_t(0) - magnitude_mod_p : magnitude_mod_p;
    if (h == ~std::uint64_t(0)) h = ~std::uint64_t(0) - 1;  // -1 -> -2
    return h;
}

constexpr std::uint64_t magnitude_of(std::int64_t i) noexcept {
    return i < 0 ? std::uint64_t(0) - static_cast<std::uint64_t>(i) : static_cast<std::uint64_t>(i);
}

constexpr std::uint64_t hash_int64(std::int64_t i) noexcept { return py_signed_hash(mod_p(magnitude_of(i)), i < 0); }

// |x| mod P of a magnitude given as 64-bit limbs, least significant first (2^64 = 8 mod P).
inline std::uint64_t limbs_mod_p(const std::uint64_t* limbs, std::size_t n) noexcept {
    std::uint64_t h = 0;
    for (std::size_t i = n; i-- > 0;) {
        h = mod_p(h << 3);  // h < 2^61, so h * 8 fits
        h = mod_p(h + mod_p(limbs[i]));
    }
    return h;
}

// CPython's _Py_HashDouble (Python/pyhash.c), NaN hashing to 0.
inline std::uint64_t hash_double(double v) noexcept {
    if (std::isnan(v)) return py_hash_nan;
    if (std::isinf(v)) return v > 0 ? py_hash_inf : std::uint64_t(0) - py_hash_inf;
    int e = 0;
    double m = std::frexp(v, &e);
    bool negative = false;
    if (m < 0) {
        negative = true;
        m = -m;
    }
    std::uint64_t x = 0;
    while (m != 0.0) {
        x = ((x << 28) & py_hash_modulus) | x >> (py_hash_bits - 28);
        m *= 268435456.0;  // 2^28
        e -= 28;
        const auto y = static_cast<std::uint64_t>(m);
        m -= static_cast<double>(y);
        x += y;
        if (x >= py_hash_modulus) x -= py_hash_modulus;
    }
    const int bits = static_cast<int>(py_hash_bits);
    e = e >= 0 ? e % bits : bits - 1 - ((-1 - e) % bits);
    if (e != 0) x = ((x << e) & py_hash_modulus) | x >> (bits - e);
    return py_signed_hash(x, negative);
}

// ---- content hashing (str, bytes, tuples, maps) ----------------------------------------------

inline std::uint64_t mix64(std::uint64_t x) noexcept {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

inline std::uint64_t rotl(std::uint64_t x, unsigned r) noexcept { return (x << r) | (x >> (64 - r)); }

PYPERSISTENT_ALWAYS_INLINE std::uint64_t le_u32(const unsigned char* p) noexcept {
    return std::uint64_t(p[0]) | std::uint64_t(p[1]) << 8 | std::uint64_t(p[2]) << 16 | std::uint64_t(p[3]) << 24;
}

// The n < 8 bytes at p as a little-endian number (byte i at bits 8i..8i+7), zero-extended. Two
// overlapping 4-byte loads (or three single bytes) instead of a loop of n: the str keys of a
// lookup are short, and this tail is a large part of hashing them. Overlapping bytes land on
// the same bits, so the result is the plain loop's.
PYPERSISTENT_ALWAYS_INLINE std::uint64_t le_tail(const unsigned char* p, std::size_t n) noexcept {
    if (n >= 4) return le_u32(p) | le_u32(p + n - 4) << (8 * (n - 4));
    if (n == 0) return 0;
    return std::uint64_t(p[0]) | std::uint64_t(p[n / 2]) << (8 * (n / 2)) | std::uint64_t(p[n - 1]) << (8 * (n - 1));
}

// The 128-bit product of a and b as its two halves.
struct wide_product {
    std::uint64_t low, high;
};
PYPERSISTENT_ALWAYS_INLINE wide_product multiply_wide(std::uint64_t a, std::uint64_t b) noexcept {
#if defined(__SIZEOF_INT128__)
    // __extension__: the type is a GCC/Clang extension, which -Wpedantic would reject.
    __extension__ typedef unsigned __int128 uint128;
    const uint128 product = static_cast<uint128>(a) * b;
    return {static_cast<std::uint64_t>(product), static_cast<std::uint64_t>(product >> 64)};
#else
    const std::uint64_t a_lo = a & 0xFFFFFFFFull, a_hi = a >> 32, b_lo = b & 0xFFFFFFFFull, b_hi = b >> 32;
    const std::uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
    const std::uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFull) + lo_hi;
    const std::uint64_t high = hi_hi + (hi_lo >> 32) + (cross >> 32);
    const std::uint64_t low = (cross << 32) | (lo_lo & 0xFFFFFFFFull);
    return {low, high};
#endif
}

// The 128-bit product of a and b, its halves folded together by XOR (wyhash's "mum"): one
// multiply that carries every input bit into every output bit through the high half.
PYPERSISTENT_ALWAYS_INLINE std::uint64_t folded_multiply(std::uint64_t a, std::uint64_t b) noexcept {
    const wide_product p = multiply_wide(a, b);
    return p.low ^ p.high;
}

// The 8 bytes at p as a little-endian number (one unaligned load where the compiler can).
PYPERSISTENT_ALWAYS_INLINE std::uint64_t le_u64(const unsigned char* p) noexcept {
    return le_u32(p) | le_u32(p + 4) << 32;
}

// A fixed-seed 64-bit hash of a byte string, after wyhash: 16 bytes per step through one
// folded multiply, then the last 1 to 16 bytes as two words (overlapping ones when fewer than
// 16 are left; the length, mixed in at the end, tells such strings apart) and a final multiply.
// A str key of 14 to 32 bytes costs two or three multiplies, where a multiply-rotate step per
// 8 bytes and a separate finisher made a chain twice as long on every lookup of such a key.
// Fixed rather than per-process random: every shared object that includes this header must
// hash alike, or a map built in one could not be searched from another. Forced inline: it is on
// a lookup's path.
PYPERSISTENT_ALWAYS_INLINE std::uint64_t hash_bytes(const unsigned char* p, std::size_t n, std::uint64_t seed) noexcept {
    constexpr std::uint64_t k1 = 0xA0761D6478BD642Full, k2 = 0xE7037ED1A0B428DBull, k3 = 0x8EBC6AF09C88C6E3ull;
    std::uint64_t h = seed;
    std::uint64_t a, b;
    if (n <= 16) {
        if (n >= 8) {
            a = le_u64(p);
            b = le_u64(p + n - 8);
        } else {
            a = le_tail(p, n);
            b = 0;
        }
    } else {
        std::size_t left = n;
        while (left > 16) {
            h = folded_multiply(le_u64(p) ^ k1, le_u64(p + 8) ^ h);
            p += 16;
            left -= 16;
        }
        a = le_u64(p + left - 16);
        b = le_u64(p + left - 8);
    }
    const wide_product m = multiply_wide(a ^ k1, b ^ h);
    return folded_multiply(m.low ^ k2 ^ static_cast<std::uint64_t>(n), m.high ^ k3);
}

// The hash of a short str (neutral_value::kind::short_str) from its two words, which hold its
// whole content: one folded multiply of the two, instead of hashing its bytes, on the path of
// every lookup of a short str key (a second multiply lengthened every lookup and spread the
// trie's fragments no better: benchmarks/results/shared.md). The seeds set the top bit of a character byte in each word (the
// characters are ASCII, so it is clear there): neither factor can be zero, whatever the str.
PYPERSISTENT_ALWAYS_INLINE std::uint64_t short_str_hash(std::uint64_t word0, std::uint64_t word1) noexcept {
    return folded_multiply(word0 ^ 0xA0761D6478BD642Full, word1 ^ 0xE7037ED1A0B428DBull);
}

constexpr std::uint64_t str_seed = 0x7374725F6E657574ull;    // "str_neut"
constexpr std::uint64_t bytes_seed = 0x62797465735F6E65ull;  // "bytes_ne"
constexpr std::uint64_t tuple_seed = 0x7475706C655F6E65ull;
constexpr std::uint64_t map_seed = 0x6D61705F6E657574ull;

// Lazily computed hashes use 0 for "not yet"; a computed 0 is stored as this instead.
constexpr std::uint64_t hash_zero_substitute = 0x5A17C0DE5A17C0DEull;

// ---- UTF-8 ----------------------------------------------------------------------------------

struct utf8_info {
    std::size_t length = 0;       // code points
    std::uint32_t max_char = 0;   // the largest code point (0 for "")
};

// Validates UTF-8 (lone surrogates allowed, as "surrogatepass" writes them; overlong forms and
// code points above U+10FFFF rejected) and measures it. Throws std::invalid_argument.
inline utf8_info scan_utf8(const unsigned char* s, std::size_t n) {
    utf8_info info;
    std::size_t i = 0;
    while (i < n) {
        const unsigned c = s[i];
        std::uint32_t cp;
        std::size_t len;
        if (c < 0x80) {
            cp = c;
            len = 1;
        } else if (c >= 0xC2 && c <= 0xDF) {
            cp = c & 0x1F;
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            cp = c & 0x0F;
            len = 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            cp = c & 0x07;
            len = 4;
        } else {
            throw std::invalid_argument("neutral_value: invalid UTF-8 lead byte");
        }
        if (n - i < len) throw std::invalid_argument("neutral_value: truncated UTF-8 sequence");
        for (std::size_t j = 1; j < len; ++j) {
            const unsigned cc = s[i + j];
            if ((cc & 0xC0) != 0x80) throw std::invalid_argument("neutral_value: invalid UTF-8 continuation byte");
            cp = (cp << 6) | (cc & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
            throw std::invalid_argument("neutral_value: overlong or out-of-range UTF-8 sequence");
        }
        if (cp > info.max_char) info.max_char = cp;
        ++info.length;
        i += len;
    }
    return info;
}

// ---- heap blocks ----------------------------------------------------------------------------

enum class heap_kind : std::uint8_t { big_int, str, bytes, tuple, map };

#if defined(PYPERSISTENT_NEUTRAL_COUNT_BLOCKS)
// Test builds: the number of live heap blocks, to check that references balance.
inline std::atomic<std::int64_t> live_blocks{0};
#endif

// Equality, hashing and repr recurse once per nesting level through a few frames each (the
// value, the map's comparison, the trie walk). The limit keeps the deepest recursion under half
// a MiB of stack in an optimised build (tests/cpp/test_neutral_value.cpp reaches it), inside
// the stack of any thread a host or Python starts, and matches Python's own default recursion
// limit, which bounds how deeply a program can nest tuples when converting them.
constexpr int max_nesting_depth = 1000;
inline thread_local int nesting_depth = 0;

// One nesting level of a recursive operation; throws past max_nesting_depth.
struct nesting_level {
    nesting_level() {
        if (++nesting_depth > max_nesting_depth) {
            --nesting_depth;
            throw neutral_nesting_error();
        }
    }
    ~nesting_level() { --nesting_depth; }
    nesting_level(const nesting_level&) = delete;
    nesting_level& operator=(const nesting_level&) = delete;
};

struct heap_header {
    atomic_refcount refs{1};
    heap_kind kind;
    explicit heap_header(heap_kind k) noexcept : kind(k) {}
};

inline void* allocate_block(std::size_t bytes) {
    void* p = ::operator new(bytes);
#if defined(PYPERSISTENT_NEUTRAL_COUNT_BLOCKS)
    live_blocks.fetch_add(1, std::memory_order_relaxed);
#endif
    return p;
}
inline void free_block(void* p) noexcept {
#if defined(PYPERSISTENT_NEUTRAL_COUNT_BLOCKS)
    live_blocks.fetch_sub(1, std::memory_order_relaxed);
#endif
    ::operator delete(p);
}

struct big_int_block : heap_header {
    bool negative;
    std::uint32_t count;  // limbs, the top one non-zero
    std::uint64_t hash;
    std::uint64_t* limbs() noexcept { return reinterpret_cast<std::uint64_t*>(this + 1); }
    const std::uint64_t* limbs() const noexcept { return reinterpret_cast<const std::uint64_t*>(this + 1); }
    big_int_block(bool neg, std::uint32_t n) noexcept : heap_header(heap_kind::big_int), negative(neg), count(n), hash(0) {}
};
static_assert(sizeof(big_int_block) % alignof(std::uint64_t) == 0, "limbs follow the header");

// str and bytes share a block: for bytes, length == size and max_char is unused.
struct text_block : heap_header {
    std::size_t size;    // bytes
    std::size_t length;  // code points (str) or bytes
    std::uint32_t max_char;
    std::uint64_t hash;
    char* data() noexcept { return reinterpret_cast<char*>(this + 1); }
    const char* data() const noexcept { return reinterpret_cast<const char*>(this + 1); }
    text_block(heap_kind k, std::size_t sz, std::size_t len, std::uint32_t mc) noexcept
        : heap_header(k), size(sz), length(len), max_char(mc), hash(0) {}
};

struct tuple_block;
struct map_block;

}  // namespace neutral_detail

// ---- neutral_value --------------------------------------------------------------------------------

class neutral_value {
public:
    // short_str is a storage form of str (see the layout above), never returned by type().
    // Numeric kinds are contiguous and ordered (numeric_equal); heap kinds come last (is_heap).
    enum class kind : std::uint8_t { none, short_str, boolean, small_int, floating, big_int, str, bytes, tuple, map };

    // The longest str (in UTF-8 bytes, all ASCII) stored inside the value.
    static constexpr std::size_t short_str_capacity = 13;

    // None.
    neutral_value() noexcept : kind_(kind::none) { u_.i = 0; }
    neutral_value(std::nullptr_t) noexcept : neutral_value() {}

    // bool (only a real bool: pointers do not convert to a neutral bool).
    template <class B, std::enable_if_t<std::is_same<B, bool>::value, int> = 0>
    neutral_value(B b) noexcept : kind_(kind::boolean) {
        u_.i = 0;
        u_.b = b;
    }

    // Any integer type; unsigned values above INT64_MAX become big ints.
    template <class I, std::enable_if_t<std::is_integral<I>::value && !std::is_same<I, bool>::value, int> = 0>
    neutral_value(I i) : kind_(kind::none) {
        u_.i = 0;
        if constexpr (std::is_unsigned<I>::value && sizeof(I) >= sizeof(std::int64_t)) {
            if (static_cast<std::uint64_t>(i) > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
                const std::uint64_t limb = static_cast<std::uint64_t>(i);
                *this = from_limbs(false, &limb, 1);
                return;
            }
        }
        kind_ = kind::small_int;
        u_.i = static_cast<std::int64_t>(i);
    }

    template <class F, std::enable_if_t<std::is_floating_point<F>::value, int> = 0>
    neutral_value(F f) noexcept : kind_(kind::floating) {
        u_.d = static_cast<double>(f);
    }

    // str, from UTF-8 (validated; throws std::invalid_argument).
    neutral_value(const char* utf8) : neutral_value(std::string_view(utf8)) {}
    neutral_value(const std::string& utf8) : neutral_value(std::string_view(utf8)) {}
    neutral_value(std::string_view utf8) : kind_(kind::none) {
        u_.i = 0;
        const auto info = neutral_detail::scan_utf8(reinterpret_cast<const unsigned char*>(utf8.data()), utf8.size());
        *this = make_text(kind::str, utf8.data(), utf8.size(), info.length, info.max_char);
    }

    // A nested map.
    neutral_value(shared_map m);

    // ---- named constructors ----

    static neutral_value none() noexcept { return neutral_value(); }

    // str from UTF-8 the caller vouches for (a binding that has the length and maximum code
    // point, or a bound of it, from PyUnicode_GET_LENGTH / PyUnicode_MAX_CHAR_VALUE): no
    // validation pass. Equal content gives an equal value whatever max_char says.
    static neutral_value str_unchecked(std::string_view utf8, std::size_t length, std::uint32_t max_char) {
        return make_text(kind::str, utf8.data(), utf8.size(), length, max_char);
    }

    static neutral_value bytes(const void* data, std::size_t size) {
        return make_text(kind::bytes, static_cast<const char*>(data), size, size, 0);
    }
    static neutral_value bytes(std::string_view data) { return bytes(data.data(), data.size()); }

    // An int from sign and magnitude (64-bit limbs, least significant first; zero limbs at the
    // top are ignored). Values in the int64 range become small ints.
    static neutral_value from_limbs(bool negative, const std::uint64_t* limbs, std::size_t count);

    // An int from n little-endian bytes, two's complement when is_signed (the layout of
    // _PyLong_AsByteArray(v, buf, n, little_endian=1, is_signed=1) and PyLong_AsNativeBytes with
    // Py_ASNATIVEBYTES_LITTLE_ENDIAN), unsigned otherwise.
    static neutral_value from_le_bytes(const unsigned char* bytes, std::size_t n, bool is_signed);

    // An int from decimal text: optional sign, digits, optional '_' between digits. Throws
    // std::invalid_argument.
    static neutral_value from_decimal(std::string_view text);

    static neutral_value tuple(std::initializer_list<neutral_value> items) { return tuple(items.begin(), items.size()); }
    static neutral_value tuple(const std::vector<neutral_value>& items) { return tuple(items.data(), items.size()); }
    static neutral_value tuple(const neutral_value* items, std::size_t count);

    // ---- copy / move ----

    neutral_value(const neutral_value& other) noexcept : kind_(other.kind_), u_(other.u_) {
        std::memcpy(short_, other.short_, sizeof short_);
        if (is_heap()) u_.p->refs.retain();
    }
    neutral_value(neutral_value&& other) noexcept : kind_(other.kind_), u_(other.u_) {
        std::memcpy(short_, other.short_, sizeof short_);
        other.kind_ = kind::none;
        std::memset(other.short_, 0, sizeof other.short_);
        other.u_.i = 0;
    }
    neutral_value& operator=(const neutral_value& other) noexcept {
        neutral_value(other).swap(*this);
        return *this;
    }
    neutral_value& operator=(neutral_value&& other) noexcept {
        neutral_value(std::move(other)).swap(*this);
        return *this;
    }
    ~neutral_value() {
        if (is_heap() && u_.p->refs.release()) destroy(u_.p);
    }
    void swap(neutral_value& other) noexcept {
        std::swap(kind_, other.kind_);
        std::swap(short_, other.short_);
        std::swap(u_, other.u_);
    }

    // ---- inspection ----

    kind type() const noexcept { return kind_ == kind::short_str ? kind::str : kind_; }
    bool is_none() const noexcept { return kind_ == kind::none; }
    bool is_bool() const noexcept { return kind_ == kind::boolean; }
    bool is_int() const noexcept { return kind_ == kind::small_int || kind_ == kind::big_int; }
    bool is_small_int() const noexcept { return kind_ == kind::small_int; }
    bool is_big_int() const noexcept { return kind_ == kind::big_int; }
    bool is_float() const noexcept { return kind_ == kind::floating; }
    bool is_str() const noexcept { return kind_ == kind::str || kind_ == kind::short_str; }
    // Which form a str has (see the layout above): for lookups that compare stored keys.
    bool is_short_str() const noexcept { return kind_ == kind::short_str; }
    bool is_block_str() const noexcept { return kind_ == kind::str; }
    bool is_bytes() const noexcept { return kind_ == kind::bytes; }
    bool is_tuple() const noexcept { return kind_ == kind::tuple; }
    bool is_map() const noexcept { return kind_ == kind::map; }
    bool is_heap() const noexcept { return kind_ >= kind::big_int; }

    // Unchecked accessors: the kind must match (asserted in debug builds).
    bool as_bool() const noexcept { return u_.b; }
    std::int64_t as_int64() const noexcept { return u_.i; }  // small_int only
    double as_double() const noexcept { return u_.d; }

    bool big_negative() const noexcept { return big()->negative; }
    std::size_t big_limb_count() const noexcept { return big()->count; }
    const std::uint64_t* big_limbs() const noexcept { return big()->limbs(); }
    // Bytes needed for this int in signed two's complement (always >= 1), and the conversion:
    // writes exactly n bytes, little-endian, sign-extended; returns false if n is too small.
    std::size_t le_byte_length() const noexcept;
    bool to_le_bytes(unsigned char* out, std::size_t n) const noexcept;

    // str: UTF-8 bytes (NUL-terminated at data()[size()]), length in code points, max code point.
    std::string_view str_view() const noexcept {
        if (kind_ == kind::short_str) return {short_data(), short_size()};
        return {text()->data(), text()->size};
    }
    // Asks the CPU to start loading this value's heap block (nothing for inline kinds): a lookup
    // that will convert the value it finds starts that cache miss while it compares the key,
    // whose block is another miss, instead of after. Forced inline: GCC counts a prefetch as no
    // effect at all, may find a function that only prefetches pure, and drop calls to it that
    // it has not inlined.
    PYPERSISTENT_ALWAYS_INLINE void prefetch() const noexcept {
#if defined(__GNUC__) || defined(__clang__)
        if (is_heap()) __builtin_prefetch(u_.p);
#endif
    }
    // A str's hash() (cached in a block; a short str's is computed), without hash()'s dispatch.
    hash_t str_hash() const noexcept {
        if (kind_ == kind::short_str) return neutral_detail::short_str_hash(word(0), word(1));
        return text()->hash;
    }
    // The hash() of the str whose UTF-8 is utf8, without building one: a binding's lookups hash
    // a Python str's UTF-8 where it lies (persistent_map::find_entry_matching).
    // (A str that fits a short str hashes by its words, as str_hash does, whatever form the
    // caller holds it in.)
    static PYPERSISTENT_ALWAYS_INLINE hash_t str_hash_of(std::string_view utf8) noexcept {
        if (fits_short_str(utf8.data(), utf8.size(), 0x80)) {
            std::uint64_t words[2];
            short_str_words(utf8.data(), utf8.size(), words);
            return neutral_detail::short_str_hash(words[0], words[1]);
        }
        return neutral_detail::hash_bytes(reinterpret_cast<const unsigned char*>(utf8.data()), utf8.size(),
                                          neutral_detail::str_seed);
    }
    // str_hash_of for the characters whose short str has these words (short_str_words).
    static PYPERSISTENT_ALWAYS_INLINE hash_t short_str_hash_of(const std::uint64_t words[2]) noexcept {
        return neutral_detail::short_str_hash(words[0], words[1]);
    }
    std::size_t str_length() const noexcept { return kind_ == kind::short_str ? short_size() : text()->length; }
    std::uint32_t str_max_char() const noexcept {
        if (kind_ != kind::short_str) return text()->max_char;
        std::uint32_t m = 0;
        for (const char c : str_view()) m = std::max<std::uint32_t>(m, static_cast<unsigned char>(c));
        return m;
    }
    bool str_is_ascii() const noexcept { return kind_ == kind::short_str || text()->max_char < 0x80; }
    std::string_view bytes_view() const noexcept { return {text()->data(), text()->size}; }

    std::size_t tuple_size() const noexcept;
    const neutral_value* tuple_data() const noexcept;
    const neutral_value& operator[](std::size_t i) const noexcept { return tuple_data()[i]; }

    const shared_map& as_map() const noexcept;

    // ---- equality and hashing (see the top of this file) ----

    // Both throw neutral_nesting_error past max_nesting_depth nested tuples/maps, nothing else.
    hash_t hash() const;
    friend bool operator==(const neutral_value& a, const neutral_value& b) { return equal(a, b); }
    friend bool operator!=(const neutral_value& a, const neutral_value& b) { return !equal(a, b); }
    // Same kind and same bits (same heap block; same characters for short strs): cheap,
    // implies ==. For two short strs it *is* ==.
    // The two words (see word()) of the short str of these characters, computed in registers:
    // a lookup compares stored keys with them without building a probe value (whose bytes,
    // stored piecewise and read back whole, stall the CPU's store forwarding). n must be at most
    // short_str_capacity, the bytes ASCII.
    static PYPERSISTENT_ALWAYS_INLINE void short_str_words(const char* data, std::size_t n, std::uint64_t words[2]) noexcept {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        // Word 0 holds the tag, the size and characters 0-5; word 1 characters 6 on. From at
        // most two loads: the first eight characters (of which word 0 keeps six, shifted up by
        // two bytes) and, for eight or more, the last eight shifted down to start at character 6.
        static_assert(short_str_capacity <= 14, "word 1 holds at most characters 6-13");
        assert(n <= short_str_capacity);
        const auto* p = reinterpret_cast<const unsigned char*>(data);
        const std::uint64_t head = static_cast<std::uint64_t>(kind::short_str) | static_cast<std::uint64_t>(n) << 8;
        if (n >= 8) {
            std::uint64_t first, last;
            std::memcpy(&first, p, 8);
            std::memcpy(&last, p + n - 8, 8);
            words[0] = head | first << 16;
            words[1] = last >> (8 * (14 - n));
        } else {
            const std::uint64_t all = neutral_detail::le_tail(p, n);
            words[0] = head | all << 16;
            words[1] = all >> 48;
        }
#else
        const neutral_value v = make_short_str(data, n);
        words[0] = v.word(0);
        words[1] = v.word(1);
#endif
    }

    // The value's 16 bytes as two words: equal for two short strs exactly when they are equal,
    // so a binding can key a cache on a short str's content without hashing it.
    std::uint64_t word(int i) const noexcept {
        std::uint64_t w;
        std::memcpy(&w, static_cast<const char*>(static_cast<const void*>(this)) + 8 * i, sizeof w);
        return w;
    }
    // (Every byte of a value is defined: the payload is zeroed before a narrower member is set,
    // and short_ is zero but for short strs, so this is a comparison of the 16 bytes.)
    bool identical(const neutral_value& other) const noexcept {
        std::uint64_t a[2], b[2];
        std::memcpy(a, static_cast<const void*>(this), sizeof a);
        std::memcpy(b, static_cast<const void*>(&other), sizeof b);
        return a[0] == b[0] && a[1] == b[1];
    }

    // Python-style repr, for tests, logs and examples: None, True, 12, 1.5, 'text', b'..',
    // (1, 2), {'k': 'v'} (map entries in trie order).
    std::string repr() const;

    // The number of references to this heap value (1 for inline kinds): for tests.
    std::uint32_t use_count() const noexcept { return is_heap() ? u_.p->refs.load() : 1; }

private:
    friend class neutral_probe;

    union payload {
        bool b;
        std::int64_t i;
        double d;
        neutral_detail::heap_header* p;
    };

    // A short str's size and characters (see the layout above): byte 1, and bytes 2 onwards.
    std::size_t short_size() const noexcept { return static_cast<unsigned char>(short_[0]); }
    const char* short_data() const noexcept {
        static_assert(offsetof(neutral_value, short_) == 1 && offsetof(neutral_value, u_) == 8,
                      "a short str's characters run from byte 2 to byte 14, across short_ and u_");
        return reinterpret_cast<const char*>(this) + 2;
    }
    char* short_data() noexcept { return reinterpret_cast<char*>(this) + 2; }

    // Whether size bytes of str UTF-8 fit in a short str: ASCII (known from max_char when it is
    // below 0x80, else checked) and at most short_str_capacity bytes.
    static bool fits_short_str(const char* data, std::size_t size, std::uint32_t max_char) noexcept {
        if (size > short_str_capacity) return false;
        if (max_char < 0x80) return true;
        for (std::size_t i = 0; i < size; ++i) {
            if (static_cast<unsigned char>(data[i]) >= 0x80) return false;
        }
        return true;
    }
    static neutral_value make_short_str(const char* data, std::size_t size) noexcept {
        neutral_value v;  // None: every byte zero
        v.kind_ = kind::short_str;
        v.short_[0] = static_cast<char>(size);
        if (size) std::memcpy(v.short_data(), data, size);
        return v;
    }

    static neutral_value adopt(kind k, neutral_detail::heap_header* block) noexcept {
        neutral_value v;
        v.kind_ = k;
        v.u_.p = block;
        return v;
    }
    // A str or bytes value: a short str when it fits one, else a block with the characters, in
    // storage (storage_size bytes, owned by the caller: neutral_probe) when they fit there, else
    // allocated.
    static neutral_value make_text(kind k, const char* data, std::size_t size, std::size_t length, std::uint32_t max_char,
                                   void* storage = nullptr, std::size_t storage_size = 0) {
        using neutral_detail::text_block;
        if (k == kind::str && fits_short_str(data, size, max_char)) return make_short_str(data, size);
        const std::size_t block_size = sizeof(text_block) + size + 1;
        void* mem = block_size <= storage_size ? storage : neutral_detail::allocate_block(block_size);
        auto* b = new (mem) text_block(k == kind::str ? neutral_detail::heap_kind::str : neutral_detail::heap_kind::bytes,
                                       size, length, max_char);
        if (size) std::memcpy(b->data(), data, size);
        b->data()[size] = '\0';
        b->hash = neutral_detail::hash_bytes(reinterpret_cast<const unsigned char*>(b->data()), size,
                                             k == kind::str ? neutral_detail::str_seed : neutral_detail::bytes_seed);
        return adopt(k, b);
    }

    const neutral_detail::big_int_block* big() const noexcept {
        return static_cast<const neutral_detail::big_int_block*>(u_.p);
    }
    const neutral_detail::text_block* text() const noexcept { return static_cast<const neutral_detail::text_block*>(u_.p); }

    static void destroy(neutral_detail::heap_header* block) noexcept;
    static void destroy_container(neutral_detail::heap_header* block) noexcept;
    static bool equal(const neutral_value& a, const neutral_value& b);
    static bool numeric_equal(const neutral_value& a, const neutral_value& b) noexcept;
    void repr_into(std::string& out) const;

    kind kind_;
    char short_[7] = {};  // a short str's size and first characters; zero for every other kind
    payload u_;
};

static_assert(sizeof(neutral_value) == 16, "neutral_value is a tag, 7 bytes and an 8-byte payload");
static_assert(std::is_standard_layout<neutral_value>::value, "short strs address the value's bytes");
static_assert(std::is_nothrow_move_constructible<neutral_value>::value, "tries relocate keys in place");

// A str or bytes key for lookups (find / contains / erase / find_hashed) that needs no heap
// allocation when the content fits in the probe (up to inline_capacity bytes): the block lives
// inside the probe object. For a binding's hot path: looking up a Python str key in a shared map
// without malloc/free. The probe's value must not be stored or copied anywhere that outlives the
// probe (never pass it to set(); find / erase never copy the key): the destructor checks that no
// reference was taken and aborts the process if one was, rather than leave a dangling pointer.
class neutral_probe {
public:
    static constexpr std::size_t inline_capacity = 200;

    // str from UTF-8 the caller vouches for (see neutral_value::str_unchecked).
    static neutral_probe str(std::string_view utf8, std::size_t length, std::uint32_t max_char) {
        return neutral_probe(neutral_value::kind::str, utf8, length, max_char);
    }
    static neutral_probe bytes(std::string_view data) {
        return neutral_probe(neutral_value::kind::bytes, data, data.size(), 0);
    }

    neutral_probe(const neutral_probe&) = delete;
    neutral_probe& operator=(const neutral_probe&) = delete;
    ~neutral_probe() {
        if (!inline_) return;  // a heap value: released normally
        if (value_.u_.p->refs.load() != 1) std::abort();  // a copy escaped: it would dangle
        value_.kind_ = neutral_value::kind::none;          // nothing to release
    }

    const neutral_value& value() const noexcept { return value_; }
    operator const neutral_value&() const noexcept { return value_; }
    // Whether the value's block lives inside the probe (false for a short str, which has none,
    // and for content too long for the probe, which has a block of its own).
    bool is_inline() const noexcept { return inline_; }

private:
    neutral_probe(neutral_value::kind k, std::string_view data, std::size_t length, std::uint32_t max_char)
        : value_(neutral_value::make_text(k, data.data(), data.size(), length, max_char, storage_, sizeof storage_)),
          inline_(value_.is_heap() && value_.u_.p == static_cast<void*>(storage_)) {}
    // Guaranteed copy elision returns probes from the factories without moving them.

    alignas(neutral_detail::text_block) unsigned char storage_[sizeof(neutral_detail::text_block) + inline_capacity + 1];
    neutral_value value_;
    bool inline_ = false;
};

struct neutral_hash {
    hash_t operator()(const neutral_value& v) const { return v.hash(); }
};
struct neutral_equal {
    bool operator()(const neutral_value& a, const neutral_value& b) const { return a == b; }
};

namespace neutral_detail {

struct tuple_block : heap_header {
    std::size_t count;
    std::atomic<std::uint64_t> hash{0};  // 0: not computed yet
    neutral_value* items() noexcept { return reinterpret_cast<neutral_value*>(this + 1); }
    const neutral_value* items() const noexcept { return reinterpret_cast<const neutral_value*>(this + 1); }
    explicit tuple_block(std::size_t n) noexcept : heap_header(heap_kind::tuple), count(n) {}
};
static_assert(sizeof(tuple_block) % alignof(neutral_value) == 0, "items follow the header");

struct map_block : heap_header {
    std::atomic<std::uint64_t> hash{0};  // 0: not computed yet
    shared_map map;
    explicit map_block(shared_map m) noexcept : heap_header(heap_kind::map), map(std::move(m)) {}
};

// Compares magnitudes given as limbs (no zero limb at the top).
inline bool limbs_equal(const std::uint64_t* a, std::size_t na, const std::uint64_t* b, std::size_t nb) noexcept {
    return na == nb && std::memcmp(a, b, na * sizeof(std::uint64_t)) == 0;
}

// The exact integer value of a finite, integral double with |d| >= 2^63, as limbs.
struct double_limbs {
    std::uint64_t limbs[17];
    std::size_t count = 0;
};
inline double_limbs integral_double_to_limbs(double d) noexcept {
    double_limbs out;
    int e = 0;
    const double m = std::frexp(std::fabs(d), &e);  // |d| = m * 2^e, m in [0.5, 1), e >= 64
    const auto mantissa = static_cast<std::uint64_t>(std::ldexp(m, 53));  // exact: 53 bits
    const int shift = e - 53;  // >= 11
    for (auto& l : out.limbs) l = 0;
    const int word = shift / 64;
    const int bit = shift % 64;
    out.limbs[word] = mantissa << bit;
    if (bit != 0) out.limbs[word + 1] = mantissa >> (64 - bit);
    out.count = static_cast<std::size_t>(word) + 2;
    while (out.count > 0 && out.limbs[out.count - 1] == 0) --out.count;
    return out;
}

// Whether double d equals the integer (negative, limbs), exactly.
inline bool double_equals_big(double d, bool negative, const std::uint64_t* limbs, std::size_t count) noexcept {
    if (!std::isfinite(d) || d != std::floor(d)) return false;
    if ((d < 0) != negative) return false;
    if (std::fabs(d) < 9223372036854775808.0) return false;  // big ints are outside the int64 range
    const double_limbs dl = integral_double_to_limbs(d);
    return limbs_equal(dl.limbs, dl.count, limbs, count);
}

// Whether double d equals the int64 i, exactly.
inline bool double_equals_int64(double d, std::int64_t i) noexcept {
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return false;  // NaN too
    if (d != std::floor(d)) return false;
    return static_cast<std::int64_t>(d) == i;
}

}  // namespace neutral_detail

// ---- out-of-line definitions ------------------------------------------------------------------

inline neutral_value::neutral_value(shared_map m) : kind_(kind::none) {
    u_.i = 0;
    void* mem = neutral_detail::allocate_block(sizeof(neutral_detail::map_block));
    auto* b = new (mem) neutral_detail::map_block(std::move(m));
    kind_ = kind::map;
    u_.p = b;
}

inline const shared_map& neutral_value::as_map() const noexcept {
    return static_cast<const neutral_detail::map_block*>(u_.p)->map;
}
inline std::size_t neutral_value::tuple_size() const noexcept {
    return static_cast<const neutral_detail::tuple_block*>(u_.p)->count;
}
inline const neutral_value* neutral_value::tuple_data() const noexcept {
    return static_cast<const neutral_detail::tuple_block*>(u_.p)->items();
}

inline neutral_value neutral_value::tuple(const neutral_value* items, std::size_t count) {
    using neutral_detail::tuple_block;
    void* mem = neutral_detail::allocate_block(sizeof(tuple_block) + count * sizeof(neutral_value));
    auto* b = new (mem) tuple_block(count);
    for (std::size_t i = 0; i < count; ++i) new (b->items() + i) neutral_value(items[i]);  // noexcept
    return adopt(kind::tuple, b);
}

inline neutral_value neutral_value::from_limbs(bool negative, const std::uint64_t* limbs, std::size_t count) {
    while (count > 0 && limbs[count - 1] == 0) --count;
    if (count == 0) return neutral_value(0);
    if (count == 1) {
        const std::uint64_t m = limbs[0];
        if (!negative && m <= std::uint64_t(std::numeric_limits<std::int64_t>::max())) {
            return neutral_value(static_cast<std::int64_t>(m));
        }
        if (negative && m <= (std::uint64_t(1) << 63)) {
            // -m fits: -2^63 is INT64_MIN.
            return neutral_value(m == (std::uint64_t(1) << 63) ? std::numeric_limits<std::int64_t>::min()
                                                                 : -static_cast<std::int64_t>(m));
        }
    }
    if (count > std::numeric_limits<std::uint32_t>::max()) throw std::length_error("neutral_value: int too large");
    using neutral_detail::big_int_block;
    void* mem = neutral_detail::allocate_block(sizeof(big_int_block) + count * sizeof(std::uint64_t));
    auto* b = new (mem) big_int_block(negative, static_cast<std::uint32_t>(count));
    std::memcpy(b->limbs(), limbs, count * sizeof(std::uint64_t));
    b->hash = neutral_detail::py_signed_hash(neutral_detail::limbs_mod_p(limbs, count), negative);
    return adopt(kind::big_int, b);
}

inline neutral_value neutral_value::from_le_bytes(const unsigned char* bytes, std::size_t n, bool is_signed) {
    const bool negative = is_signed && n > 0 && (bytes[n - 1] & 0x80);
    std::vector<std::uint64_t> limbs((n + 7) / 8, 0);
    for (std::size_t i = 0; i < n; ++i) {
        const unsigned byte = negative ? static_cast<unsigned char>(~bytes[i]) : bytes[i];
        limbs[i / 8] |= static_cast<std::uint64_t>(byte) << (8 * (i % 8));
    }
    if (negative) {
        // |x| = ~x + 1 over the n bytes complemented above. ~x has its top bit clear, so the
        // carry never runs past the n bytes.
        for (auto& l : limbs) {
            if (++l != 0) break;
        }
    }
    return from_limbs(negative, limbs.data(), limbs.size());
}

namespace neutral_detail {

// Decimal digits and magnitudes through 32-bit limbs (plain 64-bit arithmetic, no __int128).
inline std::vector<std::uint32_t> to_u32_limbs(const std::uint64_t* limbs, std::size_t count) {
    std::vector<std::uint32_t> out(count * 2);
    for (std::size_t i = 0; i < count; ++i) {
        out[2 * i] = static_cast<std::uint32_t>(limbs[i]);
        out[2 * i + 1] = static_cast<std::uint32_t>(limbs[i] >> 32);
    }
    while (!out.empty() && out.back() == 0) out.pop_back();
    return out;
}

inline std::string magnitude_to_decimal(const std::uint64_t* limbs, std::size_t count) {
    std::vector<std::uint32_t> m = to_u32_limbs(limbs, count);
    if (m.empty()) return "0";
    std::string digits;  // least significant first
    while (!m.empty()) {
        std::uint64_t rem = 0;
        for (std::size_t i = m.size(); i-- > 0;) {
            const std::uint64_t cur = (rem << 32) | m[i];
            m[i] = static_cast<std::uint32_t>(cur / 1000000000u);
            rem = cur % 1000000000u;
        }
        while (!m.empty() && m.back() == 0) m.pop_back();
        for (int k = 0; k < 9; ++k) {
            digits.push_back(static_cast<char>('0' + rem % 10));
            rem /= 10;
            if (m.empty() && rem == 0) break;
        }
    }
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
    return std::string(digits.rbegin(), digits.rend());
}

inline std::size_t bit_length(const std::uint64_t* limbs, std::size_t count) noexcept {
    if (count == 0) return 0;
    std::uint64_t top = limbs[count - 1];
    std::size_t bits = (count - 1) * 64;
    while (top) {
        ++bits;
        top >>= 1;
    }
    return bits;
}

inline bool is_power_of_two(const std::uint64_t* limbs, std::size_t count) noexcept {
    if (count == 0) return false;
    for (std::size_t i = 0; i + 1 < count; ++i) {
        if (limbs[i] != 0) return false;
    }
    const std::uint64_t top = limbs[count - 1];
    return (top & (top - 1)) == 0;
}

// Tuple hashing: CPython's tuplehash (an xxHash-like combination of the element hashes), over
// the elements' neutral hashes.
constexpr std::uint64_t xx_prime_1 = 11400714785074694791ull;
constexpr std::uint64_t xx_prime_2 = 14029467366897019727ull;
constexpr std::uint64_t xx_prime_5 = 2870177450012600261ull;

}  // namespace neutral_detail

inline std::size_t neutral_value::le_byte_length() const noexcept {
    std::uint64_t one;
    const std::uint64_t* limbs;
    std::size_t count;
    bool negative;
    if (kind_ == kind::big_int) {
        limbs = big()->limbs();
        count = big()->count;
        negative = big()->negative;
    } else {
        const std::int64_t i = kind_ == kind::boolean ? std::int64_t(u_.b) : u_.i;
        one = neutral_detail::magnitude_of(i);
        limbs = &one;
        count = one ? 1 : 0;
        negative = i < 0;
    }
    const std::size_t bits = neutral_detail::bit_length(limbs, count);
    if (bits == 0) return 1;
    const std::size_t signed_bits = negative && neutral_detail::is_power_of_two(limbs, count) ? bits : bits + 1;
    return (signed_bits + 7) / 8;
}

inline bool neutral_value::to_le_bytes(unsigned char* out, std::size_t n) const noexcept {
    if (n < le_byte_length()) return false;
    std::uint64_t one;
    const std::uint64_t* limbs;
    std::size_t count;
    bool negative;
    if (kind_ == kind::big_int) {
        limbs = big()->limbs();
        count = big()->count;
        negative = big()->negative;
    } else {
        const std::int64_t i = kind_ == kind::boolean ? std::int64_t(u_.b) : u_.i;
        one = neutral_detail::magnitude_of(i);
        limbs = &one;
        count = 1;
        negative = i < 0;
    }
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t limb = i / 8;
        out[i] = limb < count ? static_cast<unsigned char>(limbs[limb] >> (8 * (i % 8))) : 0;
    }
    if (negative) {
        unsigned carry = 1;
        for (std::size_t i = 0; i < n; ++i) {
            const unsigned v = static_cast<unsigned char>(~out[i]) + carry;
            out[i] = static_cast<unsigned char>(v);
            carry = v >> 8;
        }
    }
    return true;
}

inline neutral_value neutral_value::from_decimal(std::string_view text) {
    std::size_t i = 0;
    bool negative = false;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) negative = text[i++] == '-';
    if (i == text.size()) throw std::invalid_argument("neutral_value::from_decimal: no digits");
    std::vector<std::uint32_t> m;  // magnitude, 32-bit limbs, least significant first
    auto mul_add = [&m](std::uint32_t mul, std::uint32_t add) {
        std::uint64_t carry = add;
        for (auto& limb : m) {
            const std::uint64_t cur = std::uint64_t(limb) * mul + carry;
            limb = static_cast<std::uint32_t>(cur);
            carry = cur >> 32;
        }
        if (carry) m.push_back(static_cast<std::uint32_t>(carry));
    };
    std::uint32_t chunk = 0, scale = 1;
    bool last_digit = false;
    for (; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '_' && last_digit && i + 1 < text.size()) {
            last_digit = false;
            continue;
        }
        if (c < '0' || c > '9') throw std::invalid_argument("neutral_value::from_decimal: not a decimal integer");
        last_digit = true;
        chunk = chunk * 10 + static_cast<std::uint32_t>(c - '0');
        scale *= 10;
        if (scale == 1000000000u) {
            mul_add(scale, chunk);
            chunk = 0;
            scale = 1;
        }
    }
    if (!last_digit) throw std::invalid_argument("neutral_value::from_decimal: not a decimal integer");
    if (scale != 1) mul_add(scale, chunk);
    std::vector<std::uint64_t> limbs((m.size() + 1) / 2, 0);
    for (std::size_t k = 0; k < m.size(); ++k) limbs[k / 2] |= std::uint64_t(m[k]) << (32 * (k % 2));
    return from_limbs(negative, limbs.data(), limbs.size());
}

namespace neutral_detail {

// Tuples and maps whose last reference died while another was being destroyed on this thread
// (see "Nesting" at the top): a stack linked through the blocks' hash fields, which nothing
// reads once the count is zero.
struct destruction_queue {
    heap_header* head = nullptr;
    bool draining = false;
};
inline thread_local destruction_queue pending_destructions;

inline std::atomic<std::uint64_t>& dead_link(heap_header* block) noexcept {
    return block->kind == heap_kind::tuple ? static_cast<tuple_block*>(block)->hash : static_cast<map_block*>(block)->hash;
}

}  // namespace neutral_detail

inline void neutral_value::destroy(neutral_detail::heap_header* block) noexcept {
    using namespace neutral_detail;
    switch (block->kind) {
        case heap_kind::big_int:
            static_cast<big_int_block*>(block)->~big_int_block();
            free_block(block);
            return;
        case heap_kind::str:
        case heap_kind::bytes:
            static_cast<text_block*>(block)->~text_block();
            free_block(block);
            return;
        case heap_kind::tuple:
        case heap_kind::map:
            break;
    }
    destruction_queue& queue = pending_destructions;
    if (queue.draining) {  // inside an outer destroy: it frees this one later
        dead_link(block).store(reinterpret_cast<std::uintptr_t>(queue.head), std::memory_order_relaxed);
        queue.head = block;
        return;
    }
    queue.draining = true;
    while (block) {
        destroy_container(block);  // queues the containers it held
        block = queue.head;
        if (block) queue.head = reinterpret_cast<heap_header*>(dead_link(block).load(std::memory_order_relaxed));
    }
    queue.draining = false;
}

inline void neutral_value::destroy_container(neutral_detail::heap_header* block) noexcept {
    using namespace neutral_detail;
    if (block->kind == heap_kind::tuple) {
        auto* t = static_cast<tuple_block*>(block);
        for (std::size_t i = t->count; i-- > 0;) t->items()[i].~neutral_value();
        t->~tuple_block();
    } else {
        static_cast<map_block*>(block)->~map_block();
    }
    free_block(block);
}

inline bool neutral_value::numeric_equal(const neutral_value& a, const neutral_value& b) noexcept {
    // Different numeric kinds (the caller handled equal kinds). bool acts as the int 0 or 1.
    const neutral_value* x = &a;
    const neutral_value* y = &b;
    if (x->kind_ > y->kind_) std::swap(x, y);  // order: boolean < small_int < floating < big_int
    if (x->kind_ == kind::boolean) {
        const std::int64_t i = x->u_.b ? 1 : 0;
        switch (y->kind_) {
            case kind::small_int: return y->u_.i == i;
            case kind::floating: return y->u_.d == static_cast<double>(i);
            default: return false;  // a big int is never 0 or 1
        }
    }
    if (x->kind_ == kind::small_int) {
        if (y->kind_ == kind::floating) return neutral_detail::double_equals_int64(y->u_.d, x->u_.i);
        return false;  // small vs big: canonical forms never meet
    }
    // floating vs big_int
    const auto* big = y->big();
    return neutral_detail::double_equals_big(x->u_.d, big->negative, big->limbs(), big->count);
}

inline bool neutral_value::equal(const neutral_value& a, const neutral_value& b) {
    if (a.kind_ != b.kind_) {
        // A short str never equals a block str (canonical forms; see the layout above).
        const bool an = a.kind_ >= kind::boolean && a.kind_ <= kind::big_int;
        const bool bn = b.kind_ >= kind::boolean && b.kind_ <= kind::big_int;
        return an && bn && numeric_equal(a, b);
    }
    switch (a.kind_) {
        case kind::none: return true;
        case kind::short_str: return a.identical(b);
        case kind::boolean: return a.u_.b == b.u_.b;
        case kind::small_int: return a.u_.i == b.u_.i;
        case kind::floating:
            return a.u_.d == b.u_.d || (std::isnan(a.u_.d) && std::isnan(b.u_.d));
        case kind::big_int: {
            if (a.u_.p == b.u_.p) return true;
            const auto *x = a.big(), *y = b.big();
            return x->negative == y->negative && neutral_detail::limbs_equal(x->limbs(), x->count, y->limbs(), y->count);
        }
        case kind::str:
        case kind::bytes: {
            if (a.u_.p == b.u_.p) return true;
            const auto *x = a.text(), *y = b.text();
            return x->hash == y->hash && x->size == y->size && std::memcmp(x->data(), y->data(), x->size) == 0;
        }
        case kind::tuple: {
            if (a.u_.p == b.u_.p) return true;
            const std::size_t n = a.tuple_size();
            if (n != b.tuple_size()) return false;
            const neutral_detail::nesting_level level;
            const neutral_value* x = a.tuple_data();
            const neutral_value* y = b.tuple_data();
            for (std::size_t i = 0; i < n; ++i) {
                if (!(x[i] == y[i])) return false;
            }
            return true;
        }
        case kind::map: {
            if (a.u_.p == b.u_.p) return true;
            const auto* x = static_cast<const neutral_detail::map_block*>(a.u_.p);
            const auto* y = static_cast<const neutral_detail::map_block*>(b.u_.p);
            const std::uint64_t hx = x->hash.load(std::memory_order_relaxed);
            const std::uint64_t hy = y->hash.load(std::memory_order_relaxed);
            if (hx != 0 && hy != 0 && hx != hy) return false;  // both cached: a cheap reject
            const neutral_detail::nesting_level level;
            return x->map == y->map;
        }
    }
    return false;
}

inline hash_t neutral_value::hash() const {
    using namespace neutral_detail;
    switch (kind_) {
        case kind::none: return 0xFCA86420FCA86420ull;  // any constant: None equals only None
        case kind::short_str: return str_hash();
        case kind::boolean: return u_.b ? 1 : 0;
        case kind::small_int: return hash_int64(u_.i);
        case kind::floating: return hash_double(u_.d);
        case kind::big_int: return big()->hash;
        case kind::str:
        case kind::bytes: return text()->hash;
        case kind::tuple: {
            auto* t = static_cast<tuple_block*>(u_.p);
            std::uint64_t h = t->hash.load(std::memory_order_relaxed);
            if (h != 0) return h;
            const nesting_level level;
            std::uint64_t acc = xx_prime_5 ^ tuple_seed;
            for (std::size_t i = 0; i < t->count; ++i) {
                acc += t->items()[i].hash() * xx_prime_2;
                acc = rotl(acc, 31);
                acc *= xx_prime_1;
            }
            acc += static_cast<std::uint64_t>(t->count) ^ (xx_prime_5 ^ 3527539ull);
            h = acc == 0 ? hash_zero_substitute : acc;
            t->hash.store(h, std::memory_order_relaxed);  // idempotent: racing threads store the same
            return h;
        }
        case kind::map: {
            auto* m = static_cast<map_block*>(u_.p);
            std::uint64_t h = m->hash.load(std::memory_order_relaxed);
            if (h != 0) return h;
            const nesting_level level;
            // Order-independent: a sum over entries, each mixing its key's and value's hashes.
            std::uint64_t acc = map_seed ^ mix64(static_cast<std::uint64_t>(m->map.size()));
            for (const auto& e : m->map) acc += mix64(e.first.hash() ^ rotl(mix64(e.second.hash() + map_seed), 17));
            h = acc == 0 ? hash_zero_substitute : acc;
            m->hash.store(h, std::memory_order_relaxed);
            return h;
        }
    }
    return 0;
}

inline void neutral_value::repr_into(std::string& out) const {
    switch (kind_) {
        case kind::none: out += "None"; return;
        case kind::boolean: out += u_.b ? "True" : "False"; return;
        case kind::small_int: out += std::to_string(u_.i); return;
        case kind::big_int:
            if (big()->negative) out += '-';
            out += neutral_detail::magnitude_to_decimal(big()->limbs(), big()->count);
            return;
        case kind::floating: {
            const double d = u_.d;
            if (std::isnan(d)) {
                out += "nan";
                return;
            }
            if (std::isinf(d)) {
                out += d > 0 ? "inf" : "-inf";
                return;
            }
            // The shortest %g form that reads back as the same double (close to Python's repr).
            char buf[40];
            for (int precision = 1; precision <= 17; ++precision) {
                std::snprintf(buf, sizeof buf, "%.*g", precision, d);
                if (std::strtod(buf, nullptr) == d) break;
            }
            std::string s(buf);
            if (s.find_first_of(".en") == std::string::npos) s += ".0";
            out += s;
            return;
        }
        case kind::short_str:
        case kind::str:
        case kind::bytes: {
            if (kind_ == kind::bytes) out += 'b';
            out += '\'';
            for (const char c : str_view()) {
                const auto u = static_cast<unsigned char>(c);
                if (c == '\'' || c == '\\') {
                    out += '\\';
                    out += c;
                } else if (u < 0x20 || u == 0x7F || (kind_ == kind::bytes && u >= 0x80)) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\x%02x", u);
                    out += buf;
                } else {
                    out += c;
                }
            }
            out += '\'';
            return;
        }
        case kind::tuple: {
            const neutral_detail::nesting_level level;
            out += '(';
            const std::size_t n = tuple_size();
            for (std::size_t i = 0; i < n; ++i) {
                if (i) out += ", ";
                tuple_data()[i].repr_into(out);
            }
            if (n == 1) out += ',';
            out += ')';
            return;
        }
        case kind::map: {
            const neutral_detail::nesting_level level;
            out += '{';
            bool first = true;
            for (const auto& e : as_map()) {
                if (!first) out += ", ";
                first = false;
                e.first.repr_into(out);
                out += ": ";
                e.second.repr_into(out);
            }
            out += '}';
            return;
        }
    }
}

inline std::string neutral_value::repr() const {
    std::string out;
    repr_into(out);
    return out;
}

}  // namespace pypersistent
