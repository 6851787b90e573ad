// persistent_sorted_map: an immutable map ordered by a comparator, and the persistent B+-tree
// behind it and transient_sorted_map (transient_sorted_map.hpp). Every update returns a new map
// that shares all untouched nodes with the old one; the old one never changes. Lookups, updates,
// floor/ceiling searches are O(log n); iteration is in key order, both ways.
//
// Layout. A B+-tree: every entry (key and value) lives in a *leaf*, in ascending key order;
// *inner* nodes hold only child pointers and separator keys. An inner node with c children holds
// c - 1 separators, and separator j is a copy of the smallest key of child j + 1: the invariant
// is kept structurally (every rebuilt separator is copied from the first key of the subtree it
// stands for), never from comparisons, so a separator is always a copy of a key that is in the
// map. No deleted key lingers in an inner node (for Python keys: no object is kept alive by a
// map that no longer contains it). Lookups therefore go to child #{separators <= key}.
//
// Why a B+-tree rather than a B-tree with entries in inner nodes: leaves are plain sorted arrays,
// so iteration (forward and backward) is a pointer increment inside a leaf and one short climb
// per leaf, erase never has to pull a predecessor up from a leaf, and every node kind is rebuilt
// by the same few routines. The price, one extra key copy per ~24 entries, is small.
//
// Width. Leaves hold up to 32 entries and inner nodes up to 32 children; every node but the root
// holds at least 16 (a split of 33 makes 16 + 17; an erase that leaves 15 merges with a sibling,
// or redistributes evenly when the two hold more than 32). The root leaf holds 1..32 entries, an
// inner root 2..32 children. 32 balances the two costs of a persistent tree: a path copy copies
// O(width * height) slots (so wider is slower to update), while lookups cost one cache-missing
// node per level (so narrower is slower to read); comparisons are ~log2(n) either way. With 32,
// a map of a million entries is 4-5 levels deep and an update copies about 100 slots.
//
// Nodes. One allocation each: a header (reference count, count, capacity, owner token) then, for
// a leaf, its entries; for an inner node, its child pointers and then its separators. Persistent
// operations allocate exactly the slots they fill; a transient gives its nodes room for 32, so
// that it can insert in place.
//
// Sharing and ownership, as in champ.hpp and vector_trie.hpp. Published nodes are immutable and
// shared; their reference count is the number of parents and roots pointing at them. A transient
// edits a node in place only when the node carries its current owner token. Ownership only
// spreads downwards (an owned node is created under an owned parent), so the owned nodes form a
// connected top part of the tree; freezing (taking a new token) makes them immutable in O(1).
//
// Hostile comparators. Compare may throw, and may answer inconsistently (Python's `<`). Every
// comparison happens on the way down, in a search that only ever narrows an index range inside
// one node (or in Compare's own search of a node, see has_node_search, which answers a slot in
// the node's bounds), so whatever Compare answers, the chosen slot is in bounds; it decides
// *where* an entry goes and whether the key was found, and nothing else. Everything after the
// descent (copies, splits, merges, separators, sizes) is computed from the structure alone,
// without comparisons.
// An inconsistent comparator can therefore only put entries "out of order" (lookups may then
// miss them, an insert may add an equivalent key twice); the tree stays a valid B+-tree, size()
// stays the number of entries, and iteration visits each entry once.
//
// Exceptions. Compare, copying keys and values, Policy::same_value and allocation may throw;
// every operation gives the strong guarantee. Comparisons all happen before anything is built.
// New nodes are built bottom-up, each one complete before it is linked, and a node under
// construction counts exactly the slots it has filled, so dropping it undoes them. A transient
// edits at most one node in place per operation, after everything that can throw: either the
// leaf (the new entry or value is copied into a temporary first, then moved in) or the lowest
// owned ancestor whose only change is a child pointer (and possibly the separator before it,
// copied first). Above an in-place edit nothing changes, because in-place edits are only chosen
// when the node keeps its slot count within bounds and its smallest key (or nobody above stores
// that key). Any other change to an owned node builds a replacement (owned by the transient)
// and releases the old node once the replacement is linked.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "policy.hpp"

namespace pypersistent {
namespace detail {

// An entry of a sorted map: .first is the key, .second the value (like std::map's value_type).
template <class K, class V>
struct sorted_entry {
    K first;
    V second;
    sorted_entry(const K& k, const V& v) : first(k), second(v) {}
    sorted_entry(sorted_entry&&) noexcept = default;
    sorted_entry(const sorted_entry&) = default;
    sorted_entry& operator=(const sorted_entry&) = delete;
    sorted_entry& operator=(sorted_entry&&) = delete;
};

// Whether Compare offers a search of its own over a node's keys:
//     template <bool Upper>
//     static bool node_bound(const char* first, std::size_t stride, unsigned n, const K& key,
//                            unsigned& pos) noexcept;
// over the n keys at first, first + stride, ..., in order: it either sets pos to the number of
// them less than `key` (Upper: not greater than `key`) and returns true, or returns false and the
// tree's binary search decides. It may look at any of the n keys, and answers from them alone;
// for a node whose keys are out of order (an inconsistent Compare put them there) any pos in
// 0..n will do, as for the binary search. PersistentSortedDict's comparator has one: a
// search without a jump on any answer, for the keys whose inline bytes decide.
template <class Compare, class K, class = void>
struct has_node_search : std::false_type {};
template <class Compare, class K>
struct has_node_search<Compare, K,
                       std::void_t<decltype(Compare::template node_bound<false>(
                           std::declval<const char*>(), std::size_t{}, 0u, std::declval<const K&>(),
                           std::declval<unsigned&>()))>> : std::true_type {};

template <class K, class V, class Compare, class Policy>
struct sorted_btree {
    using entry_type = sorted_entry<K, V>;
    using refcount_type = typename Policy::refcount;
    using size_type = std::size_t;

    static_assert(std::is_nothrow_move_constructible<K>::value && std::is_nothrow_move_constructible<V>::value,
                  "keys and values must be nothrow move constructible: transients shift them in place");
    static_assert(std::is_nothrow_swappable<K>::value && std::is_nothrow_swappable<V>::value,
                  "keys and values must be nothrow swappable: transients replace them in place by swapping");
    static_assert(alignof(entry_type) <= alignof(std::max_align_t), "over-aligned keys or values are not supported");

    static constexpr unsigned max_slots = 32;
    static constexpr unsigned min_slots = max_slots / 2;
    // Levels above the leaves. Every non-root inner node has >= 16 children, so a tree of height
    // h holds at least 2 * 16^(h-1) entries; 24 levels are out of reach of any memory.
    static constexpr unsigned max_height = 24;

    struct node {
        refcount_type refs;
        std::uint16_t count;     // entries of a leaf, children of an inner node
        std::uint16_t capacity;  // slots allocated
        owner_t owner;
        node(unsigned cap, owner_t own) noexcept : refs(1), count(0), capacity(static_cast<std::uint16_t>(cap)), owner(own) {}
    };

    // A whole tree as a map holds it: one reference to the root (null when empty).
    struct tree {
        node* root = nullptr;
        size_type size = 0;
        unsigned height = 0;  // levels above the leaves; 0 when the root is a leaf
    };

    // ---- layout -------------------------------------------------------------------------

