// The bit-partitioned vector trie behind persistent_vector and transient_vector (the layout of
// Clojure's PersistentVector and of immer::vector without relaxed nodes).
//
// Layout. A vector of n elements keeps its last 1..32 elements in a *tail* leaf and all the
// others, a multiple of 32, in a trie of *leaves* holding exactly 32 values each under *inner*
// nodes of up to 32 children. The trie's root sits at a shift: element i is found by following
// the 5-bit fragments (i >> shift) & 31, (i >> (shift - 5)) & 31, ... down to shift 5, then
// taking slot i & 31 of the leaf reached. Every level exists only because the one below is full:
// a trie of one leaf is that leaf itself (shift 0), and a root always has at least two children.
// So the shape depends on the size alone, and equality walks two vectors of equal size in
// lockstep, skipping every subtree they share by pointer. Thanks to the tail, push_back and
// pop_back reach into the trie only once every 32 calls.
//
// Nodes. A node is one allocation: a header (reference count, slots in use, slots allocated,
// owner token) followed by its slots, child pointers or values. Persistent operations allocate
// exactly the slots they fill, so that small vectors stay small; a transient gives every node it
// makes room for 32, so that it can append in place.
//
// Sharing and ownership, as in champ.hpp. A published node is immutable and shared by every
// vector that reaches it; its atomic reference count is the number of parent slots, roots and
// tails pointing to it. A transient edits a node in place only when the node carries the
// transient's current owner token: the transient made it and nothing else can reach it.
// Ownership only ever spreads downwards from the root (a node becomes owned by being copied into
// an owned parent, or made under one), so the owned nodes of a trie are a connected top part of
// it: below an unowned node nothing is owned. Freezing a transient (taking a new token) makes
// all of its nodes immutable in O(1).
//
// Lent prefixes. A persistent push_back copies the tail, and under a policy whose retain and
// release of a value are reference counts (Python objects), retaining every copied value (and
// releasing them all again when the old version dies) is most of the cost of an append. Such a
// policy sets `lend_tail_prefixes`: the new tail then copies the old tail's values without
// retaining them and holds a reference to the old tail instead (its *lender*), which owns them;
// a leaf owns only the values past its lender's count. The values a lender keeps alive are
// exactly a prefix of the borrower's, so no value outlives every vector that holds it. Every
// lend_period-th tail size is a full copy that owns everything, so a chain of lenders is at most
// lend_period nodes long, and a full tail (32 is a multiple of the period) owns all its values:
// leaves in the trie never have lenders.
//
// Exceptions. Allocating and copying a value may throw; swapping two values must not. Every
// operation gives the strong guarantee. New nodes are built bottom-up and each is complete
// before it is linked. A node under construction counts the slots filled so far, so dropping it
// undoes exactly those. A transient edits in place only once everything below has succeeded,
// and because owned nodes form the top of the trie, everything above an edit in place is an
// edit in place too: nothing can fail after the first one.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <new>
#include <type_traits>
#include <utility>

#include "policy.hpp"

namespace pypersistent {
namespace detail {

template <class T, class Policy>
struct vector_trie {
    using value_type = T;
    using size_type = std::size_t;
    using refcount_type = typename Policy::refcount;

    static constexpr unsigned bits = 5;
    static constexpr unsigned branches = 1u << bits;
    static constexpr size_type mask = branches - 1;

    static_assert(std::is_nothrow_swappable<T>::value,
                  "values must be nothrow swappable: a transient replaces a value in place by swapping");
    static_assert(alignof(T) <= alignof(std::max_align_t), "over-aligned values are not supported");

    // See "Lent prefixes" above. Only for values that are copied bitwise and need no destructor,
    // where a retain is all a copy costs beyond the bytes.
    static constexpr bool lending = policy_lends_tail_prefixes<Policy>::value && std::is_trivially_copyable<T>::value &&
                                    std::is_trivially_destructible<T>::value;
    static constexpr unsigned lend_period = 4;
    static_assert(branches % lend_period == 0, "a full tail must own its values");

