// Shared helpers for the C++ unit tests: hash functors that force particular trie shapes, a
// model comparison, a canonical-order comparison, a structural invariant checker that walks
// the CHAMP nodes directly, and (pptest::faults) failure injection with a policy that keeps a
// ledger of nodes and retains for exception-safety sweeps.
#pragma once

#include <pypersistent/pypersistent.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <new>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace pptest {

using pypersistent::hash_t;

inline std::uint64_t mix64(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

inline std::uint64_t ukey(int k) noexcept { return static_cast<std::uint64_t>(static_cast<std::uint32_t>(k)); }

// ---- hash functors over int keys ----------------------------------------------------------

// A good hash: every bit depends on every key bit.
struct mix_hash {
    hash_t operator()(int k) const noexcept { return mix64(ukey(k)); }
};
// Every key has the same 64-bit hash: one collision node below 13 single-child bitmap levels.
struct const_hash {
    hash_t operator()(int) const noexcept { return 0xDEADBEEFCAFEF00Dull; }
};
// find_entry_matching (a lookup by a predicate, for bindings) on an int map or transient m
// hashed by Hash: for every key in [from, to) it finds the entry find finds (or none), and it
// finds nothing with a predicate that accepts no entry.
template <class Hash, class Map>
void expect_find_entry_matching_agrees_with_find(const Map& m, int from, int to) {
    using entry = typename Map::value_type;
    for (int k = from; k < to; ++k) {
        const auto* e = m.find_entry_matching(Hash{}(k), [k](const entry& candidate) { return candidate.first == k; });
        const auto* v = m.find(k);
        ASSERT_EQ(e == nullptr, v == nullptr) << k;
        if (e) {
            EXPECT_EQ(&e->second, v);
        }
        EXPECT_EQ(m.find_entry_matching(Hash{}(k), [](const entry&) { return false; }), nullptr);
    }
}

// Only 61 distinct small hashes: shallow but crowded low fragments, many collisions.
struct mod61_hash {
    hash_t operator()(int k) const noexcept { return ukey(k) % 61; }
};
// Low bits all zero: the low fragments are equal and keys differ only above bit `Shift`, so
// every key sits at the bottom of a long chain of single-child nodes. With Shift >= 33 keys
// that agree modulo 2^(64 - Shift) share their whole hash.
template <unsigned Shift>
struct shift_hash {
    hash_t operator()(int k) const noexcept { return ukey(k) << Shift; }
};
// Hashes that differ only in bits 60..63 (the 4-bit fragment of the last bitmap level).
struct top4_hash {
    hash_t operator()(int k) const noexcept { return (ukey(k) << 60) | 0x0ABCDEF012345678ull; }
};
// Only 9 distinct (well-mixed) hashes: large collision nodes.
struct few_hash {
    hash_t operator()(int k) const noexcept { return mix64(ukey(k) % 9); }
};
// A quarter of the keys fall into 13 collision groups, the rest are well spread.
struct clumpy_hash {
    hash_t operator()(int k) const noexcept { return ukey(k) % 4 == 0 ? mix64(ukey(k) % 13 + 1000000) : mix64(ukey(k)); }
};

// ---- model comparison -------------------------------------------------------------------

// `m` (a persistent or transient map) holds exactly the model's entries: size, lookups, and an
// iteration that visits every key exactly once with iteration count == size.
template <class Map, class Model>
::testing::AssertionResult matches_model(const Map& m, const Model& model) {
    using K = typename Model::key_type;
    if (m.size() != model.size()) {
        return ::testing::AssertionFailure() << "size() " << m.size() << " != model size " << model.size();
    }
    if (m.empty() != model.empty()) return ::testing::AssertionFailure() << "empty() disagrees";
    std::unordered_set<K> seen;
    std::size_t visited = 0;
    for (auto it = m.begin(); it != m.end(); ++it) {
        ++visited;
        const auto& e = *it;
        if (!seen.insert(e.first).second) {
            return ::testing::AssertionFailure() << "key " << ::testing::PrintToString(e.first) << " visited twice";
        }
        auto found = model.find(e.first);
        if (found == model.end()) {
            return ::testing::AssertionFailure() << "iteration yields key " << ::testing::PrintToString(e.first)
                                                 << " that the model lacks";
        }
        if (!(found->second == e.second)) {
            return ::testing::AssertionFailure() << "iteration: key " << ::testing::PrintToString(e.first)
                                                 << " has value " << ::testing::PrintToString(e.second)
                                                 << ", model " << ::testing::PrintToString(found->second);
        }
        if (visited > model.size()) break;
    }
    if (visited != model.size()) {
        return ::testing::AssertionFailure() << "iteration visited " << visited << " entries, model has "
                                             << model.size();
    }
    for (const auto& kv : model) {
        const auto* v = m.find(kv.first);
        if (!v) return ::testing::AssertionFailure() << "find(" << ::testing::PrintToString(kv.first) << ") missing";
        if (!(*v == kv.second)) {
            return ::testing::AssertionFailure() << "find(" << ::testing::PrintToString(kv.first) << ") = "
                                                 << ::testing::PrintToString(*v) << ", model "
                                                 << ::testing::PrintToString(kv.second);
        }
    }
    return ::testing::AssertionSuccess();
}

template <class Map>
std::vector<typename Map::key_type> keys_in_order(const Map& m) {
    std::vector<typename Map::key_type> out;
    out.reserve(m.size());
    for (const auto& e : m) out.push_back(e.first);
    return out;
}

// Equal maps iterate in the same canonical order, except that keys sharing a whole 64-bit hash
// (one collision node, an unordered array) may come in any order among themselves.
template <class Map>
::testing::AssertionResult same_canonical_order(const Map& a, const Map& b) {
    const auto ka = keys_in_order(a);
    const auto kb = keys_in_order(b);
    if (ka.size() != kb.size()) {
        return ::testing::AssertionFailure() << "iteration lengths differ: " << ka.size() << " vs " << kb.size();
    }
    using trie = typename Map::trie;
    std::size_t i = 0;
    while (i < ka.size()) {
        const hash_t h = trie::hash_key(ka[i]);
        std::size_t j = i;
        while (j < ka.size() && trie::hash_key(ka[j]) == h) {
            if (trie::hash_key(kb[j]) != h) {
                return ::testing::AssertionFailure() << "orders differ at position " << j;
            }
            ++j;
        }
        if (j < kb.size() && trie::hash_key(kb[j]) == h) {
            return ::testing::AssertionFailure() << "hash run lengths differ at position " << j;
        }
        if (!std::is_permutation(ka.begin() + static_cast<std::ptrdiff_t>(i), ka.begin() + static_cast<std::ptrdiff_t>(j),
                                 kb.begin() + static_cast<std::ptrdiff_t>(i))) {
            return ::testing::AssertionFailure() << "orders differ in positions " << i << ".." << j;
        }
        i = j;
    }
    return ::testing::AssertionSuccess();
}

// Exactly the same iteration order (for hashes without whole-hash collisions).
template <class Map>
::testing::AssertionResult same_exact_order(const Map& a, const Map& b) {
    const auto ka = keys_in_order(a);
    const auto kb = keys_in_order(b);
    if (ka != kb) return ::testing::AssertionFailure() << "iteration orders differ";
    return ::testing::AssertionSuccess();
}

// ---- structural invariants ----------------------------------------------------------------

// Walks the trie under a root and checks the CHAMP invariants the core relies on:
//   - datamap and nodemap are disjoint; bitmap levels sit at shifts 0..60, collision nodes only
//     below them (shift 65), with every entry's whole hash equal to the node's path;
//   - every entry's hash agrees with the fragments of its path (and with the cached hash);
//   - canonical form: every non-root subtree holds at least two keys (no inlinable singleton);
//   - reference counts are positive; the total key count equals `expected_size`.
template <class Trie>
class structure_checker {
    using node = typename Trie::node;

public:
    ::testing::AssertionResult check(const node* root, std::size_t expected_size) {
        if (!root) {
            if (expected_size != 0) return ::testing::AssertionFailure() << "null root, size " << expected_size;
            return ::testing::AssertionSuccess();
        }
        std::size_t keys = 0;
        if (!walk(root, 0, 0, true, keys)) return ::testing::AssertionFailure() << error_;
        if (keys != expected_size) {
            return ::testing::AssertionFailure() << "trie holds " << keys << " keys, size() says " << expected_size;
        }
        return ::testing::AssertionSuccess();
    }

private:
    bool fail(const std::string& what, unsigned shift) {
        error_ = what + " (at shift " + std::to_string(shift) + ")";
        return false;
    }

    bool walk(const node* n, unsigned shift, hash_t prefix, bool is_root, std::size_t& keys) {
        if (n->refs.load() == 0) return fail("node with a zero reference count", shift);
        const auto* es = Trie::entries(n);
        if (n->collision) {
            if (is_root) return fail("collision node at the root", shift);
            if (shift < 64) return fail("collision node above the last bitmap level", shift);
            if (n->nodemap != 0) return fail("collision node with children", shift);
            if (n->datamap < 2) return fail("collision node with fewer than two entries", shift);
            for (unsigned i = 0; i < n->datamap; ++i) {
                const hash_t h = Trie::hash_key(es[i].first);
                if (h != prefix) return fail("collision entry with a different hash", shift);
                if (!check_cached(es[i], h)) return fail("stale cached hash", shift);
                for (unsigned j = 0; j < i; ++j) {
                    if (es[j].first == es[i].first) return fail("duplicate key in a collision node", shift);
                }
            }
            keys += n->datamap;
            return true;
        }
        if (shift >= 64) return fail("bitmap node below the last bitmap level", shift);
        if (n->datamap & n->nodemap) return fail("datamap and nodemap overlap", shift);
        const hash_t low_mask = shift == 0 ? 0 : ((hash_t(1) << shift) - 1);
        unsigned ei = 0;
        for (std::uint32_t m = n->datamap; m; m &= m - 1, ++ei) {
            const unsigned f = pypersistent::detail::popcount((m & (0u - m)) - 1);
            const hash_t h = Trie::hash_key(es[ei].first);
            if ((h & low_mask) != prefix) return fail("entry hash disagrees with its path", shift);
            if (((h >> shift) & 31u) != f) return fail("entry in the wrong fragment slot", shift);
            if (!check_cached(es[ei], h)) return fail("stale cached hash", shift);
        }
        const std::size_t before = keys;
        keys += ei;
        const auto* cs = Trie::children(n);
        unsigned ci = 0;
        for (std::uint32_t m = n->nodemap; m; m &= m - 1, ++ci) {
            const unsigned f = pypersistent::detail::popcount((m & (0u - m)) - 1);
            if (!cs[ci]) return fail("null child", shift);
            if (!walk(cs[ci], shift + 5, prefix | (hash_t(f) << shift), false, keys)) return false;
        }
        if (!is_root && keys - before < 2) return fail("non-root subtree with fewer than two keys", shift);
        if (is_root && keys == before) return fail("empty root node", shift);
        return true;
    }

    template <class E, class = void>
    struct has_cached_hash : std::false_type {};
    template <class E>
    struct has_cached_hash<E, std::void_t<decltype(std::declval<const E&>().hash)>> : std::true_type {};

    template <class E>
    static bool check_cached(const E& e, hash_t h) {
        if constexpr (has_cached_hash<E>::value) {
            return e.hash == h;
        } else {
            (void)e;
            (void)h;
            return true;
        }
    }

    std::string error_;
};

template <class Map>
::testing::AssertionResult well_formed(const Map& m) {
    return structure_checker<typename Map::trie>().check(m.root(), m.size());
}

// Depth (number of bitmap levels) above the first collision node found, or -1.
template <class Trie>
int collision_depth(const typename Trie::node* n, int depth = 0) {
    if (!n) return -1;
    if (n->collision) return depth;
    const auto* cs = Trie::children(n);
    for (unsigned i = 0, c = Trie::child_count(n); i < c; ++i) {
        const int d = collision_depth<Trie>(cs[i], depth + 1);
        if (d >= 0) return d;
    }
    return -1;
}

}  // namespace pptest