    static constexpr std::size_t round_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }
    static constexpr std::size_t leaf_header = round_up(sizeof(node), alignof(entry_type));
    static constexpr std::size_t inner_header = round_up(sizeof(node), alignof(node*));
    static constexpr std::size_t seps_offset(unsigned capacity) noexcept {
        return round_up(inner_header + capacity * sizeof(node*), alignof(K));
    }
    static constexpr std::size_t leaf_bytes(unsigned capacity) noexcept { return leaf_header + capacity * sizeof(entry_type); }
    static constexpr std::size_t inner_bytes(unsigned capacity) noexcept {
        return seps_offset(capacity) + (capacity - 1) * sizeof(K);
    }

    static constexpr std::size_t max_node_bytes =
        leaf_bytes(max_slots) > inner_bytes(max_slots) ? leaf_bytes(max_slots) : inner_bytes(max_slots);

    static entry_type* entries(node* n) noexcept { return reinterpret_cast<entry_type*>(reinterpret_cast<char*>(n) + leaf_header); }
    static const entry_type* entries(const node* n) noexcept {
        return reinterpret_cast<const entry_type*>(reinterpret_cast<const char*>(n) + leaf_header);
    }
    static node** children(node* n) noexcept { return reinterpret_cast<node**>(reinterpret_cast<char*>(n) + inner_header); }
    static node* const* children(const node* n) noexcept {
        return reinterpret_cast<node* const*>(reinterpret_cast<const char*>(n) + inner_header);
    }
    static K* seps(node* n) noexcept { return reinterpret_cast<K*>(reinterpret_cast<char*>(n) + seps_offset(n->capacity)); }
    static const K* seps(const node* n) noexcept {
        return reinterpret_cast<const K*>(reinterpret_cast<const char*>(n) + seps_offset(n->capacity));
    }

    static unsigned capacity_for(unsigned count, owner_t owner) noexcept { return owner ? max_slots : count; }

    // ---- node lifetime ------------------------------------------------------------------

    static bool owned_by(const node* n, owner_t owner) noexcept { return owner != 0 && n->owner == owner; }
    static void retain(node* n) noexcept { n->refs.retain(); }
    // `height` is the node's level: 0 for a leaf.
    static void release(node* n, unsigned height) noexcept {
        if (n && n->refs.release()) destroy(n, height);
    }
    static void destroy_entry(entry_type& e) noexcept {
        Policy::release(e.first);
        Policy::release(e.second);
        e.~entry_type();
    }
    static void destroy_key(K& k) noexcept {
        Policy::release(k);
        k.~K();
    }
    static void destroy(node* n, unsigned height) noexcept {
        const unsigned c = n->count;
        std::size_t bytes;
        if (height == 0) {
            entry_type* es = entries(n);
            for (unsigned i = 0; i < c; ++i) destroy_entry(es[i]);
            bytes = leaf_bytes(n->capacity);
        } else {
            node** cs = children(n);
            K* ks = seps(n);
            for (unsigned i = 0; i + 1 < c; ++i) destroy_key(ks[i]);
            for (unsigned i = 0; i < c; ++i) release(cs[i], height - 1);
            bytes = inner_bytes(n->capacity);
        }
        n->~node();
        Policy::deallocate(n, bytes);
    }

    // Holds one reference until handed over.
    struct node_guard {
        node* n = nullptr;
        unsigned height = 0;
        node_guard() noexcept = default;
        node_guard(node* p, unsigned h) noexcept : n(p), height(h) {}
        node_guard(const node_guard&) = delete;
        node_guard& operator=(const node_guard&) = delete;
        ~node_guard() { release(n, height); }
        node* hand_over() noexcept {
            node* r = n;
            n = nullptr;
            return r;
        }
        // Holds `p` instead, dropping the reference held so far.
        void reset(node* p, unsigned h) noexcept {
            node* old = n;
            const unsigned old_height = height;
            n = p;
            height = h;
            release(old, old_height);
        }
    };

    // The result of rebuilding one level: the node(s) that take the old node's place (b only
    // after a split), as new references, and whether the subtree's smallest key changed.
    struct change {
        node_guard a, b;
        bool min_changed = false;
    };

    // ---- node construction --------------------------------------------------------------

    // A node being filled slot by slot; its count is always the number of constructed slots
    // (for an inner node: children, with one separator fewer), so destroy() undoes a partial one.
    struct builder {
        node* n;
        unsigned height;
        builder(unsigned capacity, unsigned h, owner_t owner) : height(h) {
            const std::size_t bytes = h == 0 ? leaf_bytes(capacity) : inner_bytes(capacity);
            n = new (Policy::allocate(bytes)) node(capacity, owner);
        }
        builder(const builder&) = delete;
        builder& operator=(const builder&) = delete;
        ~builder() {
            if (n) destroy(n, height);
        }
        void add_entry(const K& k, const V& v) {
            assert(height == 0 && n->count < n->capacity);
            entry_type* e = new (entries(n) + n->count) entry_type(k, v);
            Policy::retain(e->first);
            Policy::retain(e->second);
            ++n->count;
        }
        // A child after its separator (none for the first child). `fresh` holds the child's
        // reference to hand over; without it the child is shared (retained).
        void add_child(const K* sep, node* child, node_guard* fresh) {
            assert(height > 0 && n->count < n->capacity);
            if (n->count > 0) {
                K* k = new (seps(n) + (n->count - 1)) K(*sep);  // the only step that may throw
                Policy::retain(*k);
            }
            if (fresh) {
                children(n)[n->count] = fresh->hand_over();
            } else {
                retain(child);
                children(n)[n->count] = child;
            }
            ++n->count;
        }
        node* finish() noexcept {
            node* r = n;
            n = nullptr;
            return r;
        }
    };

    // The smallest key of a (non-empty) subtree.
    static const K& leftmost_key(const node* n, unsigned height) noexcept {
        for (; height > 0; --height) n = children(n)[0];
        return entries(n)[0].first;
    }

    // Slots of a leaf to be built: copies of (*k, *v).
    struct leaf_item {
        const K* k;
        const V* v;
    };
    // Slots of an inner node to be built: a child, the separator before it (ignored for a node's
    // first child), and the guard holding it when it is a new reference (else it is shared).
    struct inner_item {
        node* child;
        const K* sep;
        node_guard* fresh;
    };

    static node* make_leaf(const leaf_item* items, unsigned count, owner_t owner) {
        builder b(capacity_for(count, owner), 0, owner);
        for (unsigned i = 0; i < count; ++i) b.add_entry(*items[i].k, *items[i].v);
        return b.finish();
    }
    static node* make_inner(unsigned height, const inner_item* items, unsigned count, owner_t owner) {
        builder b(capacity_for(count, owner), height, owner);
        for (unsigned i = 0; i < count; ++i) b.add_child(items[i].sep, items[i].child, items[i].fresh);
        return b.finish();
    }
    // One node, or two halves when the items overflow one.
    static void build_leaves(const leaf_item* items, unsigned count, owner_t owner, change& out) {
        assert(count >= 1 && count <= 2 * max_slots);
        out.a.height = out.b.height = 0;
        if (count <= max_slots) {
            out.a.n = make_leaf(items, count, owner);
            return;
        }
        const unsigned half = count / 2;
        out.a.n = make_leaf(items, half, owner);
        out.b.n = make_leaf(items + half, count - half, owner);
    }
    static void build_inners(unsigned height, const inner_item* items, unsigned count, owner_t owner, change& out) {
        assert(count >= 1 && count <= 2 * max_slots);
        out.a.height = out.b.height = height;
        if (count <= max_slots) {
            out.a.n = make_inner(height, items, count, owner);
            return;
        }
        const unsigned half = count / 2;
        out.a.n = make_inner(height, items, half, owner);
        out.b.n = make_inner(height, items + half, count - half, owner);
    }