    // count and capacity are not single bytes: a store to a char-sized field may alias anything,
    // and the compiler would reload the whole vector after every append.
    struct node {
        refcount_type refs;
        std::uint16_t count;     // slots in use: children of an inner node, values of a leaf
        std::uint16_t capacity;  // slots allocated
        owner_t owner;

        node(unsigned cap, owner_t own) noexcept : refs(1), count(0), capacity(static_cast<std::uint16_t>(cap)), owner(own) {}
    };

    // Everything a vector is. Whoever holds a parts (a persistent or transient vector) holds one
    // reference to its root and one to its tail.
    //
    // Vectors move parts field by field (take_from), never as a whole struct: compilers copy a
    // whole struct with 16-byte loads, and when its fields were just written one by one (as an
    // update's result is), those loads cannot be forwarded from the pending 8-byte stores and
    // stall. The order of the fields keeps the two pointers apart, so that a field-by-field copy
    // is not merged back into wide loads either.
    struct parts {
        node* root = nullptr;  // null while every element fits in the tail
        size_type size = 0;
        node* tail = nullptr;  // null exactly when the vector is empty
        unsigned shift = 0;    // the root's level; 0 when the root is a leaf

        parts() noexcept = default;
        parts(node* r, node* t, size_type n, unsigned s) noexcept : root(r), size(n), tail(t), shift(s) {}
        parts(const parts& o) noexcept : root(o.root), size(o.size), tail(o.tail), shift(o.shift) {}
        parts& operator=(const parts& o) noexcept {
            root = o.root;
            size = o.size;
            tail = o.tail;
            shift = o.shift;
            return *this;
        }
        // Takes o's contents and leaves it empty.
        void take_from(parts& o) noexcept {
            *this = o;
            o.root = nullptr;
            o.size = 0;
            o.tail = nullptr;
            o.shift = 0;
        }
    };

    // The number of elements in the trie, i.e. the index of the tail's first element.
    static size_type tail_offset(size_type size) noexcept { return size == 0 ? 0 : (size - 1) & ~mask; }
    static unsigned tail_count(size_type size) noexcept { return static_cast<unsigned>(size - tail_offset(size)); }

    // Whether a trie of `tree_size` elements fills every slot its root's level offers.
    static bool trie_full(size_type tree_size, unsigned shift) noexcept {
        return shift + bits < sizeof(size_type) * 8 && tree_size == size_type(1) << (shift + bits);
    }

    // ---- layout -------------------------------------------------------------------------

    static constexpr std::size_t round_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }
    static constexpr std::size_t inner_header = round_up(sizeof(node), alignof(node*));
    // With lending, a leaf's header ends with its lender pointer (null for most leaves).
    static constexpr std::size_t lender_offset = inner_header;
    static constexpr std::size_t leaf_header =
        lending ? round_up(lender_offset + sizeof(node*), alignof(T)) : round_up(sizeof(node), alignof(T));
    static constexpr std::size_t inner_bytes(unsigned capacity) noexcept { return inner_header + capacity * sizeof(node*); }
    static constexpr std::size_t leaf_bytes(unsigned capacity) noexcept { return leaf_header + capacity * sizeof(T); }

    static node** children(node* n) noexcept { return reinterpret_cast<node**>(reinterpret_cast<char*>(n) + inner_header); }
    static node* const* children(const node* n) noexcept {
        return reinterpret_cast<node* const*>(reinterpret_cast<const char*>(n) + inner_header);
    }
    static T* values(node* n) noexcept { return reinterpret_cast<T*>(reinterpret_cast<char*>(n) + leaf_header); }
    static const T* values(const node* n) noexcept {
        return reinterpret_cast<const T*>(reinterpret_cast<const char*>(n) + leaf_header);
    }

