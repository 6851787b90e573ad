// Policies: how nodes count references, how stored keys and values are retained, and where
// node memory comes from. The trie itself (champ.hpp) is written against these hooks only.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <new>
#include <random>
#include <type_traits>
#include <utility>

// Keeps a rarely taken slow path out of line, so that the fast path that calls it stays small
// enough to inline. Only a hint: compilers without an equivalent get nothing.
#if !defined(PYPERSISTENT_NOINLINE)
#if defined(__GNUC__) || defined(__clang__)
#define PYPERSISTENT_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define PYPERSISTENT_NOINLINE __declspec(noinline)
#else
#define PYPERSISTENT_NOINLINE
#endif
#endif

// The opposite: a small function on a hot path (a comparison inside a search loop) that the
// compiler's size heuristics would otherwise leave as a call.
#if !defined(PYPERSISTENT_ALWAYS_INLINE)
#if defined(__GNUC__) || defined(__clang__)
#define PYPERSISTENT_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define PYPERSISTENT_ALWAYS_INLINE __forceinline
#else
#define PYPERSISTENT_ALWAYS_INLINE inline
#endif
#endif

namespace pypersistent {

using hash_t = std::uint64_t;
using owner_t = std::uint64_t;  // 0 means "no transient owns this node"

// Reference count for nodes shared between threads. Retaining needs no ordering: the caller
// already holds a reference, so the node cannot die concurrently. Releasing must make every
// earlier write to the node visible to whichever thread frees it, so the decrement itself is
// acq_rel (a release decrement plus a standalone acquire fence would be equivalent, but
// ThreadSanitizer does not model standalone fences and would report false races).
class atomic_refcount {
public:
    explicit atomic_refcount(std::uint32_t initial) noexcept : count_(initial) {}
    void retain() noexcept { count_.fetch_add(1, std::memory_order_relaxed); }
    // Returns true when this was the last reference.
    bool release() noexcept { return count_.fetch_sub(1, std::memory_order_acq_rel) == 1; }
    std::uint32_t load() const noexcept { return count_.load(std::memory_order_acquire); }
    // Drops a reference unless it is the last one (then nothing changes and it returns false),
    // for callers that must prepare something before a node can be destroyed.
    bool release_unless_last() noexcept {
        std::uint32_t c = count_.load(std::memory_order_relaxed);
        while (c > 1) {
            if (count_.compare_exchange_weak(c, c - 1, std::memory_order_acq_rel, std::memory_order_relaxed)) return true;
        }
        return false;
    }

private:
    std::atomic<std::uint32_t> count_;
};

// For maps that never leave one thread: plain increments, nothing else changes.
class single_thread_refcount {
public:
    explicit single_thread_refcount(std::uint32_t initial) noexcept : count_(initial) {}
    void retain() noexcept { ++count_; }
    bool release() noexcept { return --count_ == 0; }
    std::uint32_t load() const noexcept { return count_; }

private:
    std::uint32_t count_;
};

// The default policy: C++ values are retained by copying them, so the hooks do nothing.
// A binding that stores foreign handles (PyObject*) overrides retain/release; the trie calls
// retain exactly once for every copy it stores and release exactly once when that copy dies.
struct default_policy {
    using refcount = atomic_refcount;

    // Storing the full hash in every entry costs 8 bytes per entry and saves calling the hash
    // function again when an entry is pushed one level down, and lets lookups reject a
    // mismatching entry without calling the equality function. It pays for expensive user
    // hashes (Python objects) and not for integers, hence off by default.
    static constexpr bool cache_hash = false;

    template <class T>
    static void retain(const T&) noexcept {}
    template <class T>
    static void release(const T&) noexcept {}

    // Whether assigning `b` over `a` would leave the map unchanged, so that the update can
    // return the very same root. Identity for handles; operator== where a type has one.
    template <class T>
    static bool same_value(const T& a, const T& b) {
        if constexpr (is_equality_comparable<T>::value) {
            return static_cast<bool>(a == b);
        } else {
            return false;
        }
    }

    // Whether two stored keys are known to be equal without calling KeyEqual (identity of
    // handles, as dict checks it first). Never for plain values: false is always correct.
    template <class K>
    static constexpr bool identical_key(const K&, const K&) noexcept {
        return false;
    }

    // Opened by a transient around each edit that may change nodes in place. A policy whose
    // release() can run foreign code (a Python __del__ that might look at the trie while a node
    // is half-moved) makes this a scope that holds such releases until the edit is complete;
    // plain values need nothing.
    struct edit_scope {};

    static void* allocate(std::size_t bytes) { return ::operator new(bytes); }
    static void deallocate(void* p, std::size_t) noexcept { ::operator delete(p); }

    // Whether a persistent vector's push_back may let the new tail borrow the old tail's values
    // instead of retaining each copy (vector_trie.hpp, "Lent prefixes"). It pays where retain
    // and release are reference counts; plain values have nothing to save.
    static constexpr bool lend_tail_prefixes = false;

private:
    template <class T, class = void>
    struct is_equality_comparable : std::false_type {};
    template <class T>
    struct is_equality_comparable<T, std::void_t<decltype(std::declval<const T&>() == std::declval<const T&>())>>
        : std::true_type {};
};

// Policy::lend_tail_prefixes where a policy says so, false for policies that do not mention it.
template <class Policy, class = void>
struct policy_lends_tail_prefixes : std::false_type {};
template <class Policy>
struct policy_lends_tail_prefixes<Policy, std::void_t<decltype(Policy::lend_tail_prefixes)>>
    : std::bool_constant<Policy::lend_tail_prefixes> {};

struct single_thread_policy : default_policy {
    using refcount = single_thread_refcount;
};

// Transient owner tokens. Each transient takes a fresh token; nodes it creates carry it and may
// be edited in place while the token is the transient's current one. Tokens must never repeat
// while nodes carrying them are alive, and several copies of this header may live in different
// shared objects (an embedding host and the Python extension each have their own counter), so
// every counter starts at a random 64-bit point: two counters would have to run into each
// other's ranges for tokens to collide.
inline owner_t next_owner_token() noexcept {
    static std::atomic<owner_t> counter{[] {
        std::random_device rd;
        owner_t seed = (owner_t(rd()) << 32) ^ owner_t(rd());
        seed ^= owner_t(std::chrono::steady_clock::now().time_since_epoch().count());
        seed ^= owner_t(reinterpret_cast<std::uintptr_t>(&rd));
        return seed;
    }()};
    owner_t token;
    do {
        token = counter.fetch_add(1, std::memory_order_relaxed);
    } while (token == 0);
    return token;
}

}  // namespace pypersistent