    // Appends the items of a whole node (leaf: entries; inner: children, shared).
    static unsigned leaf_items_of(const node* n, leaf_item* out) noexcept {
        const entry_type* es = entries(n);
        for (unsigned i = 0, c = n->count; i < c; ++i) out[i] = leaf_item{&es[i].first, &es[i].second};
        return n->count;
    }
    static unsigned inner_items_of(node* n, unsigned height, inner_item* out) noexcept {
        node* const* cs = children(n);
        const K* ks = seps(n);
        for (unsigned i = 0, c = n->count; i < c; ++i) {
            out[i] = inner_item{cs[i], i ? &ks[i - 1] : &leftmost_key(cs[0], height - 1), nullptr};
        }
        return n->count;
    }

    // Inner node `p` (at `height`) with children [from, to) replaced by the node(s) of `sub`.
    static void rebuild_inner(node* p, unsigned height, unsigned from, unsigned to, change& sub, owner_t owner,
                              change& out) {
        inner_item items[2 * max_slots];
        unsigned n = 0;
        node* const* cs = children(p);
        const K* ks = seps(p);
        for (unsigned j = 0; j < from; ++j) items[n++] = inner_item{cs[j], j ? &ks[j - 1] : nullptr, nullptr};
        items[n++] = inner_item{sub.a.n, &leftmost_key(sub.a.n, height - 1), &sub.a};
        if (sub.b.n) items[n++] = inner_item{sub.b.n, &leftmost_key(sub.b.n, height - 1), &sub.b};
        for (unsigned j = to, c = p->count; j < c; ++j) items[n++] = inner_item{cs[j], &ks[j - 1], nullptr};
        build_inners(height, items, n, owner, out);
    }

    // ---- bulk building ------------------------------------------------------------------

    // The nodes of one level of a bulk build; whatever is still held is released on failure.
    struct level_nodes {
        std::vector<node*> nodes;
        unsigned height = 0;
        level_nodes() = default;
        level_nodes(const level_nodes&) = delete;
        level_nodes& operator=(const level_nodes&) = delete;
        ~level_nodes() {
            for (node* n : nodes) release(n, height);
        }
    };

    // A tree of the `count` entries read in order from `first` (each with .first and .second),
    // whose keys are taken to ascend: nothing is compared. Bottom-up, level by level, the
    // entries (then the children) spread evenly over as few nodes as hold them, so every node
    // but the root holds 16..32 slots: O(count) copies, no comparison. Strong guarantee: a copy
    // or allocation that throws releases everything built so far.
    template <class It>
    static tree build_sorted(It first, size_type count, owner_t owner) {
        tree out;
        if (count == 0) return out;
        level_nodes level;
        {
            const size_type leaves = (count + max_slots - 1) / max_slots;
            level.nodes.reserve(leaves);
            const size_type base = count / leaves, extra = count % leaves;
            for (size_type i = 0; i < leaves; ++i) {
                const unsigned c = static_cast<unsigned>(base + (i < extra ? 1 : 0));
                builder b(capacity_for(c, owner), 0, owner);
                for (unsigned j = 0; j < c; ++j, ++first) b.add_entry(first->first, first->second);
                level.nodes.push_back(b.finish());  // reserved: cannot throw
            }
        }
        unsigned h = 0;
        while (level.nodes.size() > 1) {
            if (h + 1 > max_height) throw std::length_error("pypersistent::sorted_map: tree too deep");
            const size_type c = level.nodes.size();
            const size_type parents = (c + max_slots - 1) / max_slots;
            level_nodes up;
            up.height = h + 1;
            up.nodes.reserve(parents);
            const size_type base = c / parents, extra = c % parents;
            size_type next = 0;
            for (size_type i = 0; i < parents; ++i) {
                const unsigned k = static_cast<unsigned>(base + (i < extra ? 1 : 0));
                builder b(capacity_for(k, owner), h + 1, owner);
                for (unsigned j = 0; j < k; ++j, ++next) {
                    node_guard child(level.nodes[next], h);  // the level's reference, handed to b
                    level.nodes[next] = nullptr;
                    b.add_child(&leftmost_key(child.n, h), child.n, &child);
                }
                up.nodes.push_back(b.finish());
            }
            level.nodes.swap(up.nodes);  // `up` keeps the emptied level's slots: all null
            level.height = ++h;
        }
        out.root = level.nodes[0];
        level.nodes.clear();
        out.height = h;
        out.size = count;
        return out;
    }

    // ---- slicing: a range of a tree as a tree sharing everything wholly inside it ------------
    //
    // A piece is a tree held by one reference (n null when empty), every node of which but the
    // root holds 16..32 slots; its root holds >= 1 entry (a leaf) or >= 2 children. Pieces are
    // joined (every key of the first before every key of the second) along the spine of the
    // taller one, as in a B-tree join, rebuilding only the nodes on that spine. Nothing here
    // compares keys.
    using piece = node_guard;

    // Two nodes of one level side by side, as new references: both as they are when each
    // holds >= 16 slots, else their slots merged into one node, or evened out over two.
    static void join_level(node* x, node* y, unsigned h, change& out) {
        if (x->count >= min_slots && y->count >= min_slots) {
            retain(x);
            out.a.reset(x, h);
            retain(y);
            out.b.reset(y, h);
            return;
        }
        if (h == 0) {
            leaf_item items[2 * max_slots];
            unsigned n = leaf_items_of(x, items);
            n += leaf_items_of(y, items + n);
            build_leaves(items, n, 0, out);
        } else {
            inner_item items[2 * max_slots];
            unsigned n = inner_items_of(x, h, items);
            n += inner_items_of(y, h, items + n);
            build_inners(h, items, n, 0, out);
        }
    }
    // Subtree `n` (level h, above b's) with piece b after its last entry: 1 or 2 nodes of level h.
    static void join_right(node* n, unsigned h, const piece& b, change& out) {
        const unsigned last = n->count - 1u;
        node* c = children(n)[last];
        change sub;
        if (h - 1 == b.height) {
            join_level(c, b.n, h - 1, sub);
        } else {
            join_right(c, h - 1, b, sub);
        }
        rebuild_inner(n, h, last, last + 1, sub, 0, out);
    }
    // Piece a before subtree `n` (level h, above a's): 1 or 2 nodes of level h.
    static void join_left(const piece& a, node* n, unsigned h, change& out) {
        node* c = children(n)[0];
        change sub;
        if (h - 1 == a.height) {
            join_level(a.n, c, h - 1, sub);
        } else {
            join_left(a, c, h - 1, sub);
        }
        rebuild_inner(n, h, 0, 1, sub, 0, out);
    }
    // a then b, into a; b ends empty.
    static void join(piece& a, piece& b) {
        if (!b.n) return;
        if (!a.n) {
            const unsigned h = b.height;
            a.reset(b.hand_over(), h);
            return;
        }
        change c;
        unsigned h;
        if (a.height == b.height) {
            h = a.height;
            join_level(a.n, b.n, h, c);
        } else if (a.height > b.height) {
            h = a.height;
            join_right(a.n, h, b, c);
        } else {
            h = b.height;
            join_left(a, b.n, h, c);
        }
        if (c.b.n) {
            if (h + 1 > max_height) throw std::length_error("pypersistent::sorted_map: tree too deep");
            inner_item items[2] = {{c.a.n, nullptr, &c.a}, {c.b.n, &leftmost_key(c.b.n, h), &c.b}};
            node* r = make_inner(h + 1, items, 2, 0);
            a.reset(r, h + 1);
        } else {
            a.reset(c.a.hand_over(), h);
        }
        b.reset(nullptr, 0);
    }