    // The leaf whose values this leaf's first lender->count values are (it owns them); null
    // when the leaf owns all its values. Only with lending.
    static node*& lender_of(node* leaf) noexcept {
        static_assert(lending, "leaves have lenders only under a lending policy");
        return *reinterpret_cast<node**>(reinterpret_cast<char*>(leaf) + lender_offset);
    }
    static const node* lender_of(const node* leaf) noexcept { return lender_of(const_cast<node*>(leaf)); }
    // How many of a leaf's values are its lender's: the leaf owns values [borrowed, count).
    static unsigned borrowed(const node* leaf) noexcept {
        if constexpr (lending) {
            const node* lender = lender_of(leaf);
            return lender ? lender->count : 0;
        } else {
            return 0;
        }
    }

    // Persistent results get exactly the slots they use; a transient's nodes get room to grow.
    static unsigned capacity_for(unsigned count, owner_t owner) noexcept { return owner ? branches : count; }

    // ---- node lifetime ------------------------------------------------------------------

    static bool owned_by(const node* n, owner_t owner) noexcept { return owner != 0 && n->owner == owner; }

    static void retain(node* n) noexcept { n->refs.retain(); }

    // `shift` is the node's level: 0 for a leaf.
    static void release(node* n, unsigned shift) noexcept {
        if (n && n->refs.release()) destroy(n, shift);
    }

    static void destroy_value(T& v) noexcept {
        Policy::release(v);
        v.~T();
    }

    static void destroy(node* n, unsigned shift) noexcept {
        if (shift == 0) {
            T* vs = values(n);
            node* lender = nullptr;
            if constexpr (lending) lender = lender_of(n);
            // Borrowed values need no destructor (lending needs trivial ones) and no release.
            for (unsigned i = lender ? lender->count : 0, c = n->count; i < c; ++i) destroy_value(vs[i]);
            const std::size_t bytes = leaf_bytes(n->capacity);
            n->~node();
            Policy::deallocate(n, bytes);
            if (lender) release(lender, 0);  // a chain of at most lend_period nodes
        } else {
            node** cs = children(n);
            for (unsigned i = 0, c = n->count; i < c; ++i) release(cs[i], shift - bits);
            const std::size_t bytes = inner_bytes(n->capacity);
            n->~node();
            Policy::deallocate(n, bytes);
        }
    }

    // Holds one reference (often to a node under construction) until handed over.
    struct node_guard {
        node* n;
        unsigned shift;
        ~node_guard() { release(n, shift); }
        node* hand_over() noexcept {
            node* r = n;
            n = nullptr;
            return r;
        }
    };

    // ---- node construction --------------------------------------------------------------

    static node* new_leaf(unsigned capacity, owner_t owner) {
        node* n = new (Policy::allocate(leaf_bytes(capacity))) node(capacity, owner);
        if constexpr (lending) lender_of(n) = nullptr;
        return n;
    }

    // A new leaf (persistent, exact size) holding `tail`'s `count` values, bitwise and borrowed,
    // with room for one more. Only with lending, and only for a tail that owns its values or
    // whose chain of lenders is shorter than lend_period.
    static node* borrowing_leaf(node* tail, unsigned count) {
        assert(count == tail->count);
        node* n = new_leaf(count + 1, 0);
        std::memcpy(static_cast<void*>(values(n)), static_cast<const void*>(values(tail)), count * sizeof(T));
        retain(tail);
        lender_of(n) = tail;
        n->count = static_cast<std::uint16_t>(count);
        return n;
    }
    static node* new_inner(unsigned capacity, owner_t owner) {
        return new (Policy::allocate(inner_bytes(capacity))) node(capacity, owner);
    }

