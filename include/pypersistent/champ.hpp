// The compressed hash array mapped prefix trie (CHAMP) behind persistent_map and transient_map.
//
// Layout. Every node covers the keys whose hashes share the node's prefix. A bitmap node at
// shift s looks at the 5 hash bits (hash >> s) & 31 of a key, its *fragment*, and keeps two
// 32-bit maps over the 32 possible fragments:
//
//   datamap  - fragments that hold exactly one key, stored inline as an entry;
//   nodemap  - fragments shared by several keys, stored in a child node at shift s + 5.
//
// A fragment is in at most one map. The node is one allocation of exactly the needed size:
//
//   [ header | child pointers, by ascending fragment | entries, by ascending fragment ]
//
// Children come first so that the descent, which is most of a lookup, finds them at a fixed
// offset. The full 64-bit hash is used: bitmap levels sit at shifts 0, 5, ..., 60 (the last sees
// the top 4 bits), and only keys whose whole hashes are equal meet in a *collision node* below
// that, an unordered array of entries (its datamap field holds the count).
//
// Canonical form. A subtree that holds a single key is always inlined into its parent as an
// entry (only the root may hold a lone entry), and deletion restores this on the way up. With
// it, the shape of a trie depends only on its set of keys, never on the order of updates: equal
// maps iterate in the same order (except among keys whose whole hashes are equal: a collision
// node keeps them in the order they were added), and equality compares node by node, skipping
// any subtree that both maps share by pointer (collision nodes are compared as sets).
//
// Sharing and ownership. A published node is immutable; it is shared by every map that reaches
// it, and its atomic reference count is the number of parent slots and roots that point to it.
// A transient edits a node in place only when the node carries the transient's current owner
// token; such a node was created by that transient and is reachable only from it (its parents
// carry the same token, up to the root), so nobody else can observe the edit. Freezing the
// transient (taking a new token) makes all of its nodes immutable in O(1).
//
// Exceptions. Hash and equality may throw, as may copying keys and values or allocating. Every
// operation gives the strong guarantee: hashes and comparisons all happen on the way down,
// before anything is allocated; new nodes are built on the way back up, each one completely
// before it is linked, and a node owned by a transient is dismantled only after its replacement
// is fully built.
//
// Index: each operation, and the functions that implement it (here unless a file is named).
//
//   lookup               find (from a root, using the root's maps copied into the map),
//                        find_from (from any level), find_matching (by a predicate);
//                        prefetch_past_header; persistent_map::find / find_hashed
//   insert or assign     assoc (descent, then rebuild of the path: make_single, make_two for two
//                        keys whose fragments first differ below, replace_slot, install_child,
//                        with_value, rebuild_collision); persistent_map::set, transient_map::set
//   erase                dissoc (pair_survivor decides whether a child collapses into its one
//                        remaining entry: the canonical form); persistent_map::erase
//   merge (union)        merge: both tries in lockstep, one side's subtrees reused whole
//   set algebra          persistent_set.hpp: set_algebra::walk / walk_collision (union,
//                        intersection, difference, symmetric difference), subset, disjoint
//   equality             equal: lockstep, shared subtrees skipped
//   diff                 diff, diff_entry_subtree, diff_values, for_each_entry;
//                        persistent_map::diff, persistent_set::diff
//   iteration            iterator.hpp: champ_iterator (a stack of max_depth positions)
//   size of a subtree    count
//   node memory          builder (fills a new node, children then entries), node_guard,
//                        retain / release / destroy / free_shell, node_bytes (layout)
//   transients           transient_map.hpp: an owner token per transient; assoc and dissoc
//                        edit nodes that carry it in place (owned_by); persistent() takes a
//                        new token, which freezes every node in O(1)
//   hashing              hash_key, entry_hash (cached in the entry when Policy::cache_hash),
//                        entry_matches (hash first, then KeyEqual)
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#if !defined(__GNUC__) && !defined(__clang__) && defined(__has_include)
#if __has_include(<version>)
#include <version>  // __cpp_lib_bitops, for popcount() below
#endif
#if defined(__cpp_lib_bitops)
#include <bit>
#endif
#endif

#include "policy.hpp"