    // The entries of subtree `n` (level h) from position `lo` on and before position `hi`, as a
    // piece (empty when there are none). A position names the child taken at each level (idx[l],
    // l = h..1) and the entry in the leaf (idx[0]); null is open. Every subtree wholly inside the
    // range is shared; only the nodes along the two bounds' paths, and the spines the joins
    // walk, are new: O(height^2) nodes, whatever the number of entries.
    static void slice(node* n, unsigned h, const unsigned* lo, const unsigned* hi, piece& out) {
        if (lo) {
            bool at_start = true;
            for (unsigned l = 0; l <= h && at_start; ++l) at_start = lo[l] == 0;
            if (at_start) lo = nullptr;
        }
        if (!lo && !hi) {
            retain(n);
            out.reset(n, h);
            return;
        }
        if (h == 0) {
            const unsigned from = lo ? lo[0] : 0, to = hi ? hi[0] : n->count;
            if (from >= to) return;
            leaf_item items[max_slots];
            leaf_items_of(n, items);
            out.reset(make_leaf(items + from, to - from, 0), 0);
            return;
        }
        node* const* cs = children(n);
        const unsigned ib = lo ? lo[h] : 0, ie = hi ? hi[h] : n->count - 1u;
        if (ib >= ie) {  // both bounds in one child (ib > ie only for bounds out of order)
            if (ib == ie) slice(cs[ib], h - 1, lo, hi, out);
            return;
        }
        piece left, right;
        slice(cs[ib], h - 1, lo, nullptr, left);
        slice(cs[ie], h - 1, nullptr, hi, right);
        const unsigned middle = ie - ib - 1;
        if (middle == 1) {
            retain(cs[ib + 1]);
            piece mid(cs[ib + 1], h - 1);
            join(left, mid);
        } else if (middle >= 2) {
            inner_item items[max_slots];
            const K* ks = seps(n);
            for (unsigned j = ib + 1; j < ie; ++j) items[j - ib - 1] = inner_item{cs[j], &ks[j - 1], nullptr};
            piece mid(make_inner(h, items, middle, 0), h);
            join(left, mid);
        }
        join(left, right);
        const unsigned lh = left.height;
        out.reset(left.hand_over(), lh);
    }

    // ---- searching (the only place Compare is called) -----------------------------------

    static bool less(const K& a, const K& b) { return static_cast<bool>(Compare{}(a, b)); }
    static bool identical_key(const K& a, const K& b) noexcept { return Policy::identical_key(a, b); }
    static bool same_value(const V& a, const V& b) { return Policy::same_value(a, b); }