    // Appends a copy of `v` to a leaf with room. If the copy throws, the leaf is unchanged.
    static void append_value(node* leaf, const T& v) { append_value_at(leaf, leaf->count, v); }
    // The same, for a caller that knows the leaf's count: no load of it.
    static void append_value_at(node* leaf, unsigned count, const T& v) {
        assert(count == leaf->count && count < leaf->capacity);
        T* slot = new (values(leaf) + count) T(v);
        Policy::retain(*slot);
        leaf->count = static_cast<std::uint16_t>(count + 1);
    }
    static void append_values(node* leaf, const T* from, unsigned count) {
        assert(leaf->count + count <= leaf->capacity);
        if constexpr (std::is_trivially_copyable<T>::value) {
            // A plain loop: compilers turn it into a memcpy call, where an explicit memcpy of
            // a variable length may be expanded inline as `rep movs`, slow to start for the
            // short copies made here.
            T* to = values(leaf) + leaf->count;
            for (unsigned i = 0; i < count; ++i) new (to + i) T(from[i]);
            for (unsigned i = 0; i < count; ++i) Policy::retain(to[i]);
            leaf->count = static_cast<std::uint16_t>(leaf->count + count);
        } else {
            for (unsigned i = 0; i < count; ++i) append_value(leaf, from[i]);
        }
    }
    // Takes over a reference the caller holds.
    static void adopt_child(node* inner, node* child) noexcept {
        assert(inner->count < inner->capacity);
        children(inner)[inner->count++] = child;
    }
    static void share_children(node* inner, node* const* from, unsigned count) noexcept {
        for (unsigned i = 0; i < count; ++i) {
            retain(from[i]);
            adopt_child(inner, from[i]);
        }
    }

    // A new leaf holding copies of `count` values of `src` and room for `capacity`.
    static node* copy_leaf(const node* src, unsigned count, unsigned capacity, owner_t owner) {
        node_guard g{new_leaf(capacity, owner), 0};
        append_values(g.n, values(src), count);
        return g.hand_over();
    }

    // A new leaf holding one copy of `v`.
    static node* single_leaf(const T& v, unsigned capacity, owner_t owner) {
        node_guard g{new_leaf(capacity, owner), 0};
        append_value(g.n, v);
        return g.hand_over();
    }

    // The leaf of the trie under `n` (at `shift`) that holds element i.
    static const node* descend(const node* n, unsigned shift, size_type i) noexcept {
        for (; shift > 0; shift -= bits) n = children(n)[(i >> shift) & mask];
        return n;
    }

    // The leaf (a trie leaf or the tail) that holds element i < p.size.
    static const node* leaf_for(const parts& p, size_type i) noexcept {
        if (i >= tail_offset(p.size)) return p.tail;
        return descend(p.root, p.shift, i);
    }

    // ---- updates ------------------------------------------------------------------------
    //
    // The node functions below return the node that takes n's place: n itself when nothing
    // changed or n was edited in place (it is owned by `owner`), otherwise a new reference. They
    // never consume n: the caller keeps its reference and drops it if a different node came back.
    // With owner 0 nothing is owned and every change is a copy.

    // `n` (an inner node at `shift`) with slot `slot` holding `child`, a new reference that is
    // taken in every case: the child there is replaced, or `child` is appended when slot ==
    // n->count.
    static node* with_child(node* n, unsigned shift, unsigned slot, node* child, owner_t owner) {
        node_guard g{child, shift - bits};
        const unsigned count = n->count;
        if (owned_by(n, owner)) {
            if (slot < count) {
                node* old = children(n)[slot];
                assert(!owned_by(old, owner));  // an owned child would have been edited in place
                children(n)[slot] = g.hand_over();
                release(old, shift - bits);
            } else {
                adopt_child(n, g.hand_over());
            }
            return n;
        }
        const unsigned new_count = slot < count ? count : count + 1;
        node* copy = new_inner(capacity_for(new_count, owner), owner);
        share_children(copy, children(n), slot);
        adopt_child(copy, g.hand_over());
        if (slot + 1 < count) share_children(copy, children(n) + slot + 1, count - slot - 1);
        return copy;
    }

    // `leaf` (of `count` values) with slot `slot` holding a copy of `v`.
    static node* with_value(node* leaf, unsigned slot, const T& v, owner_t owner) {
        T* vs = values(leaf);
        if (Policy::same_value(vs[slot], v)) return leaf;
        if (owned_by(leaf, owner)) {
            T fresh(v);
            Policy::retain(fresh);
            using std::swap;
            swap(vs[slot], fresh);
            Policy::release(fresh);
            return leaf;
        }
        const unsigned count = leaf->count;
        node_guard g{new_leaf(capacity_for(count, owner), owner), 0};
        append_values(g.n, vs, slot);
        append_value(g.n, v);
        append_values(g.n, vs + slot + 1, count - slot - 1);
        return g.hand_over();
    }