// ---- failure injection and the reference ledger ---------------------------------------------
//
// For exception-safety sweeps. The user code a container calls (key comparisons, key copies) and
// its node allocations are injection points: with inject::active, the countdown-th point from
// the start throws. ledger_policy keeps the ledger: live nodes and bytes, and the retains and
// releases of every key id, so a test can check that a failed operation left everything as it
// was (the strong guarantee) and that nothing leaked.
//
// A namespace of its own: argument-dependent lookup through ledger_policy (a template argument of
// the containers under test) then finds none of pptest's helpers, which a test file may shadow
// with its own (well_formed, holds...).
namespace pptest::faults {

namespace inject {
enum site : unsigned { user_call, allocation };
struct injected_error : std::exception {
    const char* what() const noexcept override { return "injected failure"; }
};
struct injected_bad_alloc : std::bad_alloc {
    const char* what() const noexcept override { return "injected allocation failure"; }
};
inline bool active = false;
inline bool allocations_only = false;  // only allocations are injection points
inline long countdown = 0;             // > 0: the countdown-th injection point from now throws

// An injection point: throws injected_bad_alloc (an allocation) or injected_error (a user call)
// when the countdown reaches it.
inline void point(site s) {
    if (!active || (allocations_only && s != allocation)) return;
    if (countdown > 0 && --countdown == 0) {
        if (s == allocation) throw injected_bad_alloc();
        throw injected_error();
    }
}
}  // namespace inject

// What ledger_policy counted. Key ids are in [min_id, max_id) (negative keys too).
struct ledger {
    static constexpr int min_id = -128;
    static constexpr int max_id = 1 << 14;
    static inline long retained_by_slot[max_id - min_id] = {};
    static inline long net_retained = 0;
    static inline long live_nodes = 0;
    static inline long live_bytes = 0;
    // The net retains of the key (or value) with this id.
    static long& retained(int id) { return retained_by_slot[static_cast<std::size_t>(id - min_id)]; }
    static void reset() {
        std::fill(std::begin(retained_by_slot), std::end(retained_by_slot), 0);
        net_retained = live_nodes = live_bytes = 0;
    }
    struct snapshot {
        long retained = net_retained, nodes = live_nodes, bytes = live_bytes;
        bool operator==(const snapshot& o) const { return retained == o.retained && nodes == o.nodes && bytes == o.bytes; }
    };
};

// A one-thread node policy over keys (and values) with an int `id`: every allocation is an
// injection point, and the ledger counts nodes, bytes and retains by id.
template <bool CacheHash = false>
struct ledger_policy : pypersistent::default_policy {
    using refcount = pypersistent::single_thread_refcount;
    static constexpr bool cache_hash = CacheHash;
    template <class Key>
    static void retain(const Key& k) noexcept {
        ++ledger::retained(k.id);
        ++ledger::net_retained;
    }
    template <class Key>
    static void release(const Key& k) noexcept {
        --ledger::retained(k.id);
        --ledger::net_retained;
    }
    static void* allocate(std::size_t bytes) {
        inject::point(inject::allocation);
        void* p = ::operator new(bytes);
        ++ledger::live_nodes;
        ledger::live_bytes += static_cast<long>(bytes);
        return p;
    }
    static void deallocate(void* p, std::size_t bytes) noexcept {
        --ledger::live_nodes;
        ledger::live_bytes -= static_cast<long>(bytes);
        ::operator delete(p);
    }
};

// The end of a test: no node, byte or retain left, for any id.
inline void expect_ledger_balanced() {
    EXPECT_EQ(ledger::live_nodes, 0) << "nodes leaked";
    EXPECT_EQ(ledger::live_bytes, 0) << "bytes leaked";
    EXPECT_EQ(ledger::net_retained, 0) << "retains without releases";
    for (int id = ledger::min_id; id < ledger::max_id; ++id) ASSERT_EQ(ledger::retained(id), 0) << "id " << id;
}

// Runs `op` with the n-th injection point throwing, for n = 1, 2, ... until it completes. After
// each failure the ledger must be as before and `intact` must hold; returns the failures seen.
template <class Op, class Intact>
long sweep(Op&& op, Intact&& intact) {
    long failures = 0;
    for (long n = 1;; ++n) {
        const ledger::snapshot before;
        inject::countdown = n;
        inject::active = true;
        bool threw = false;
        try {
            op();
        } catch (const inject::injected_error&) {
            threw = true;
        } catch (const inject::injected_bad_alloc&) {
            threw = true;
        }
        inject::active = false;
        inject::countdown = 0;
        if (!threw) return failures;
        ++failures;
        EXPECT_TRUE(ledger::snapshot() == before) << "a failed operation left something behind (n = " << n << ")";
        intact();
        if (::testing::Test::HasFailure()) return failures;
    }
}

}  // namespace pptest::faults