    // The number of the n keys at first, first + stride, ... (in order) that are less than `key`
    // (Upper: not greater than `key`). Compare's own node search runs first where it has one
    // (has_node_search, above); where it declines, the binary search below answers.
    template <bool Upper>
    static PYPERSISTENT_ALWAYS_INLINE unsigned bound(const char* first, std::size_t stride, unsigned n, const K& key) {
        if constexpr (has_node_search<Compare, K>::value) {
            unsigned pos;
            if (Compare::template node_bound<Upper>(first, stride, n, key, pos)) {
                assert(pos <= n);
                return pos;
            }
        }
        unsigned lo = 0, hi = n;
        while (lo < hi) {
            const unsigned mid = (lo + hi) / 2;
            const K& k = *reinterpret_cast<const K*>(first + mid * stride);
            if (Upper ? less(key, k) : !less(k, key)) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        return lo;
    }
    // The child of inner node `n` whose keys `key` belongs with: the number of separators <= key.
    static unsigned child_index(const node* n, const K& key) {
        return bound<true>(reinterpret_cast<const char*>(seps(n)), sizeof(K), n->count - 1u, key);
    }
    // The first entry of a leaf whose key is not less than `key` (0..count).
    static unsigned leaf_lower_bound(const node* n, const K& key) {
        return bound<false>(reinterpret_cast<const char*>(&entries(n)->first), sizeof(entry_type), n->count, key);
    }
    // The first entry of a leaf whose key is greater than `key` (0..count).
    static unsigned leaf_upper_bound(const node* n, const K& key) {
        return bound<true>(reinterpret_cast<const char*>(&entries(n)->first), sizeof(entry_type), n->count, key);
    }
    // Whether the entry at `pos` (from leaf_lower_bound) holds `key`.
    static bool matches(const node* leaf, unsigned pos, const K& key) {
        if (pos >= leaf->count) return false;
        const K& k = entries(leaf)[pos].first;
        return Policy::identical_key(k, key) || !less(key, k);
    }

    struct path {
        node* n[max_height + 1];
        unsigned idx[max_height + 1];  // idx[l]: the child taken in n[l] (l >= 1)
        // matters[l]: whether some node above level l stores the smallest key of n[l] as a
        // separator, i.e. n[l] is not the first child somewhere on the way up.
        bool matters[max_height + 1];
    };

    static void descend(const tree& t, const K& key, path& p) {
        node* n = t.root;
        p.matters[t.height] = false;
        for (unsigned l = t.height; l > 0; --l) {
            const unsigned i = child_index(n, key);
            p.n[l] = n;
            p.idx[l] = i;
            p.matters[l - 1] = p.matters[l] || i > 0;
            n = children(n)[i];
        }
        p.n[0] = n;
    }

    // Asks for every cache line of a node a search is about to read: a binary search's probes
    // land on different lines one after the other, each waiting for the last; fetched together,
    // a node costs about one memory round trip instead of one per probe. It asks for all the
    // lines a node of the largest size has, without reading the node's count first (that read
    // waits for the header's line, and every request behind it a round trip more); a smaller
    // node's requests past its end fetch lines nobody reads (a prefetch never faults). Forced
    // inline: GCC finds a function that only prefetches pure and may drop calls to it that it
    // does not inline first.
    static PYPERSISTENT_ALWAYS_INLINE void prefetch_node(const node* n) noexcept {
#if defined(__GNUC__) || defined(__clang__)
        const char* p = reinterpret_cast<const char*>(n);
        for (std::size_t off = 64; off < max_node_bytes; off += 64) __builtin_prefetch(p + off);
#else
        (void)n;
#endif
    }

    // Maps up to this many entries (a few hundred KiB of nodes) stay in the core's caches while
    // they are in use, and their lookups skip prefetch_node: its requests would all hit, and
    // issuing them costs more than it saves.
    static constexpr size_type prefetch_above = 8192;

    static const entry_type* find(const tree& t, const K& key) {
        if (!t.root) return nullptr;
        const node* n = t.root;
        const bool far = t.size > prefetch_above;
        for (unsigned l = t.height; l > 0; --l) {
            n = children(n)[child_index(n, key)];
            if (far) prefetch_node(n);
        }
        const unsigned pos = leaf_lower_bound(n, key);
        return matches(n, pos, key) ? entries(n) + pos : nullptr;
    }

    // ---- updates ------------------------------------------------------------------------
    //
    // An update leaves `t` as it was (its nodes untouched, unless `owner` owns them: then at most
    // one of them is edited in place, see "Exceptions" above) and reports:
    enum class outcome {
        unchanged,  // nothing to do (same value assigned, absent key erased)
        in_place,   // a node owned by `owner` was edited; t.root stays, t.size changes by `delta`
        replaced,   // `out` is a new tree (new references); t's root is for the caller to drop
    };

    // Insert or assign. `added` says whether the key was new.
    static outcome insert(const tree& t, const K& key, const V& value, owner_t owner, tree& out, bool& added) {
        added = false;
        if (!t.root) {
            builder b(capacity_for(1, owner), 0, owner);
            b.add_entry(key, value);
            out.root = b.finish();
            out.height = 0;
            out.size = 1;
            added = true;
            return outcome::replaced;
        }
        path p;
        descend(t, key, p);
        node* leaf = p.n[0];
        const unsigned count = leaf->count;
        const unsigned pos = leaf_lower_bound(leaf, key);
        change c;
        if (matches(leaf, pos, key)) {
            entry_type& e = entries(leaf)[pos];
            if (Policy::same_value(e.second, value)) return outcome::unchanged;
            if (owned_by(leaf, owner)) {
                V fresh(value);
                Policy::retain(fresh);
                using std::swap;
                swap(e.second, fresh);
                Policy::release(fresh);
                return outcome::in_place;
            }
            leaf_item items[max_slots];
            leaf_items_of(leaf, items);
            items[pos].v = &value;
            build_leaves(items, count, owner, c);
        } else {
            added = true;
            if (owned_by(leaf, owner) && count < leaf->capacity && (pos > 0 || !p.matters[0])) {
                entry_type fresh(key, value);  // everything that may throw, before any change
                entry_type* es = entries(leaf);
                for (unsigned j = count; j > pos; --j) {
                    new (es + j) entry_type(std::move(es[j - 1]));
                    es[j - 1].~entry_type();
                }
                entry_type* e = new (es + pos) entry_type(std::move(fresh));
                Policy::retain(e->first);
                Policy::retain(e->second);
                leaf->count = static_cast<std::uint16_t>(count + 1);
                return outcome::in_place;
            }
            leaf_item items[max_slots + 1];
            const entry_type* es = entries(leaf);
            unsigned n = 0;
            for (unsigned j = 0; j < pos; ++j) items[n++] = leaf_item{&es[j].first, &es[j].second};
            items[n++] = leaf_item{&key, &value};
            for (unsigned j = pos; j < count; ++j) items[n++] = leaf_item{&es[j].first, &es[j].second};
            build_leaves(items, n, owner, c);
            c.min_changed = pos == 0;
        }
        return finish_update(t, p, c, owner, out, added ? 1 : 0);
    }

    // Erase. `removed` says whether the key was there.
    static outcome erase(const tree& t, const K& key, owner_t owner, tree& out, bool& removed) {
        removed = false;
        if (!t.root) return outcome::unchanged;
        path p;
        descend(t, key, p);
        node* leaf = p.n[0];
        const unsigned count = leaf->count;
        const unsigned pos = leaf_lower_bound(leaf, key);
        if (!matches(leaf, pos, key)) return outcome::unchanged;
        removed = true;
        if (t.height == 0 && count == 1) {  // the last entry
            out = tree{};
            return outcome::replaced;
        }
        const unsigned least = t.height == 0 ? 1 : min_slots;
        if (owned_by(leaf, owner) && count - 1 >= least && (pos > 0 || !p.matters[0])) {
            entry_type* es = entries(leaf);
            entry_type gone(std::move(es[pos]));
            es[pos].~entry_type();
            for (unsigned j = pos + 1; j < count; ++j) {
                new (es + j - 1) entry_type(std::move(es[j]));
                es[j].~entry_type();
            }
            leaf->count = static_cast<std::uint16_t>(count - 1);
            // Last: releasing may run foreign code. `gone` holds the stored copy's references.
            Policy::release(gone.first);
            Policy::release(gone.second);
            return outcome::in_place;
        }
        leaf_item items[max_slots];
        const entry_type* es = entries(leaf);
        unsigned n = 0;
        for (unsigned j = 0; j < count; ++j) {
            if (j != pos) items[n++] = leaf_item{&es[j].first, &es[j].second};
        }
        change c;
        build_leaves(items, n, owner, c);
        c.min_changed = pos == 0;
        return finish_update(t, p, c, owner, out, -1);
    }

    // Carries the change of the leaf level up to the root. Nothing here compares keys.
    static outcome finish_update(const tree& t, path& p, change& c, owner_t owner, tree& out, int delta) {
        for (unsigned l = 1; l <= t.height; ++l) {
            node* parent = p.n[l];
            const unsigned i = p.idx[l];
            change up;
            if (!c.b.n && c.a.n->count >= min_slots) {
                if (owned_by(parent, owner) && (!c.min_changed || i > 0 || !p.matters[l])) {
                    // The only in-place edit: the new child (and the separator before it).
                    if (i > 0 && c.min_changed) {
                        K fresh(leftmost_key(c.a.n, l - 1));  // may throw; nothing changed yet
                        Policy::retain(fresh);
                        using std::swap;
                        swap(seps(parent)[i - 1], fresh);
                        replace_child(parent, l, i, c.a.hand_over());
                        Policy::release(fresh);
                    } else {
                        replace_child(parent, l, i, c.a.hand_over());
                    }
                    return outcome::in_place;
                }
                rebuild_inner(parent, l, i, i + 1, c, owner, up);
            } else if (c.b.n) {
                rebuild_inner(parent, l, i, i + 1, c, owner, up);
            } else {
                // An underfull child: merged with, or evened out against, a neighbour.
                const unsigned from = i > 0 ? i - 1 : i;
                node* left = i > 0 ? children(parent)[i - 1] : c.a.n;
                node* right = i > 0 ? c.a.n : children(parent)[i + 1];
                change merged;
                if (l == 1) {
                    leaf_item items[2 * max_slots];
                    unsigned n = leaf_items_of(left, items);
                    n += leaf_items_of(right, items + n);
                    build_leaves(items, n, owner, merged);
                } else {
                    inner_item items[2 * max_slots];
                    unsigned n = inner_items_of(left, l - 1, items);
                    n += inner_items_of(right, l - 1, items + n);
                    build_inners(l - 1, items, n, owner, merged);
                }
                rebuild_inner(parent, l, from, from + 2, merged, owner, up);
            }
            // The child's new node(s), adopted by `up` or merged away, give way to `up`'s.
            c.a.reset(up.a.hand_over(), l);
            c.b.reset(up.b.hand_over(), l);
            c.min_changed = i == 0 && c.min_changed;
        }
        // A new root.
        out.size = t.size + static_cast<size_type>(static_cast<std::ptrdiff_t>(delta));
        if (c.b.n) {
            if (t.height + 1 > max_height) throw std::length_error("pypersistent::sorted_map: tree too deep");
            inner_item items[2] = {{c.a.n, nullptr, &c.a}, {c.b.n, &leftmost_key(c.b.n, t.height), &c.b}};
            out.root = make_inner(t.height + 1, items, 2, owner);
            out.height = t.height + 1;
            return outcome::replaced;
        }
        node* r = c.a.hand_over();
        unsigned h = t.height;
        while (h > 0 && r->count == 1) {  // an inner root with one child gives way to it
            node* only = children(r)[0];
            retain(only);
            release(r, h);
            r = only;
            --h;
        }
        out.root = r;
        out.height = h;
        return outcome::replaced;
    }

    static void replace_child(node* parent, unsigned height, unsigned i, node* child) noexcept {
        node* old = children(parent)[i];
        children(parent)[i] = child;
        release(old, height - 1);
    }
};

// Bidirectional iteration in key order. The state is the path from the root to the current leaf
// (O(height)); each step is a pointer increment inside a leaf and a climb once per leaf.
template <class Tree>
class sorted_map_iterator {
    using node = typename Tree::node;
    static constexpr unsigned levels = Tree::max_height + 1;

public:
    using iterator_category = std::bidirectional_iterator_tag;
    using value_type = typename Tree::entry_type;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    sorted_map_iterator() noexcept = default;  // the end of the empty map