    // Element i of the subtree `n` at `shift` set to `v`.
    static node* assoc(node* n, unsigned shift, size_type i, const T& v, owner_t owner) {
        if (shift == 0) return with_value(n, static_cast<unsigned>(i & mask), v, owner);
        const unsigned slot = static_cast<unsigned>((i >> shift) & mask);
        node* child = children(n)[slot];
        node* updated = assoc(child, shift - bits, i, v, owner);
        if (updated == child) return n;
        return with_child(n, shift, slot, updated, owner);
    }

    // A chain of single-child inner nodes from `shift` down to `leaf` (shared).
    static node* new_path(unsigned shift, node* leaf, owner_t owner) {
        if (shift == 0) {
            retain(leaf);
            return leaf;
        }
        node_guard below{new_path(shift - bits, leaf, owner), shift - bits};
        node* n = new_inner(capacity_for(1, owner), owner);
        adopt_child(n, below.hand_over());
        return n;
    }

    // The subtree `n` at shift >= 5, not full, with `leaf` (shared) added as the leaf of
    // elements [index, index + 32).
    static node* push_tail(node* n, unsigned shift, size_type index, node* leaf, owner_t owner) {
        const unsigned slot = static_cast<unsigned>((index >> shift) & mask);
        if (slot < n->count) {  // the last child has room
            node* child = children(n)[slot];
            node* updated = push_tail(child, shift - bits, index, leaf, owner);
            if (updated == child) return n;
            return with_child(n, shift, slot, updated, owner);
        }
        return with_child(n, shift, slot, new_path(shift - bits, leaf, owner), owner);
    }

    // The trie (root, shift) of `tree_size` elements with `leaf` (shared) appended. Returns the
    // root that takes `root`'s place and updates `shift` when the trie grows a level.
    static node* push_leaf(node* root, unsigned& shift, size_type tree_size, node* leaf, owner_t owner) {
        if (!root) {
            retain(leaf);
            return leaf;
        }
        if (trie_full(tree_size, shift)) {
            node_guard path{new_path(shift, leaf, owner), shift};
            node* top = new_inner(capacity_for(2, owner), owner);
            retain(root);
            adopt_child(top, root);
            adopt_child(top, path.hand_over());
            shift += bits;
            return top;
        }
        return push_tail(root, shift, tree_size, leaf, owner);
    }

    // The subtree `n` at shift >= 5 without its last leaf, whose last element is `last`; nullptr
    // when that leaf was all it held.
    static node* pop_tail(node* n, unsigned shift, size_type last, owner_t owner) {
        const unsigned slot = static_cast<unsigned>((last >> shift) & mask);
        assert(slot + 1 == n->count);
        if (shift > bits) {
            node* child = children(n)[slot];
            node* updated = pop_tail(child, shift - bits, last, owner);
            if (updated == child) return n;
            if (updated) return with_child(n, shift, slot, updated, owner);
        }
        // The last child goes.
        if (slot == 0) return nullptr;
        if (owned_by(n, owner)) {
            node* gone = children(n)[--n->count];
            release(gone, shift - bits);
            return n;
        }
        node* copy = new_inner(capacity_for(slot, owner), owner);
        share_children(copy, children(n), slot);
        return copy;
    }

    // Replaces a root with a single child by that child, as often as needed, keeping the trie
    // as low as its size allows. `r` is what took `root`'s place: an intermediate node made
    // here is released, `root` itself is left to the caller.
    static node* collapse(node* r, node* root, unsigned& shift) noexcept {
        while (shift > 0 && r->count == 1) {
            node* only = children(r)[0];
            retain(only);
            if (r != root) release(r, shift);
            r = only;
            shift -= bits;
        }
        return r;
    }

    // The trie (root, shift) without its last leaf, whose last element is `last`: the new root
    // (nullptr once empty), with `shift` updated.
    static node* pop_leaf(node* root, unsigned& shift, size_type last, owner_t owner) {
        if (shift == 0) return nullptr;
        node* r = pop_tail(root, shift, last, owner);
        assert(r);  // a root at shift >= 5 has at least two children
        return collapse(r, root, shift);
    }