namespace pypersistent {

// The "value" of a key-only trie (persistent_set): entries store the key (and its cached hash)
// and nothing else, and the trie never hands a no_value to the policy's hooks.
struct no_value {
    friend constexpr bool operator==(no_value, no_value) noexcept { return true; }
    friend constexpr bool operator!=(no_value, no_value) noexcept { return false; }
};

namespace detail {

constexpr unsigned bits_per_level = 5;
constexpr unsigned hash_bits = 64;
// Bitmap levels at shifts 0..60 (13 of them), then one collision level.
constexpr unsigned max_depth = (hash_bits + bits_per_level - 1) / bits_per_level + 1;

inline unsigned fragment(hash_t hash, unsigned shift) noexcept {
    return static_cast<unsigned>(hash >> shift) & 31u;
}

// GCC and clang (clang-cl too): the builtin, one POPCNT instruction with -mpopcnt (see
// CMakeLists.txt). Elsewhere (MSVC): C++20's std::popcount, which MSVC's library dispatches to
// POPCNT where the CPU has it; before C++20 the classic SWAR count, a dozen ALU operations.
// (MSVC's __popcnt intrinsic is not used: it faults on CPUs without POPCNT.)
inline unsigned popcount(std::uint32_t x) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    return static_cast<unsigned>(__builtin_popcount(x));
#elif defined(__cpp_lib_bitops) && __cpp_lib_bitops >= 201907L
    return static_cast<unsigned>(std::popcount(x));
#else
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    return (((x + (x >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24;
#endif
}

// Position of `bit`'s slot among the set bits of `map`.
inline unsigned slot_index(std::uint32_t map, std::uint32_t bit) noexcept { return popcount(map & (bit - 1)); }

template <class K, class V, bool CacheHash>
struct map_entry {
    K first;
    V second;
    map_entry(const K& k, const V& v, hash_t) : first(k), second(v) {}
};

template <class K, class V>
struct map_entry<K, V, true> {
    K first;
    V second;
    hash_t hash;
    map_entry(const K& k, const V& v, hash_t h) : first(k), second(v), hash(h) {}
};

// Key-only entries: no value slot (a PyObject* key with its cached hash takes 16 bytes).
// `second` stays spelled for generic code, as a static member that occupies nothing.
template <class K>
struct map_entry<K, no_value, false> {
    K first;
    static constexpr no_value second{};
    map_entry(const K& k, const no_value&, hash_t) : first(k) {}
};

template <class K>
struct map_entry<K, no_value, true> {
    K first;
    hash_t hash;
    static constexpr no_value second{};
    map_entry(const K& k, const no_value&, hash_t h) : first(k), hash(h) {}
};

template <class K, class V, class Hash, class KeyEqual, class ValueEqual, class Policy>
struct champ {
    using entry_type = map_entry<K, V, Policy::cache_hash>;
    using refcount_type = typename Policy::refcount;

    static_assert(std::is_nothrow_move_constructible<K>::value && std::is_nothrow_move_constructible<V>::value,
                  "keys and values must be nothrow move constructible: transients relocate them in place");

    // A set's trie: values are no_value, which never reach the policy or ValueEqual (a policy
    // such as the Python bridge's has retain/release for its handle type only).
    static constexpr bool key_only = std::is_same<V, no_value>::value;

    static void retain_value(const V& v) noexcept {
        if constexpr (!key_only) Policy::retain(v);
        (void)v;
    }
    static void release_value(const V& v) noexcept {
        if constexpr (!key_only) Policy::release(v);
        (void)v;
    }
    static bool same_value(const V& a, const V& b) {
        if constexpr (key_only) {
            (void)a;
            (void)b;
            return true;
        } else {
            return Policy::same_value(a, b);
        }
    }
    static bool values_equal(const V& a, const V& b) {
        if constexpr (key_only) {
            (void)a;
            (void)b;
            return true;
        } else {
            return static_cast<bool>(ValueEqual{}(a, b));
        }
    }

    struct node {
        refcount_type refs;
        std::uint32_t datamap;  // collision node: the number of entries
        std::uint32_t nodemap;  // collision node: 0
        bool collision;
        owner_t owner;

        node(std::uint32_t dm, std::uint32_t nm, bool coll, owner_t own) noexcept
            : refs(1), datamap(dm), nodemap(nm), collision(coll), owner(own) {}
    };

    // A node's two maps, as copied out of a root that cannot change (an empty map: zeros).
    struct node_maps {
        std::uint32_t datamap = 0;
        std::uint32_t nodemap = 0;
    };
    static node_maps maps_of(const node* n) noexcept { return n ? node_maps{n->datamap, n->nodemap} : node_maps{}; }

    // ---- layout -------------------------------------------------------------------------

    static constexpr std::size_t round_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }
    static constexpr std::size_t header_bytes = round_up(sizeof(node), alignof(node*));
    static constexpr std::size_t entries_offset(unsigned children) noexcept {
        return round_up(header_bytes + children * sizeof(node*), alignof(entry_type));
    }
    static constexpr std::size_t node_bytes(unsigned entries, unsigned children) noexcept {
        return entries_offset(children) + entries * sizeof(entry_type);
    }

    static unsigned entry_count(const node* n) noexcept { return n->collision ? n->datamap : popcount(n->datamap); }
    static unsigned child_count(const node* n) noexcept { return popcount(n->nodemap); }
    static node** children(node* n) noexcept {
        return reinterpret_cast<node**>(reinterpret_cast<char*>(n) + header_bytes);
    }
    static node* const* children(const node* n) noexcept {
        return reinterpret_cast<node* const*>(reinterpret_cast<const char*>(n) + header_bytes);
    }
    static const entry_type* entries_after(const node* n, unsigned children) noexcept {
        return reinterpret_cast<const entry_type*>(reinterpret_cast<const char*>(n) + entries_offset(children));
    }
    static entry_type* entries(node* n) noexcept {
        return reinterpret_cast<entry_type*>(reinterpret_cast<char*>(n) + entries_offset(child_count(n)));
    }
    static const entry_type* entries(const node* n) noexcept {
        return reinterpret_cast<const entry_type*>(reinterpret_cast<const char*>(n) + entries_offset(child_count(n)));
    }

    // ---- hashing and matching -------------------------------------------------------------

    static hash_t hash_key(const K& key) { return static_cast<hash_t>(Hash{}(key)); }

    static hash_t entry_hash(const entry_type& e) {
        if constexpr (Policy::cache_hash) {
            return e.hash;
        } else {
            return hash_key(e.first);
        }
    }

    static bool entry_matches(const entry_type& e, hash_t hash, const K& key) {
        if (Policy::identical_key(e.first, key)) return true;
        if constexpr (Policy::cache_hash) {
            if (e.hash != hash) return false;
        }
        (void)hash;
        return static_cast<bool>(KeyEqual{}(e.first, key));
    }

    // ---- node lifetime ------------------------------------------------------------------

    static bool owned_by(const node* n, owner_t owner) noexcept { return owner != 0 && n->owner == owner; }

    static void retain(node* n) noexcept { n->refs.retain(); }

    static void release(node* n) noexcept {
        if (n && n->refs.release()) destroy(n);
    }

    static void destroy_entry(entry_type& e) noexcept {
        Policy::release(e.first);
        release_value(e.second);
        e.~entry_type();
    }

    static void destroy(node* n) noexcept {
        const unsigned nc = child_count(n);
        node** cs = children(n);
        for (unsigned i = 0; i < nc; ++i) release(cs[i]);
        const unsigned ne = entry_count(n);
        entry_type* es = entries(n);
        for (unsigned i = 0; i < ne; ++i) destroy_entry(es[i]);
        free_shell(n);
    }

    // Frees a node whose entries and children have all been moved out or disposed of.
    static void free_shell(node* n) noexcept {
        const std::size_t bytes = node_bytes(entry_count(n), child_count(n));
        n->~node();
        Policy::deallocate(n, bytes);
    }

    // Fills one new node slot by slot. If anything throws before finish(), the destructor
    // undoes exactly what was done: entries built so far are released, children placed so far
    // are released, the memory is freed.
    class builder {
    public:
        builder(std::uint32_t datamap, std::uint32_t nodemap, bool collision, owner_t owner) {
            const unsigned ne = collision ? datamap : popcount(datamap);
            void* mem = Policy::allocate(node_bytes(ne, popcount(nodemap)));
            node_ = new (mem) node(datamap, nodemap, collision, owner);
            children_ = champ::children(node_);
            entries_ = champ::entries(node_);
        }
        builder(const builder&) = delete;
        builder& operator=(const builder&) = delete;
        ~builder() {
            if (!node_) return;
            for (unsigned i = 0; i < placed_children_; ++i) release(children_[i]);
            for (unsigned i = 0; i < placed_entries_; ++i) destroy_entry(entries_[i]);
            free_shell(node_);
        }

        void copy_entry(const entry_type& e) {
            entry_type* slot = new (entries_ + placed_entries_) entry_type(e);
            Policy::retain(slot->first);
            retain_value(slot->second);
            ++placed_entries_;
        }
        void new_entry(const K& key, const V& value, hash_t hash) {
            entry_type* slot = new (entries_ + placed_entries_) entry_type(key, value, hash);
            Policy::retain(slot->first);
            retain_value(slot->second);
            ++placed_entries_;
        }
        // Takes over a stored copy from a node that is being dismantled: no retain.
        void relocate_entry(entry_type& e) noexcept {
            new (entries_ + placed_entries_) entry_type(std::move(e));
            e.~entry_type();
            ++placed_entries_;
        }
        // Stores an entry constructed beforehand (so its copying cannot throw here).
        void adopt_temporary(entry_type& tmp) noexcept {
            entry_type* slot = new (entries_ + placed_entries_) entry_type(std::move(tmp));
            Policy::retain(slot->first);
            retain_value(slot->second);
            ++placed_entries_;
        }
        // Carries `count` slots of a node that is dismantled (`owned`: relocated) or kept (copied).
        void carry_entries(entry_type* from, unsigned count, bool owned) {
            if (owned) {
                if constexpr (std::is_trivially_copyable<entry_type>::value) {
                    if (count) std::memcpy(static_cast<void*>(entries_ + placed_entries_), from, count * sizeof(entry_type));
                    placed_entries_ += count;
                } else {
                    for (unsigned i = 0; i < count; ++i) relocate_entry(from[i]);
                }
            } else {
                for (unsigned i = 0; i < count; ++i) copy_entry(from[i]);
            }
        }
        void carry_children(node* const* from, unsigned count, bool owned) noexcept {
            if (owned) {
                if (count) std::memcpy(children_ + placed_children_, from, count * sizeof(node*));
                placed_children_ += count;
            } else {
                for (unsigned i = 0; i < count; ++i) share_child(from[i]);
            }
        }
        void share_child(node* c) noexcept {
            retain(c);
            children_[placed_children_++] = c;
        }
        // Takes over a reference the caller holds.
        void adopt_child(node* c) noexcept { children_[placed_children_++] = c; }

        node* finish() noexcept {
            assert(placed_children_ == child_count(node_) && placed_entries_ == entry_count(node_));
            node* n = node_;
            node_ = nullptr;
            return n;
        }

    private:
        node* node_ = nullptr;
        node** children_ = nullptr;
        entry_type* entries_ = nullptr;
        unsigned placed_children_ = 0;
        unsigned placed_entries_ = 0;
    };

    // Releases a reference on scope exit unless handed over.
    struct node_guard {
        node* n;
        ~node_guard() { release(n); }
        node* hand_over() noexcept {
            node* r = n;
            n = nullptr;
            return r;
        }
    };

    // ---- node construction --------------------------------------------------------------

    static node* make_single(const K& key, const V& value, hash_t hash, owner_t owner) {
        builder b(std::uint32_t(1) << fragment(hash, 0), 0, false, owner);
        b.new_entry(key, value, hash);
        return b.finish();
    }

    // The subtree at `shift` holding an existing entry and a new key whose hashes agree on
    // every fragment above `shift`.
    static node* make_two(unsigned shift, const entry_type& old_entry, hash_t old_hash, const K& key,
                          const V& value, hash_t hash, owner_t owner) {
        if (shift >= hash_bits) {
            builder b(2, 0, true, owner);
            b.copy_entry(old_entry);
            b.new_entry(key, value, hash);
            return b.finish();
        }
        const unsigned f_old = fragment(old_hash, shift);
        const unsigned f_new = fragment(hash, shift);
        if (f_old != f_new) {
            builder b((std::uint32_t(1) << f_old) | (std::uint32_t(1) << f_new), 0, false, owner);
            if (f_old < f_new) {
                b.copy_entry(old_entry);
                b.new_entry(key, value, hash);
            } else {
                b.new_entry(key, value, hash);
                b.copy_entry(old_entry);
            }
            return b.finish();
        }
        node_guard sub{make_two(shift + bits_per_level, old_entry, old_hash, key, value, hash, owner)};
        builder b(0, std::uint32_t(1) << f_old, false, owner);
        b.adopt_child(sub.hand_over());
        return b.finish();
    }

    enum class slot_kind { empty, entry, child };

    // Builds the node that replaces `old` at the same level: every slot of `old` is carried
    // over, except the slot at `bit`, which becomes `kind` (an entry built beforehand in `tmp`,
    // or the child `new_child`, whose reference this function always takes). When `old` is owned
    // by the transient, its contents move over and it is freed; otherwise it is left untouched.
    static node* replace_slot(node* old, bool owned, owner_t owner, std::uint32_t bit, slot_kind kind,
                              entry_type* tmp, node* new_child) {
        node_guard child_guard{kind == slot_kind::child ? new_child : nullptr};
        const std::uint32_t datamap = (old->datamap & ~bit) | (kind == slot_kind::entry ? bit : 0);
        const std::uint32_t nodemap = (old->nodemap & ~bit) | (kind == slot_kind::child ? bit : 0);
        builder b(datamap, nodemap, false, owner);

        // The slot's position among the old node's children and entries; the slots before it
        // and after it are carried over unchanged.
        node** old_children = children(old);
        const unsigned child_count_old = child_count(old);
        const unsigned child_at = slot_index(old->nodemap, bit);
        const unsigned child_resume = child_at + ((old->nodemap & bit) ? 1 : 0);
        entry_type* old_entries = entries(old);
        const unsigned entry_count_old = popcount(old->datamap);
        const unsigned entry_at = slot_index(old->datamap, bit);
        const unsigned entry_resume = entry_at + ((old->datamap & bit) ? 1 : 0);

        b.carry_children(old_children, child_at, owned);
        if (kind == slot_kind::child) b.adopt_child(child_guard.hand_over());
        b.carry_children(old_children + child_resume, child_count_old - child_resume, owned);
        b.carry_entries(old_entries, entry_at, owned);
        if (kind == slot_kind::entry) b.adopt_temporary(*tmp);
        b.carry_entries(old_entries + entry_resume, entry_count_old - entry_resume, owned);

        node* result = b.finish();
        if (owned) {
            if (child_resume != child_at) release(old_children[child_at]);
            if (entry_resume != entry_at) destroy_entry(old_entries[entry_at]);
            free_shell(old);
        }
        return result;
    }

    // A collision node without entry `skip` (if not npos) and with `tmp` appended (if given).
    static constexpr unsigned npos = ~0u;
    static node* rebuild_collision(node* old, bool owned, owner_t owner, unsigned skip, entry_type* tmp) {
        const unsigned count = old->datamap;
        const unsigned new_count = count - (skip != npos ? 1 : 0) + (tmp ? 1 : 0);
        builder b(new_count, 0, true, owner);
        entry_type* es = entries(old);
        const unsigned kept_before = skip != npos ? skip : count;
        b.carry_entries(es, kept_before, owned);
        if (skip != npos) b.carry_entries(es + skip + 1, count - skip - 1, owned);
        if (tmp) b.adopt_temporary(*tmp);
        node* result = b.finish();
        if (owned) {
            if (skip != npos) destroy_entry(es[skip]);
            free_shell(old);
        }
        return result;
    }

    // `n` with the value of entry `index` replaced (the key's slot does not move).
    static node* with_value(node* n, bool owned, owner_t owner, unsigned index, const V& value) {
        entry_type& e = entries(n)[index];
        if (same_value(e.second, value)) return n;
        if constexpr (key_only) {
            (void)owned;
            (void)owner;
            return n;
        } else if (owned) {
            V fresh(value);
            Policy::retain(fresh);
            using std::swap;
            swap(e.second, fresh);
            Policy::release(fresh);
            return n;
        }
        builder b(n->datamap, n->nodemap, n->collision, owner);
        b.carry_children(children(n), child_count(n), false);
        entry_type* es = entries(n);
        b.carry_entries(es, index, false);
        b.new_entry(e.first, value, entry_hash_or_zero(e));
        b.carry_entries(es + index + 1, entry_count(n) - index - 1, false);
        return b.finish();
    }

    static hash_t entry_hash_or_zero(const entry_type& e) noexcept {
        if constexpr (Policy::cache_hash) {
            return e.hash;
        } else {
            (void)e;
            return 0;
        }
    }

    static bool is_singleton(const node* n) noexcept { return n->nodemap == 0 && entry_count(n) == 1; }

    // ---- lookup -------------------------------------------------------------------------

    static const entry_type* find(const node* root, hash_t hash, const K& key) {
        return root ? find_from(root, 0, hash, key) : nullptr;
    }

    // find() for a map that keeps a copy of its root's two maps beside the root pointer (see
    // persistent_map): the first step tests them without loading the root's header.
    static const entry_type* find(const node* root, node_maps root_maps, hash_t hash, const K& key) {
        const std::uint32_t bit = std::uint32_t(1) << fragment(hash, 0);
        if (root_maps.nodemap & bit) {
            return find_from(children(root)[slot_index(root_maps.nodemap, bit)], bits_per_level, hash, key);
        }
        if (!(root_maps.datamap & bit)) return nullptr;
        const entry_type& e = entries_after(root, popcount(root_maps.nodemap))[slot_index(root_maps.datamap, bit)];
        return entry_matches(e, hash, key) ? &e : nullptr;
    }

    // Asks for the two lines after a node's first: a lookup reads the node's maps (its first
    // line) and then one slot further in, a child pointer or an entry, often on a later line.
    // Asked for together, the slot's line arrives with the header's instead of after it.
    // Forced inline: GCC may drop calls to a function that only prefetches.
    static PYPERSISTENT_ALWAYS_INLINE void prefetch_past_header(const node* n) noexcept {
#if defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(reinterpret_cast<const char*>(n) + 64);
        __builtin_prefetch(reinterpret_cast<const char*>(n) + 128);
#else
        (void)n;
#endif
    }

    // find() by a predicate on entries instead of a K: the entry on hash's path for which
    // entry_is_key(entry) is true. `hash` must be what Hash gives for every key the predicate
    // accepts. For bindings that search with a foreign form of a key (a Python str's UTF-8)
    // without building a K, and that may prefetch the value while testing the key.
    // Forced inline: a binding's predicate is a lambda, and the walk must be inlined with it into
    // the binding's lookup (GCC otherwise leaves it a call of its own on every lookup).
    template <class EntryIsKey>
    static PYPERSISTENT_ALWAYS_INLINE const entry_type* find_matching(const node* root, node_maps root_maps,
                                                                      hash_t hash, EntryIsKey&& entry_is_key) {
        const std::uint32_t root_bit = std::uint32_t(1) << fragment(hash, 0);
        if (!(root_maps.nodemap & root_bit)) {
            if (!(root_maps.datamap & root_bit)) return nullptr;
            const entry_type& e =
                entries_after(root, popcount(root_maps.nodemap))[slot_index(root_maps.datamap, root_bit)];
            return entry_is_key(e) ? &e : nullptr;
        }
        const node* n = children(root)[slot_index(root_maps.nodemap, root_bit)];
        for (unsigned shift = bits_per_level; shift < hash_bits; shift += bits_per_level) {
            const std::uint32_t bit = std::uint32_t(1) << fragment(hash, shift);
            if (n->nodemap & bit) {
                n = children(n)[slot_index(n->nodemap, bit)];
                prefetch_past_header(n);
                continue;
            }
            if (!(n->datamap & bit)) return nullptr;
            const entry_type& e = entries(n)[slot_index(n->datamap, bit)];
            return entry_is_key(e) ? &e : nullptr;
        }
        assert(n->collision);
        const entry_type* es = entries(n);
        for (unsigned i = 0, c = n->datamap; i < c; ++i) {
            if (entry_is_key(es[i])) return es + i;
        }
        return nullptr;
    }

    // ---- insert or assign ---------------------------------------------------------------
    //
    // Returns the node that takes n's place: n itself when nothing changed or n was edited in
    // place, otherwise a new reference. n is consumed (its memory reused or freed) only when it
    // is owned by `owner` and a different node is returned. `added` is set exactly when the key
    // was inserted, from the same comparisons that decided where it went: callers derive counts
    // from it and never ask KeyEqual a second time about the same pair, whose answer might differ.
    //
    // KeepExisting: insert only; a key already present keeps its value (merge uses it when the
    // other side's value wins).

    template <bool KeepExisting = false>
    static node* assoc(node* n, unsigned shift, hash_t hash, const K& key, const V& value, owner_t owner,
                       bool& added) {
        const bool owned = owned_by(n, owner);
        if (n->collision) {
            entry_type* es = entries(n);
            for (unsigned i = 0, c = n->datamap; i < c; ++i) {
                if (KeyEqual{}(es[i].first, key)) {
                    if constexpr (KeepExisting) return n;
                    return with_value(n, owned, owner, i, value);
                }
            }
            entry_type tmp(key, value, hash);
            node* result = rebuild_collision(n, owned, owner, npos, &tmp);
            added = true;
            return result;
        }
        const std::uint32_t bit = std::uint32_t(1) << fragment(hash, shift);
        if (n->nodemap & bit) {
            const unsigned index = slot_index(n->nodemap, bit);
            node* child = children(n)[index];
            const bool child_owned = owned_by(child, owner);
            node* new_child = assoc<KeepExisting>(child, shift + bits_per_level, hash, key, value, owner, added);
            if (new_child == child) return n;
            return install_child(n, owned, owner, bit, index, child, child_owned, new_child);
        }
        if (n->datamap & bit) {
            const unsigned index = slot_index(n->datamap, bit);
            const entry_type& e = entries(n)[index];
            if (entry_matches(e, hash, key)) {
                if constexpr (KeepExisting) return n;
                return with_value(n, owned, owner, index, value);
            }
            const hash_t old_hash = entry_hash(e);
            node* sub = make_two(shift + bits_per_level, e, old_hash, key, value, hash, owner);
            node* result = replace_slot(n, owned, owner, bit, slot_kind::child, nullptr, sub);
            added = true;
            return result;
        }
        entry_type tmp(key, value, hash);
        node* result = replace_slot(n, owned, owner, bit, slot_kind::entry, &tmp, nullptr);
        added = true;
        return result;
    }

    // Puts `new_child` (a new reference) where `old_child` was.
    static node* install_child(node* n, bool owned, owner_t owner, std::uint32_t bit, unsigned index, node* old_child,
                               bool old_child_owned, node* new_child) {
        if (owned) {
            children(n)[index] = new_child;
            if (!old_child_owned) release(old_child);
            return n;
        }
        return replace_slot(n, false, owner, bit, slot_kind::child, nullptr, new_child);
    }

    // ---- erase --------------------------------------------------------------------------
    //
    // Same contract as assoc; returns nullptr only when the root loses its last key.
    //
    // Canonical form says a subtree below the root never holds a single key. The only erase that
    // would leave one is the erase of a key from a subtree holding exactly two: a chain of
    // single-child nodes ending in a node with two entries. That case is handled by the parent
    // of the chain before it descends: it finds the key among the two and rebuilds itself with
    // a copy of the other entry in place of the whole chain, one allocation, with every node
    // still intact. So every other node dissoc builds keeps at least two keys, nothing below the
    // root ever collapses, and a transient's erase gives the strong guarantee like everything
    // else (no node it owns is consumed before the one allocation succeeds).

    enum class pair_lookup { not_a_pair, absent, found };

    // Whether the subtree `c` at `shift` holds exactly two keys and, if it does, which entry
    // survives the erase of `key` (`absent` when key is not one of the two).
    static pair_lookup pair_survivor(const node* c, unsigned shift, hash_t hash, const K& key,
                                     const entry_type*& survivor) {
        bool on_path = true;
        while (!c->collision && c->datamap == 0 && (c->nodemap & (c->nodemap - 1)) == 0) {
            if (!(c->nodemap & (std::uint32_t(1) << fragment(hash, shift)))) on_path = false;
            c = children(c)[0];
            shift += bits_per_level;
        }
        if (c->nodemap != 0 || entry_count(c) != 2) return pair_lookup::not_a_pair;
        if (!on_path) return pair_lookup::absent;
        const entry_type* es = entries(c);
        unsigned index;
        if (c->collision) {
            if (KeyEqual{}(es[0].first, key)) {
                index = 0;
            } else if (KeyEqual{}(es[1].first, key)) {
                index = 1;
            } else {
                return pair_lookup::absent;
            }
        } else {
            const std::uint32_t bit = std::uint32_t(1) << fragment(hash, shift);
            if (!(c->datamap & bit)) return pair_lookup::absent;
            index = slot_index(c->datamap, bit);
            if (!entry_matches(es[index], hash, key)) return pair_lookup::absent;
        }
        survivor = &es[1 - index];
        return pair_lookup::found;
    }

    static node* dissoc(node* n, unsigned shift, hash_t hash, const K& key, owner_t owner, bool& removed) {
        const bool owned = owned_by(n, owner);
        if (n->collision) {
            // At least three entries (a pair is handled by the parent), so two stay.
            const entry_type* es = entries(n);
            for (unsigned i = 0, c = n->datamap; i < c; ++i) {
                if (KeyEqual{}(es[i].first, key)) {
                    node* result = rebuild_collision(n, owned, owner, i, nullptr);
                    removed = true;
                    return result;
                }
            }
            return n;
        }
        const std::uint32_t bit = std::uint32_t(1) << fragment(hash, shift);
        if (n->nodemap & bit) {
            const unsigned index = slot_index(n->nodemap, bit);
            node* child = children(n)[index];
            const entry_type* survivor = nullptr;
            switch (pair_survivor(child, shift + bits_per_level, hash, key, survivor)) {
                case pair_lookup::absent:
                    return n;
                case pair_lookup::found: {
                    entry_type tmp(*survivor);
                    node* result = replace_slot(n, owned, owner, bit, slot_kind::entry, &tmp, nullptr);
                    removed = true;
                    return result;
                }
                case pair_lookup::not_a_pair:
                    break;
            }
            const bool child_owned = owned_by(child, owner);
            node* new_child = dissoc(child, shift + bits_per_level, hash, key, owner, removed);
            if (new_child == child) return n;
            assert(new_child && !is_singleton(new_child));
            return install_child(n, owned, owner, bit, index, child, child_owned, new_child);
        }
        if (n->datamap & bit) {
            const unsigned index = slot_index(n->datamap, bit);
            if (!entry_matches(entries(n)[index], hash, key)) return n;
            removed = true;
            if (n->nodemap == 0 && popcount(n->datamap) == 1) {
                assert(shift == 0);  // below the root a node holds at least two keys
                if (owned) {
                    destroy_entry(entries(n)[0]);
                    free_shell(n);
                }
                return nullptr;
            }
            return replace_slot(n, owned, owner, bit, slot_kind::empty, nullptr, nullptr);
        }
        return n;
    }

    // ---- merge --------------------------------------------------------------------------

    static std::size_t count(const node* n) noexcept {
        if (n->collision) return n->datamap;
        std::size_t total = popcount(n->datamap);
        const unsigned nc = child_count(n);
        for (unsigned i = 0; i < nc; ++i) total += count(children(n)[i]);
        return total;
    }

    // The union of two subtrees at the same level, values from `b` winning. Returns a new
    // reference (possibly to `a` itself when b adds nothing new); `added` grows by the number of
    // b's keys that were not in a. Subtrees present on one side only are shared, not copied.
    static node* merge(node* a, node* b, unsigned shift, std::size_t& added) {
        if (a == b) {
            retain(a);
            return a;
        }
        if (a->collision) {
            node_guard acc{a};
            retain(a);
            const entry_type* es = entries(b);
            for (unsigned i = 0, c = b->datamap; i < c; ++i) {
                bool was_added = false;
                node* next = assoc(acc.n, shift, entry_hash(es[i]), es[i].first, es[i].second, 0, was_added);
                if (next != acc.n) {
                    release(acc.n);
                    acc.n = next;
                }
                if (was_added) ++added;
            }
            return acc.hand_over();
        }

        struct slot_result {
            slot_kind kind = slot_kind::empty;
            const entry_type* entry = nullptr;
            node* child = nullptr;  // owned reference
        };
        slot_result slots[32];
        struct cleanup {
            slot_result* s;
            ~cleanup() {
                for (unsigned i = 0; i < 32; ++i) release(s[i].child);
            }
        } cleanup_slots{slots};

        const entry_type* a_entries = entries(a);
        const entry_type* b_entries = entries(b);
        node* const* a_children = children(a);
        node* const* b_children = children(b);
        std::uint32_t datamap = 0, nodemap = 0;
        bool changed = false;
        const std::uint32_t all = a->datamap | a->nodemap | b->datamap | b->nodemap;
        for (std::uint32_t m = all; m; m &= m - 1) {
            const std::uint32_t bit = m & (0u - m);
            const unsigned f = popcount(bit - 1);
            slot_result& s = slots[f];
            const entry_type* ea = (a->datamap & bit) ? a_entries + slot_index(a->datamap, bit) : nullptr;
            const entry_type* eb = (b->datamap & bit) ? b_entries + slot_index(b->datamap, bit) : nullptr;
            node* na = (a->nodemap & bit) ? a_children[slot_index(a->nodemap, bit)] : nullptr;
            node* nb = (b->nodemap & bit) ? b_children[slot_index(b->nodemap, bit)] : nullptr;
            const unsigned next = shift + bits_per_level;
            if (ea && eb) {
                const hash_t hb = entry_hash(*eb);
                if (entry_matches(*ea, hb, eb->first)) {
                    s.kind = slot_kind::entry;
                    const bool same = same_value(ea->second, eb->second);
                    s.entry = same ? ea : eb;
                    changed |= !same;
                } else {
                    s.kind = slot_kind::child;
                    s.child = make_two(next, *ea, entry_hash(*ea), eb->first, eb->second, hb, 0);
                    ++added;
                    changed = true;
                }
            } else if (ea && nb) {
                // a's one key against b's subtree: b's value wins, so insert a's entry only if
                // absent. The subtree then holds b's keys, plus a's key if it was new to b: that
                // is count(nb) - 1 keys more than a had here, or count(nb) if a's key was added.
                s.kind = slot_kind::child;
                bool was_added = false;
                s.child = assoc<true>(nb, next, entry_hash(*ea), ea->first, ea->second, 0, was_added);
                if (s.child == nb) retain(nb);
                added += count(nb) - (was_added ? 0 : 1);
                changed = true;
            } else if (na && eb) {
                s.kind = slot_kind::child;
                bool was_added = false;
                s.child = assoc(na, next, entry_hash(*eb), eb->first, eb->second, 0, was_added);
                if (s.child == na) retain(na);
                if (was_added) ++added;
                changed |= s.child != na;
            } else if (na && nb) {
                s.kind = slot_kind::child;
                s.child = merge(na, nb, next, added);
                changed |= s.child != na;
            } else if (ea) {
                s.kind = slot_kind::entry;
                s.entry = ea;
            } else if (eb) {
                s.kind = slot_kind::entry;
                s.entry = eb;
                ++added;
                changed = true;
            } else if (na) {
                s.kind = slot_kind::child;
                retain(na);
                s.child = na;
            } else {
                s.kind = slot_kind::child;
                retain(nb);
                s.child = nb;
                added += count(nb);
                changed = true;
            }
            (s.kind == slot_kind::entry ? datamap : nodemap) |= bit;
        }
        if (!changed) {
            retain(a);
            return a;
        }
        builder out(datamap, nodemap, false, 0);
        for (std::uint32_t m = nodemap; m; m &= m - 1) {
            slot_result& s = slots[popcount((m & (0u - m)) - 1)];
            out.adopt_child(s.child);
            s.child = nullptr;
        }
        for (std::uint32_t m = datamap; m; m &= m - 1) out.copy_entry(*slots[popcount((m & (0u - m)) - 1)].entry);
        return out.finish();
    }

    // find() starting from a node at a given shift. Collision nodes exist only below the last
    // bitmap level, so the loop needs no per-level "is this a collision node" test.
    static const entry_type* find_from(const node* n, unsigned shift, hash_t hash, const K& key) {
        while (shift < hash_bits) {
            const std::uint32_t bit = std::uint32_t(1) << fragment(hash, shift);
            if (n->nodemap & bit) {
                n = children(n)[slot_index(n->nodemap, bit)];
                prefetch_past_header(n);
                shift += bits_per_level;
                continue;
            }
            if (n->datamap & bit) {
                const entry_type& e = entries(n)[slot_index(n->datamap, bit)];
                return entry_matches(e, hash, key) ? &e : nullptr;
            }
            return nullptr;
        }
        assert(n->collision);
        const entry_type* es = entries(n);
        for (unsigned i = 0, c = n->datamap; i < c; ++i) {
            if (KeyEqual{}(es[i].first, key)) return es + i;
        }
        return nullptr;
    }

    // ---- diff ---------------------------------------------------------------------------

    // Every entry of a subtree, in iteration order.
    template <class F>
    static void for_each_entry(const node* n, F&& f) {
        const entry_type* es = entries(n);
        for (unsigned i = 0, c = entry_count(n); i < c; ++i) f(es[i]);
        node* const* cs = children(n);
        for (unsigned i = 0, c = child_count(n); i < c; ++i) for_each_entry(cs[i], f);
    }

    // An entry present on both sides: reported as changed unless the values are the same
    // (Policy::same_value) or equal (ValueEqual).
    template <class Visitor>
    static void diff_values(const entry_type& a, const entry_type& b, Visitor& v) {
        if (!same_value(a.second, b.second) && !values_equal(a.second, b.second)) v.changed(a, b);
    }

    // One side's lone entry `e` against the other side's subtree `n` at level `shift`: the
    // subtree's entries are all added (or all removed), except the one with e's key, if any,
    // which is compared with e. `e_is_old` says which side e is on.
    template <class Visitor>
    static void diff_entry_subtree(const entry_type& e, const node* n, unsigned shift, bool e_is_old, Visitor& v) {
        const entry_type* match = find_from(n, shift, entry_hash(e), e.first);
        auto each = [&](const entry_type& x) {
            if (&x == match) {
                if (e_is_old) diff_values(e, x, v); else diff_values(x, e, v);
            } else if (e_is_old) {
                v.added(x);
            } else {
                v.removed(x);
            }
        };
        for_each_entry(n, each);
        if (!match) {
            if (e_is_old) v.removed(e); else v.added(e);
        }
    }

    // What changed from subtree `a` to subtree `b` (same level): calls v.removed(entry of a),
    // v.added(entry of b) and v.changed(entry of a, entry of b). Subtrees both sides share by
    // pointer are skipped, and thanks to the canonical form the two tries have the same shape
    // wherever their keys agree, so two versions that differ in k keys cost about k log n.
    // Read-only: the visitor may throw, and nothing needs undoing.
    template <class Visitor>
    static void diff(const node* a, const node* b, unsigned shift, Visitor& v) {
        if (a == b) return;
        if (a->collision) {  // both are: collision nodes exist only below the last bitmap level
            const entry_type* ea = entries(a);
            const entry_type* eb = entries(b);
            const unsigned ca = a->datamap, cb = b->datamap;
            for (unsigned i = 0; i < ca; ++i) {
                const entry_type* match = nullptr;
                for (unsigned j = 0; j < cb && !match; ++j) {
                    if (KeyEqual{}(eb[j].first, ea[i].first)) match = eb + j;
                }
                if (match) diff_values(ea[i], *match, v); else v.removed(ea[i]);
            }
            for (unsigned j = 0; j < cb; ++j) {
                bool found = false;
                for (unsigned i = 0; i < ca && !found; ++i) found = KeyEqual{}(ea[i].first, eb[j].first);
                if (!found) v.added(eb[j]);
            }
            return;
        }
        const entry_type* a_entries = entries(a);
        const entry_type* b_entries = entries(b);
        node* const* a_children = children(a);
        node* const* b_children = children(b);
        const unsigned next = shift + bits_per_level;
        auto added = [&v](const entry_type& x) { v.added(x); };
        auto removed = [&v](const entry_type& x) { v.removed(x); };
        for (std::uint32_t m = a->datamap | a->nodemap | b->datamap | b->nodemap; m; m &= m - 1) {
            const std::uint32_t bit = m & (0u - m);
            const entry_type* ea = (a->datamap & bit) ? a_entries + slot_index(a->datamap, bit) : nullptr;
            const entry_type* eb = (b->datamap & bit) ? b_entries + slot_index(b->datamap, bit) : nullptr;
            const node* na = (a->nodemap & bit) ? a_children[slot_index(a->nodemap, bit)] : nullptr;
            const node* nb = (b->nodemap & bit) ? b_children[slot_index(b->nodemap, bit)] : nullptr;
            if (ea && eb) {
                if (entry_matches(*ea, entry_hash(*eb), eb->first)) {
                    diff_values(*ea, *eb, v);
                } else {
                    v.removed(*ea);
                    v.added(*eb);
                }
            } else if (ea && nb) {
                diff_entry_subtree(*ea, nb, next, true, v);
            } else if (na && eb) {
                diff_entry_subtree(*eb, na, next, false, v);
            } else if (na && nb) {
                diff(na, nb, next, v);
            } else if (ea) {
                v.removed(*ea);
            } else if (eb) {
                v.added(*eb);
            } else if (na) {
                for_each_entry(na, removed);
            } else {
                for_each_entry(nb, added);
            }
        }
    }

    // ---- equality -----------------------------------------------------------------------

    // Both subtrees sit at the same level; thanks to the canonical form, equal key sets have
    // equal shapes, so the comparison walks both in lockstep.
    static bool equal(const node* a, const node* b) {
        if (a == b) return true;
        if (a->collision != b->collision || a->datamap != b->datamap || a->nodemap != b->nodemap) return false;
        const entry_type* ea = entries(a);
        const entry_type* eb = entries(b);
        if (a->collision) {
            for (unsigned i = 0, c = a->datamap; i < c; ++i) {
                const entry_type* match = nullptr;
                for (unsigned j = 0; j < c && !match; ++j) {
                    if (KeyEqual{}(eb[j].first, ea[i].first)) match = eb + j;
                }
                if (!match || !values_equal(ea[i].second, match->second)) return false;
            }
            return true;
        }
        for (unsigned i = 0, c = popcount(a->datamap); i < c; ++i) {
            if constexpr (Policy::cache_hash) {
                if (ea[i].hash != eb[i].hash) return false;
            }
            if (!KeyEqual{}(ea[i].first, eb[i].first)) return false;
            if (!values_equal(ea[i].second, eb[i].second)) return false;
        }
        node* const* ca = children(a);
        node* const* cb = children(b);
        for (unsigned i = 0, c = child_count(a); i < c; ++i) {
            if (!equal(ca[i], cb[i])) return false;
        }
        return true;
    }
};

}  // namespace detail
}  // namespace pypersistent