    reference operator*() const noexcept { return *current_; }
    pointer operator->() const noexcept { return current_; }

    sorted_map_iterator& operator++() noexcept {
        if (++current_ == end_) next_from(1);
        return *this;
    }
    sorted_map_iterator operator++(int) noexcept {
        sorted_map_iterator old = *this;
        ++*this;
        return old;
    }
    // From the end, to the last entry; from the first entry, to the end.
    sorted_map_iterator& operator--() noexcept {
        if (!current_) {
            seek_last();
        } else if (current_ != Tree::entries(path_[0])) {
            --current_;
        } else {
            prev_from(1);
        }
        return *this;
    }
    sorted_map_iterator operator--(int) noexcept {
        sorted_map_iterator old = *this;
        --*this;
        return old;
    }

    bool operator==(const sorted_map_iterator& o) const noexcept { return current_ == o.current_; }
    bool operator!=(const sorted_map_iterator& o) const noexcept { return current_ != o.current_; }

    // ---- for the map classes ----

    static sorted_map_iterator end_of(const node* root, unsigned height) noexcept {
        sorted_map_iterator it;
        it.root_ = root;
        it.height_ = height;
        return it;
    }
    static sorted_map_iterator first_of(const node* root, unsigned height) noexcept {
        sorted_map_iterator it = end_of(root, height);
        if (root) it.descend_leftmost(root, height);
        return it;
    }
    static sorted_map_iterator last_of(const node* root, unsigned height) noexcept {
        sorted_map_iterator it = end_of(root, height);
        it.seek_last();
        return it;
    }
    // The first entry not less than `key` (Upper: greater than `key`), or the end.
    template <bool Upper, class K>
    static sorted_map_iterator bound_of(const node* root, unsigned height, const K& key) {
        sorted_map_iterator it = end_of(root, height);
        if (!root) return it;
        const node* n = root;
        for (unsigned l = height; l > 0; --l) {
            const unsigned i = Tree::child_index(n, key);
            it.path_[l] = n;
            it.idx_[l] = static_cast<std::uint8_t>(i);
            n = Tree::children(n)[i];
        }
        const unsigned pos = Upper ? Tree::leaf_upper_bound(n, key) : Tree::leaf_lower_bound(n, key);
        it.set_leaf(n, pos);
        if (it.current_ == it.end_) it.next_from(1);
        return it;
    }

    // This position as indices (the child taken at each level l = height..1 in idx[l], the entry
    // in the leaf in idx[0]); false at the end.
    bool position(unsigned* idx) const noexcept {
        if (!current_) return false;
        for (unsigned l = 1; l <= height_; ++l) idx[l] = idx_[l];
        idx[0] = static_cast<unsigned>(current_ - Tree::entries(path_[0]));
        return true;
    }
    // The number of entries from this position up to `e` (same tree, not before this one),
    // counted leaf by leaf.
    std::size_t count_to(const sorted_map_iterator& e) const noexcept {
        sorted_map_iterator x = *this;
        std::size_t n = 0;
        while (x.current_) {
            if (e.current_ && x.path_[0] == e.path_[0]) return n + static_cast<std::size_t>(e.current_ - x.current_);
            n += static_cast<std::size_t>(x.end_ - x.current_);
            x.next_from(1);
        }
        return n;
    }

    // Whether this position comes before `o` (both from the same tree; the end comes last).
    bool before(const sorted_map_iterator& o) const noexcept {
        if (!current_) return false;
        if (!o.current_) return true;
        for (unsigned l = height_; l > 0; --l) {
            if (idx_[l] != o.idx_[l]) return idx_[l] < o.idx_[l];
        }
        return current_ < o.current_;
    }

    // Walks two trees in lockstep: same length is the caller's business (equal sizes).
    // `eq(a, b)` compares two entries. Subtrees both trees share by pointer are skipped whole.
    template <class EntryEqual>
    static bool equal(const node* ra, unsigned ha, const node* rb, unsigned hb, EntryEqual& eq) {
        if (ra == rb && ha == hb) return true;
        sorted_map_iterator x = first_of(ra, ha);
        sorted_map_iterator y = first_of(rb, hb);
        while (x.current_ && y.current_) {
            if (x.current_ == Tree::entries(x.path_[0]) && y.current_ == Tree::entries(y.path_[0])) {
                // At the start of a leaf in both: find the largest subtree starting here in both.
                int shared = -1;
                for (unsigned l = 0, top = ha < hb ? ha : hb; l <= top; ++l) {
                    if (l > 0 && (x.idx_[l] != 0 || y.idx_[l] != 0)) break;
                    if (x.path_[l] == y.path_[l]) shared = static_cast<int>(l);
                }
                if (shared >= 0) {
                    x.next_from(static_cast<unsigned>(shared) + 1);
                    y.next_from(static_cast<unsigned>(shared) + 1);
                    continue;
                }
            }
            if (!eq(*x.current_, *y.current_)) return false;
            ++x;
            ++y;
        }
        return !x.current_ && !y.current_;
    }