    // The first elements of the subtree `n` at `shift`, up to `last` (the end of a leaf), as a
    // new reference. Subtrees kept whole are shared.
    static node* trim(node* n, unsigned shift, size_type last) {
        if (shift == 0) {
            retain(n);
            return n;
        }
        const unsigned slot = static_cast<unsigned>((last >> shift) & mask);
        node* child = children(n)[slot];
        node_guard kept{trim(child, shift - bits, last), shift - bits};
        if (kept.n == child && slot + 1 == n->count) {
            retain(n);
            return n;
        }
        node* copy = new_inner(slot + 1, 0);
        share_children(copy, children(n), slot);
        adopt_child(copy, kept.hand_over());
        return copy;
    }

    // ---- persistent operations: a new parts holding new references; `p` is left as it was ----

    // `out` is empty on entry; it receives references of its own.
    static void push_back(const parts& p, const T& v, parts& out) {
        if (!p.tail) {
            out.tail = single_leaf(v, 1, 0);
            out.size = 1;
            return;
        }
        const size_type tree_size = tail_offset(p.size);
        const unsigned count = static_cast<unsigned>(p.size - tree_size);
        if (count < branches) {
            node_guard tail{nullptr, 0};
            if constexpr (lending) {
                tail.n = (count + 1) % lend_period != 0 ? borrowing_leaf(p.tail, count) : copy_leaf(p.tail, count, count + 1, 0);
            } else {
                tail.n = copy_leaf(p.tail, count, count + 1, 0);
            }
            append_value(tail.n, v);
            if (p.root) retain(p.root);
            out.root = p.root;
            out.shift = p.shift;
            out.tail = tail.hand_over();
            out.size = p.size + 1;
            return;
        }
        node_guard tail{single_leaf(v, 1, 0), 0};
        assert(borrowed(p.tail) == 0);  // the trie's leaves own their values
        unsigned shift = p.shift;
        out.root = push_leaf(p.root, shift, tree_size, p.tail, 0);
        out.shift = shift;
        out.tail = tail.hand_over();
        out.size = p.size + 1;
    }

    static void pop_back(const parts& p, parts& out) {
        assert(p.size > 0);
        if (p.size == 1) return;
        const size_type tree_size = tail_offset(p.size);
        const unsigned count = static_cast<unsigned>(p.size - tree_size);
        if (count > 1) {
            out.tail = copy_leaf(p.tail, count - 1, count - 1, 0);
            if (p.root) retain(p.root);
            out.root = p.root;
            out.shift = p.shift;
            out.size = p.size - 1;
            return;
        }
        // The trie's last leaf becomes the tail.
        node* leaf = const_cast<node*>(leaf_for(p, tree_size - 1));
        retain(leaf);
        node_guard tail{leaf, 0};
        unsigned shift = p.shift;
        out.root = pop_leaf(p.root, shift, tree_size - 1, 0);
        out.shift = shift;
        out.tail = tail.hand_over();
        out.size = p.size - 1;
    }

    // The first n elements, 0 < n < p.size.
    static void take(const parts& p, size_type n, parts& out) {
        assert(n > 0 && n < p.size);
        const size_type old_tree = tail_offset(p.size);
        if (n > old_tree) {  // the trie stays, the tail shrinks
            out.tail = copy_leaf(p.tail, static_cast<unsigned>(n - old_tree), static_cast<unsigned>(n - old_tree), 0);
            if (p.root) retain(p.root);
            out.root = p.root;
            out.shift = p.shift;
            out.size = n;
            return;
        }
        const size_type tree = tail_offset(n);
        const unsigned count = static_cast<unsigned>(n - tree);
        node* leaf = const_cast<node*>(leaf_for(p, n - 1));
        node_guard tail{nullptr, 0};
        if (count == branches) {
            retain(leaf);
            tail.n = leaf;
        } else {
            tail.n = copy_leaf(leaf, count, count, 0);
        }
        if (tree > 0) {
            unsigned shift = p.shift;
            // Every node collapse() passes over is a reference of ours (root: nullptr).
            out.root = collapse(trim(p.root, shift, tree - 1), nullptr, shift);
            out.shift = shift;
        }
        out.tail = tail.hand_over();
        out.size = n;
    }

    static void release_parts(const parts& p) noexcept {
        release(p.root, p.shift);
        release(p.tail, 0);
    }

    static void retain_parts(const parts& p) noexcept {
        if (p.root) retain(p.root);
        if (p.tail) retain(p.tail);
    }

    // ---- equality -----------------------------------------------------------------------

    template <class Equal>
    static bool equal_values(const T* a, const T* b, unsigned count, Equal& eq) {
        for (unsigned i = 0; i < count; ++i) {
            if (!static_cast<bool>(eq(a[i], b[i]))) return false;
        }
        return true;
    }

    template <class Equal>
    static bool equal_nodes(const node* a, const node* b, unsigned shift, Equal& eq) {
        if (a == b) return true;
        assert(a->count == b->count);
        if (shift == 0) return equal_values(values(a), values(b), a->count, eq);
        node* const* ca = children(a);
        node* const* cb = children(b);
        for (unsigned i = 0, c = a->count; i < c; ++i) {
            if (!equal_nodes(ca[i], cb[i], shift - bits, eq)) return false;
        }
        return true;
    }

    // In index order; vectors of equal sizes have equal shapes.
    template <class Equal>
    static bool equal(const parts& a, const parts& b, Equal& eq) {
        if (a.size != b.size) return false;
        if (a.root != b.root) {
            assert(a.shift == b.shift);
            if (!equal_nodes(a.root, b.root, a.shift, eq)) return false;
        }
        if (a.tail == b.tail) return true;
        return equal_values(values(a.tail), values(b.tail), tail_count(a.size), eq);
    }
};

// Iteration in index order, one leaf array at a time: each step is an increment and a compare,
// and only the step onto the next leaf descends the trie (O(depth) once per 32 elements).
template <class Trie>
class vector_iterator {
    using node = typename Trie::node;
    using parts = typename Trie::parts;
    using size_type = typename Trie::size_type;

public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = typename Trie::value_type;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    vector_iterator() noexcept = default;  // the end

    // At element `index` (the end if index >= size).
    vector_iterator(const parts& p, size_type index) noexcept
        : root_(p.root), tail_(p.tail), size_(p.size), shift_(p.shift) {
        load(index);
    }

    reference operator*() const noexcept { return *current_; }
    pointer operator->() const noexcept { return current_; }

    vector_iterator& operator++() noexcept {
        if (++current_ == end_) load(next_);
        return *this;
    }
    vector_iterator operator++(int) noexcept {
        vector_iterator old = *this;
        ++*this;
        return old;
    }

    // Every element has its own address, so comparing positions needs no index.
    bool operator==(const vector_iterator& other) const noexcept { return current_ == other.current_; }
    bool operator!=(const vector_iterator& other) const noexcept { return current_ != other.current_; }

private:
    void load(size_type i) noexcept {
        if (i >= size_) {
            current_ = end_ = nullptr;
            return;
        }
        const parts p{const_cast<node*>(root_), const_cast<node*>(tail_), size_, shift_};
        const value_type* leaf = Trie::values(Trie::leaf_for(p, i));
        const size_type leaf_start = i & ~Trie::mask;
        const size_type leaf_end = leaf_start + Trie::branches < size_ ? leaf_start + Trie::branches : size_;
        current_ = leaf + (i - leaf_start);
        end_ = leaf + (leaf_end - leaf_start);
        next_ = leaf_end;
    }

    const node* root_ = nullptr;
    const node* tail_ = nullptr;
    size_type size_ = 0;
    unsigned shift_ = 0;
    const value_type* current_ = nullptr;
    const value_type* end_ = nullptr;
    size_type next_ = 0;  // the index just past end_
};

}  // namespace detail
}  // namespace pypersistent