    // What changed from tree a to tree b, by one merge walk over both in key order: v.removed(e)
    // for each entry of a whose key b lacks, v.added(e) for each entry of b whose key a lacks,
    // v.changed(ea, eb) for each key in both whose values are neither the same (same_value) nor
    // equal (value_eq). Whenever both walks stand at the start of one same node (a subtree the
    // two versions share), they step over it whole, without a comparison: after k updates, two
    // versions share everything but k root-to-leaf paths, and the walks fall back into step at
    // the end of every changed node, so the cost is about k * width * height steps and k * 2 *
    // width comparisons, whatever the size. Trees of different heights are fine (a shared node is
    // at the same level, counted from the leaves, in both); unrelated trees cost a plain merge.
    // Read-only: Compare, value_eq and the visitor may throw; nothing needs undoing.
    template <class ValueEqual, class Visitor>
    static void diff(const node* ra, unsigned ha, const node* rb, unsigned hb, ValueEqual& value_eq, Visitor& v) {
        if (ra == rb) return;
        sorted_map_iterator x = first_of(ra, ha);
        sorted_map_iterator y = first_of(rb, hb);
        const unsigned top = ha < hb ? ha : hb;
        while (x.current_ && y.current_) {
            if (x.current_ == Tree::entries(x.path_[0]) && y.current_ == Tree::entries(y.path_[0])) {
                // At the start of a leaf in both: the largest subtree starting here in both.
                int shared = -1;
                for (unsigned l = 0; l <= top; ++l) {
                    if (l > 0 && (x.idx_[l] != 0 || y.idx_[l] != 0)) break;
                    if (x.path_[l] == y.path_[l]) shared = static_cast<int>(l);
                }
                if (shared >= 0) {
                    x.next_from(static_cast<unsigned>(shared) + 1);
                    y.next_from(static_cast<unsigned>(shared) + 1);
                    continue;
                }
            }
            const value_type& a = *x.current_;
            const value_type& b = *y.current_;
            if (&a != &b && !Tree::identical_key(a.first, b.first)) {
                if (Tree::less(a.first, b.first)) {
                    v.removed(a);
                    ++x;
                    continue;
                }
                if (Tree::less(b.first, a.first)) {
                    v.added(b);
                    ++y;
                    continue;
                }
            }
            if (&a != &b && !Tree::same_value(a.second, b.second) && !value_eq(a.second, b.second)) v.changed(a, b);
            ++x;
            ++y;
        }
        for (; x.current_; ++x) v.removed(*x.current_);
        for (; y.current_; ++y) v.added(*y.current_);
    }

private:
    void set_leaf(const node* leaf, unsigned pos) noexcept {
        path_[0] = leaf;
        const value_type* es = Tree::entries(leaf);
        current_ = es + pos;
        end_ = es + leaf->count;
    }
    void descend_leftmost(const node* n, unsigned level) noexcept {
        for (; level > 0; --level) {
            path_[level] = n;
            idx_[level] = 0;
            n = Tree::children(n)[0];
        }
        set_leaf(n, 0);
    }
    void descend_rightmost(const node* n, unsigned level) noexcept {
        for (; level > 0; --level) {
            path_[level] = n;
            const unsigned i = n->count - 1u;
            idx_[level] = static_cast<std::uint8_t>(i);
            n = Tree::children(n)[i];
        }
        set_leaf(n, n->count - 1u);
    }
    void seek_last() noexcept {
        if (root_) {
            descend_rightmost(root_, height_);
        } else {
            current_ = end_ = nullptr;
        }
    }
    // The subtree below path_[level - 1] is done: on to the next leaf, or the end.
    void next_from(unsigned level) noexcept {
        for (unsigned l = level; l <= height_; ++l) {
            if (idx_[l] + 1u < path_[l]->count) {
                ++idx_[l];
                descend_leftmost(Tree::children(path_[l])[idx_[l]], l - 1);
                return;
            }
        }
        current_ = end_ = nullptr;
    }
    void prev_from(unsigned level) noexcept {
        for (unsigned l = level; l <= height_; ++l) {
            if (idx_[l] > 0) {
                --idx_[l];
                descend_rightmost(Tree::children(path_[l])[idx_[l]], l - 1);
                return;
            }
        }
        current_ = end_ = nullptr;  // before the first entry: the end
    }

    const node* root_ = nullptr;
    unsigned height_ = 0;
    const value_type* current_ = nullptr;  // null at the end
    const value_type* end_ = nullptr;      // one past the current leaf's entries
    const node* path_[levels] = {};
    std::uint8_t idx_[levels] = {};
};

// The entries of a map with keys in [lo, hi): a pair of iterators.
template <class Iterator>
class sorted_range {
public:
    sorted_range(Iterator b, Iterator e) noexcept : begin_(b), end_(e) {}
    Iterator begin() const noexcept { return begin_; }
    Iterator end() const noexcept { return end_; }
    bool empty() const noexcept { return begin_ == end_; }

private:
    Iterator begin_, end_;
};

}  // namespace detail

template <class K, class V, class Compare, class Policy>
class transient_sorted_map;

// Compare is a stateless function object, default-constructed where used (like the hash and
// equality of persistent_map); it may throw and may answer inconsistently, see sorted_btree.
// A throwing operation leaves every map as it was.
template <class K, class V, class Compare = std::less<K>, class Policy = default_policy>
class persistent_sorted_map {
public:
    using tree_type = detail::sorted_btree<K, V, Compare, Policy>;
    using tree_parts = typename tree_type::tree;
    using node_type = typename tree_type::node;
    using key_type = K;
    using mapped_type = V;
    using key_compare = Compare;
    using value_type = typename tree_type::entry_type;  // has .first and .second
    using size_type = std::size_t;
    using iterator = detail::sorted_map_iterator<tree_type>;
    using const_iterator = iterator;
    using reverse_iterator = std::reverse_iterator<iterator>;
    using range_type = detail::sorted_range<iterator>;
    using transient_type = transient_sorted_map<K, V, Compare, Policy>;

    // Keys are equal when neither is less than the other (or the policy knows them identical).
    struct equivalent_keys {
        bool operator()(const K& a, const K& b) const {
            return Policy::identical_key(a, b) || (!tree_type::less(a, b) && !tree_type::less(b, a));
        }
    };

    // The empty map has no nodes at all.
    persistent_sorted_map() noexcept = default;
    persistent_sorted_map(std::initializer_list<std::pair<K, V>> items)
        : persistent_sorted_map(from_range(items.begin(), items.end())) {}

    persistent_sorted_map(const persistent_sorted_map& o) noexcept : t_(o.t_) {
        if (t_.root) tree_type::retain(t_.root);
    }
    persistent_sorted_map(persistent_sorted_map&& o) noexcept : t_(o.t_) { o.t_ = tree_parts{}; }
    persistent_sorted_map& operator=(const persistent_sorted_map& o) noexcept {
        persistent_sorted_map(o).swap(*this);
        return *this;
    }
    persistent_sorted_map& operator=(persistent_sorted_map&& o) noexcept {
        persistent_sorted_map(std::move(o)).swap(*this);
        return *this;
    }
    ~persistent_sorted_map() { tree_type::release(t_.root, t_.height); }

    void swap(persistent_sorted_map& o) noexcept { std::swap(t_, o.t_); }

    size_type size() const noexcept { return t_.size; }
    bool empty() const noexcept { return t_.size == 0; }

    // ---- lookups ----

    const V* find(const K& key) const {
        const value_type* e = tree_type::find(t_, key);
        return e ? &e->second : nullptr;
    }
    // The stored entry for `key` (its key is the map's copy), or null.
    const value_type* find_entry(const K& key) const { return tree_type::find(t_, key); }
    bool contains(const K& key) const { return tree_type::find(t_, key) != nullptr; }
    const V& at(const K& key) const {
        const V* v = find(key);
        if (!v) throw std::out_of_range("pypersistent::persistent_sorted_map::at: key not found");
        return *v;
    }

    // The first entry whose key is not less than `key` / greater than `key`, or end().
    iterator lower_bound(const K& key) const { return iterator::template bound_of<false>(t_.root, t_.height, key); }
    iterator upper_bound(const K& key) const { return iterator::template bound_of<true>(t_.root, t_.height, key); }

    // Entries by position relative to a key, or null when there is none:
    //   ceiling: smallest key >= k; higher: smallest key > k; floor: largest key <= k;
    //   lower: largest key < k.
    const value_type* ceiling(const K& key) const { return lower_bound(key).operator->(); }
    const value_type* higher(const K& key) const { return upper_bound(key).operator->(); }
    const value_type* floor(const K& key) const { return (--upper_bound(key)).operator->(); }
    const value_type* lower(const K& key) const { return (--lower_bound(key)).operator->(); }
    // The entries with the smallest and the largest key, or null for the empty map.
    const value_type* first() const noexcept { return begin().operator->(); }
    const value_type* last() const noexcept { return iterator::last_of(t_.root, t_.height).operator->(); }

    // ---- updates ----

    // Insert or assign. Assigning a value the policy calls the same returns this very map.
    [[nodiscard]] persistent_sorted_map set(const K& key, const V& value) const {
        tree_parts out;
        bool added = false;
        if (tree_type::insert(t_, key, value, 0, out, added) == tree_type::outcome::unchanged) return *this;
        return persistent_sorted_map(out);
    }
    // Erasing an absent key returns this very map.
    [[nodiscard]] persistent_sorted_map erase(const K& key) const {
        tree_parts out;
        bool removed = false;
        if (tree_type::erase(t_, key, 0, out, removed) == tree_type::outcome::unchanged) return *this;
        return persistent_sorted_map(out);
    }

    // ---- iteration ----

    iterator begin() const noexcept { return iterator::first_of(t_.root, t_.height); }
    iterator end() const noexcept { return iterator::end_of(t_.root, t_.height); }
    reverse_iterator rbegin() const noexcept { return reverse_iterator(end()); }
    reverse_iterator rend() const noexcept { return reverse_iterator(begin()); }

    // The entries with lo <= key < hi; a null bound is open. When the comparator says hi comes
    // before lo, the range is empty.
    range_type range(const K* lo, const K* hi) const {
        iterator b = lo ? lower_bound(*lo) : begin();
        iterator e = hi ? lower_bound(*hi) : end();
        if (e.before(b)) e = b;
        return range_type(b, e);
    }
    range_type range(const K& lo, const K& hi) const { return range(&lo, &hi); }
    range_type range_from(const K& lo) const { return range(&lo, nullptr); }
    range_type range_to(const K& hi) const { return range(nullptr, &hi); }

    // ---- comparison ----

    // Same size and pairwise equal entries in order; subtrees both maps share are not visited.
    template <class KeyEqual = equivalent_keys, class ValueEqual = std::equal_to<V>>
    bool equal(const persistent_sorted_map& o, KeyEqual key_eq = KeyEqual(), ValueEqual value_eq = ValueEqual()) const {
        if (t_.size != o.t_.size) return false;
        auto eq = [&](const value_type& a, const value_type& b) {
            return static_cast<bool>(key_eq(a.first, b.first)) && static_cast<bool>(value_eq(a.second, b.second));
        };
        return iterator::equal(t_.root, t_.height, o.t_.root, o.t_.height, eq);
    }
    bool operator==(const persistent_sorted_map& o) const { return equal(o); }

    // What changed from this map to `newer`: visitor.removed(entry) for each key only this map
    // has, visitor.added(entry) for each key only `newer` has, visitor.changed(old entry, new
    // entry) for each key whose values are neither the same (Policy::same_value) nor equal
    // (value_eq), all in key order. Entries have .first and .second. Subtrees the two maps share
    // are skipped: versions that differ in k keys cost about k log n, whatever their size;
    // unrelated maps cost one merge walk (O(n + m) comparisons). Keys are compared with Compare
    // (a key the policy calls identical is the same key without asking). Read-only: whatever
    // throws (Compare, value_eq, the visitor) leaves both maps as they were.
    template <class Visitor, class ValueEqual = std::equal_to<V>>
    void diff(const persistent_sorted_map& newer, Visitor&& visitor, ValueEqual value_eq = ValueEqual()) const {
        iterator::diff(t_.root, t_.height, newer.t_.root, newer.t_.height, value_eq, visitor);
    }
    bool operator!=(const persistent_sorted_map& o) const { return !equal(o); }
    // Whether both are the very same version, in O(1).
    bool identical(const persistent_sorted_map& o) const noexcept { return t_.root == o.t_.root; }

    transient_type transient() const { return transient_type(*this); }

    // Builds from entries in any order; later duplicates win, like repeated assignment. Input
    // that can be read twice (forward iterators) and already ascends strictly (checked: n - 1
    // comparisons, stopping at the first pair out of order) is built in O(n) by from_sorted;
    // anything else through a transient, O(n log n).
    template <class InputIt>
    static persistent_sorted_map from_range(InputIt first, InputIt last) {
        using category = typename std::iterator_traits<InputIt>::iterator_category;
        if constexpr (std::is_base_of<std::forward_iterator_tag, category>::value) {
            size_type count = 0;
            bool ascending = true;
            for (InputIt prev = first, it = first; it != last; prev = it, ++it, ++count) {
                if (count > 0 && !tree_type::less(prev->first, it->first)) {
                    ascending = false;
                    break;
                }
            }
            if (ascending) return from_sorted_n(first, count);
        }
        transient_type t;
        for (; first != last; ++first) t.set(first->first, first->second);
        return t.persistent();
    }

    // A map of the `count` entries read in order from `first` (with .first and .second), in O(n)
    // and without a comparison: the keys must already ascend strictly under Compare. That is not
    // checked (use from_range to check it); keys out of order give a valid tree whose lookups
    // may miss them, as an inconsistent comparator would. Every node is as full as an even
    // spread allows.
    template <class It>
    static persistent_sorted_map from_sorted_n(It first, size_type count) {
        return persistent_sorted_map(tree_type::build_sorted(first, count, 0));
    }
    template <class ForwardIt>
    static persistent_sorted_map from_sorted(ForwardIt first, ForwardIt last) {
        return from_sorted_n(first, static_cast<size_type>(std::distance(first, last)));
    }

    // A new map of the entries with lo <= key < hi (a null bound is open); this very map when the
    // range is all of it. The new map shares every subtree wholly inside the range: after the
    // two O(log n) searches for the bounds, it builds O(log^2 n) nodes and counts the entries
    // leaf by leaf (O(m / 16) for m entries), comparing nothing.
    persistent_sorted_map subseq(const K* lo, const K* hi) const {
        const range_type r = range(lo, hi);
        if (r.empty()) return persistent_sorted_map();
        const bool from_start = r.begin() == begin(), to_end = r.end() == end();
        if (from_start && to_end) return *this;
        unsigned from[tree_type::max_height + 1], to[tree_type::max_height + 1];
        r.begin().position(from);
        r.end().position(to);
        tree_parts out;
        out.size = r.begin().count_to(r.end());
        typename tree_type::piece p;
        tree_type::slice(t_.root, t_.height, from_start ? nullptr : from, to_end ? nullptr : to, p);
        out.height = p.height;
        out.root = p.hand_over();
        return persistent_sorted_map(out);
    }

    // Low-level access for bindings, atomic cells and tests.
    const node_type* root() const noexcept { return t_.root; }
    unsigned height() const noexcept { return t_.height; }
    const tree_parts& parts() const noexcept { return t_; }
    // Takes over the reference to raw.root.
    static persistent_sorted_map adopt(const tree_parts& raw) noexcept { return persistent_sorted_map(raw); }
    // Gives up this map's reference to its root; the map becomes empty.
    tree_parts release_parts() noexcept {
        tree_parts out = t_;
        t_ = tree_parts{};
        return out;
    }

private:
    friend transient_type;
    explicit persistent_sorted_map(const tree_parts& raw) noexcept : t_(raw) {}

    tree_parts t_;
};

}  // namespace pypersistent

#include "transient_sorted_map.hpp"
