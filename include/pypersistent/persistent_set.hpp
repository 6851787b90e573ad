// persistent_set: an immutable hash set on the CHAMP trie of persistent_map (champ.hpp), with
// key-only entries (no_value: no value slot at all). Every update returns a new set that shares
// all untouched nodes with the old one; the old one never changes.
//
// Set algebra is structural: union, intersection, difference and symmetric difference walk both
// tries in lockstep, level by level. A subtree that both sides share by pointer is settled
// without being entered, and a result that equals one side's subtree reuses that subtree whole
// (at the top: returns that very set). So `s.set_union(s.insert(x))`, `s.set_difference(...)`,
// `s.is_subset_of(...)` and the like visit O(log n) nodes. Results keep the canonical form (see
// champ.hpp), so they iterate in the same order as the same set built by inserts.
//
// Hash and KeyEqual are stateless function objects, default-constructed where used; either may
// throw, and a throwing operation leaves every set as it was and leaks nothing. The algebra
// calls KeyEqual at most once per pair of entries it compares, only between keys whose cached
// hashes agree (when the policy caches hashes), and never calls Hash unless the policy does not
// cache hashes (then, like the map, it rehashes stored keys that move to a deeper level).
// Where both sides hold equal keys, which of the two a result stores is unspecified (this set's,
// except inside subtrees reused whole from the other side).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <utility>
#include <vector>

#include "champ.hpp"
#include "iterator.hpp"
#include "persistent_map.hpp"
#include "policy.hpp"

namespace pypersistent {

template <class K, class Hash, class KeyEqual, class Policy>
class transient_set;

namespace detail {

enum class set_op { union_of, intersection, difference, symmetric_difference };

// The walks behind persistent_set's algebra. Every function takes the roots (or subtrees at the
// same level) of two tries and never changes them; results are new references.
template <class Trie>
struct set_algebra {
    using node = typename Trie::node;
    using entry_type = typename Trie::entry_type;
    using builder = typename Trie::builder;

    static constexpr unsigned bitmap_levels_end = hash_bits;  // shifts >= this: collision level

    // One side of a walk at some level: a node, or a single entry lifted out of a parent's slot
    // (with its hash) when the other side has a subtree there.
    struct side {
        const node* n = nullptr;
        const entry_type* e = nullptr;
        hash_t h = 0;

        static side of(const node* n) noexcept { return side{n, nullptr, 0}; }
        static side of(const entry_type* e) { return side{nullptr, e, Trie::entry_hash(*e)}; }
        std::uint32_t datamap(unsigned shift) const noexcept {
            return n ? n->datamap : std::uint32_t(1) << fragment(h, shift);
        }
        std::uint32_t nodemap() const noexcept { return n ? n->nodemap : 0; }
    };

    // A walk's result: empty, a single key (an entry of one of the inputs, to be inlined by the
    // parent), or a node (a new reference). same_a / same_b: the result holds exactly that
    // side's keys (and is that side's node or entry when so).
    struct result {
        node* n = nullptr;
        const entry_type* e = nullptr;
        bool same_a = false;
        bool same_b = false;
    };

    static bool keys_match(const entry_type& a, const entry_type& b) {
        return Trie::entry_matches(a, Trie::entry_hash_or_zero(b), b.first);
    }

    static std::size_t count_slot(const entry_type* e, const node* n) noexcept { return e ? 1 : Trie::count(n); }

    // The result is `s` itself; it holds exactly a's keys (same_a), b's (same_b), or both's.
    static result reuse(const side& s, bool same_a, bool same_b) noexcept {
        result r;
        r.same_a = same_a;
        r.same_b = same_b;
        if (s.n) {
            Trie::retain(const_cast<node*>(s.n));
            r.n = const_cast<node*>(s.n);
        } else {
            r.e = s.e;
        }
        return r;
    }

    // `tally` by operation: union - keys of b not in a; intersection - keys of a not in b;
    // difference, symmetric difference - keys of the result.
    template <set_op Op>
    static result walk(const side& a, const side& b, unsigned shift, std::size_t& tally, bool is_root) {
        if (shift >= bitmap_levels_end) return walk_collision<Op>(a, b, tally);

        struct slot {
            node* child = nullptr;  // owned reference
            const entry_type* entry = nullptr;
        };
        slot slots[32];
        struct cleanup {
            slot* s;
            ~cleanup() {
                for (unsigned i = 0; i < 32; ++i) Trie::release(s[i].child);
            }
        } cleanup_slots{slots};

        const std::uint32_t a_data = a.datamap(shift), a_nodes = a.nodemap();
        const std::uint32_t b_data = b.datamap(shift), b_nodes = b.nodemap();
        const entry_type* a_entries = a.n ? Trie::entries(a.n) : a.e;
        const entry_type* b_entries = b.n ? Trie::entries(b.n) : b.e;
        node* const* a_children = a.n ? Trie::children(a.n) : nullptr;
        node* const* b_children = b.n ? Trie::children(b.n) : nullptr;
        const unsigned next = shift + bits_per_level;

        bool same_a = true, same_b = true;
        std::uint32_t datamap = 0, nodemap = 0;
        for (std::uint32_t m = a_data | a_nodes | b_data | b_nodes; m; m &= m - 1) {
            const std::uint32_t bit = m & (0u - m);
            slot& s = slots[popcount(bit - 1)];
            const entry_type* ea = (a_data & bit) ? a_entries + slot_index(a_data, bit) : nullptr;
            const entry_type* eb = (b_data & bit) ? b_entries + slot_index(b_data, bit) : nullptr;
            node* na = (a_nodes & bit) ? a_children[slot_index(a_nodes, bit)] : nullptr;
            node* nb = (b_nodes & bit) ? b_children[slot_index(b_nodes, bit)] : nullptr;
            const bool in_a = ea || na, in_b = eb || nb;
            if (in_a && in_b) {
                if (ea && eb) {
                    if (keys_match(*ea, *eb)) {
                        if (Op == set_op::union_of || Op == set_op::intersection) {
                            s.entry = ea;
                        } else {
                            same_a = same_b = false;
                        }
                    } else {
                        same_b = false;
                        if (Op == set_op::difference) {
                            s.entry = ea;
                            ++tally;
                        } else {
                            same_a = false;
                            if (Op == set_op::intersection) {
                                ++tally;
                            } else {
                                s.child = Trie::make_two(next, *ea, Trie::entry_hash(*ea), eb->first, no_value{},
                                                         Trie::entry_hash(*eb), 0);
                                tally += Op == set_op::union_of ? 1 : 2;
                            }
                        }
                    }
                } else if (na && na == nb) {
                    if (Op == set_op::union_of || Op == set_op::intersection) {
                        Trie::retain(na);
                        s.child = na;
                    } else {
                        same_a = same_b = false;
                    }
                } else {
                    result sub = walk<Op>(ea ? side::of(ea) : side::of(na), eb ? side::of(eb) : side::of(nb), next,
                                          tally, false);
                    s.child = sub.n;
                    s.entry = sub.e;
                    same_a &= sub.same_a;
                    same_b &= sub.same_b;
                }
            } else if (in_a) {
                if (Op == set_op::intersection) {
                    same_a = false;
                    tally += count_slot(ea, na);
                } else {
                    same_b = false;
                    s.entry = ea;
                    if (na) {
                        Trie::retain(na);
                        s.child = na;
                    }
                    if (Op != set_op::union_of) tally += count_slot(ea, na);
                }
            } else {
                if (Op == set_op::union_of || Op == set_op::symmetric_difference) {
                    same_a = false;
                    s.entry = eb;
                    if (nb) {
                        Trie::retain(nb);
                        s.child = nb;
                    }
                    tally += count_slot(eb, nb);
                } else {
                    same_b = false;
                }
            }
            if (s.child) {
                nodemap |= bit;
            } else if (s.entry) {
                datamap |= bit;
            }
        }

        if (same_a) return reuse(a, true, same_b);
        if (same_b) return reuse(b, false, true);
        result r;
        if (!nodemap && !datamap) return r;
        if (!nodemap && (datamap & (datamap - 1)) == 0 && !is_root) {
            r.e = slots[popcount(datamap - 1)].entry;
            return r;
        }
        // Children and entries fill separate arrays of the node, each in fragment order.
        builder out(datamap, nodemap, false, 0);
        for (std::uint32_t m = datamap | nodemap; m; m &= m - 1) {
            slot& s = slots[popcount((m & (0u - m)) - 1)];
            if (s.child) {
                out.adopt_child(s.child);
                s.child = nullptr;
            } else {
                out.copy_entry(*s.entry);
            }
        }
        r.n = out.finish();
        return r;
    }

    // Below the last bitmap level: collision nodes (or a lone entry) whose keys all share one
    // hash, compared as unordered sets.
    template <set_op Op>
    static result walk_collision(const side& a, const side& b, std::size_t& tally) {
        const unsigned na = a.n ? a.n->datamap : 1, nb = b.n ? b.n->datamap : 1;
        const entry_type* ea = a.n ? Trie::entries(a.n) : a.e;
        const entry_type* eb = b.n ? Trie::entries(b.n) : b.e;
        std::vector<bool> a_matched(na), b_matched(nb);
        unsigned matches = 0;
        for (unsigned i = 0; i < na; ++i) {
            for (unsigned j = 0; j < nb; ++j) {
                if (!b_matched[j] && keys_match(ea[i], eb[j])) {
                    a_matched[i] = b_matched[j] = true;
                    ++matches;
                    break;
                }
            }
        }
        const unsigned only_a = na - matches, only_b = nb - matches;
        bool keep_matched = false, keep_a = false, keep_b = false;
        switch (Op) {
            case set_op::union_of:
                keep_matched = keep_a = keep_b = true;
                tally += only_b;
                if (only_b == 0) return reuse(a, true, only_a == 0);
                if (only_a == 0) return reuse(b, false, true);
                break;
            case set_op::intersection:
                keep_matched = true;
                tally += only_a;
                if (only_a == 0) return reuse(a, true, only_b == 0);
                if (only_b == 0) return reuse(b, false, true);
                break;
            case set_op::difference:
                keep_a = true;
                tally += only_a;
                if (matches == 0) return reuse(a, true, false);
                break;
            case set_op::symmetric_difference:
                keep_a = keep_b = true;
                tally += only_a + only_b;
                break;
        }
        const unsigned total = (keep_matched ? matches : 0) + (keep_a ? only_a : 0) + (keep_b ? only_b : 0);
        result r;
        if (total == 0) return r;
        if (total == 1) {
            for (unsigned i = 0; i < na && !r.e; ++i) {
                if (a_matched[i] ? keep_matched : keep_a) r.e = ea + i;
            }
            for (unsigned j = 0; j < nb && !r.e; ++j) {
                if (!b_matched[j] && keep_b) r.e = eb + j;
            }
            return r;
        }
        builder out(total, 0, true, 0);
        for (unsigned i = 0; i < na; ++i) {
            if (a_matched[i] ? keep_matched : keep_a) out.copy_entry(ea[i]);
        }
        for (unsigned j = 0; j < nb; ++j) {
            if (!b_matched[j] && keep_b) out.copy_entry(eb[j]);
        }
        r.n = out.finish();
        return r;
    }

    // Whether the key of `e` is in the subtree `n` at `shift`.
    static bool subtree_contains(const node* n, unsigned shift, const entry_type& e) {
        return Trie::find_from(n, shift, Trie::entry_hash(e), e.first) != nullptr;
    }

    // Every key of `a` is in `b` (subtrees at the same level).
    static bool subset(const node* a, const node* b, unsigned shift) {
        if (a == b) return true;
        const entry_type* ea = Trie::entries(a);
        const entry_type* eb = Trie::entries(b);
        if (shift >= bitmap_levels_end) {
            if (a->datamap > b->datamap) return false;
            std::vector<bool> b_matched(b->datamap);
            for (unsigned i = 0; i < a->datamap; ++i) {
                bool found = false;
                for (unsigned j = 0; j < b->datamap && !found; ++j) {
                    if (!b_matched[j] && keys_match(ea[i], eb[j])) b_matched[j] = found = true;
                }
                if (!found) return false;
            }
            return true;
        }
        // A key of a's where b has nothing, or a subtree of a's (two keys or more) against a
        // single key of b's: decided by the maps alone.
        if ((a->datamap | a->nodemap) & ~(b->datamap | b->nodemap)) return false;
        if (a->nodemap & b->datamap) return false;
        node* const* cb = Trie::children(b);
        for (std::uint32_t m = a->datamap; m; m &= m - 1) {
            const std::uint32_t bit = m & (0u - m);
            const entry_type& e = ea[slot_index(a->datamap, bit)];
            if (b->datamap & bit) {
                if (!keys_match(e, eb[slot_index(b->datamap, bit)])) return false;
            } else if (!subtree_contains(cb[slot_index(b->nodemap, bit)], shift + bits_per_level, e)) {
                return false;
            }
        }
        node* const* ca = Trie::children(a);
        for (std::uint32_t m = a->nodemap; m; m &= m - 1) {
            const std::uint32_t bit = m & (0u - m);
            if (!subset(ca[slot_index(a->nodemap, bit)], cb[slot_index(b->nodemap, bit)], shift + bits_per_level)) {
                return false;
            }
        }
        return true;
    }

    // No key of `a` is in `b` (subtrees at the same level).
    static bool disjoint(const node* a, const node* b, unsigned shift) {
        if (a == b) return false;
        const entry_type* ea = Trie::entries(a);
        const entry_type* eb = Trie::entries(b);
        if (shift >= bitmap_levels_end) {
            for (unsigned i = 0; i < a->datamap; ++i) {
                for (unsigned j = 0; j < b->datamap; ++j) {
                    if (keys_match(ea[i], eb[j])) return false;
                }
            }
            return true;
        }
        node* const* ca = Trie::children(a);
        node* const* cb = Trie::children(b);
        const unsigned next = shift + bits_per_level;
        for (std::uint32_t m = (a->datamap | a->nodemap) & (b->datamap | b->nodemap); m; m &= m - 1) {
            const std::uint32_t bit = m & (0u - m);
            const entry_type* xa = (a->datamap & bit) ? ea + slot_index(a->datamap, bit) : nullptr;
            const entry_type* xb = (b->datamap & bit) ? eb + slot_index(b->datamap, bit) : nullptr;
            if (xa && xb) {
                if (keys_match(*xa, *xb)) return false;
            } else if (xa) {
                if (subtree_contains(cb[slot_index(b->nodemap, bit)], next, *xa)) return false;
            } else if (xb) {
                if (subtree_contains(ca[slot_index(a->nodemap, bit)], next, *xb)) return false;
            } else if (!disjoint(ca[slot_index(a->nodemap, bit)], cb[slot_index(b->nodemap, bit)], next)) {
                return false;
            }
        }
        return true;
    }
};

}  // namespace detail

// A key-only persistent hash set: a persistent_map whose values are no_value, plus the set
// algebra. The policy is the map's (policy.hpp): retain/release see keys only.
template <class K, class Hash = std::hash<K>, class KeyEqual = std::equal_to<K>, class Policy = default_policy>
class persistent_set {
public:
    using map_type = persistent_map<K, no_value, Hash, KeyEqual, std::equal_to<no_value>, Policy>;
    using trie = typename map_type::trie;
    using node_type = typename trie::node;
    using key_type = K;
    using value_type = typename trie::entry_type;  // has .first, the key
    using size_type = std::size_t;
    using iterator = typename map_type::iterator;
    using const_iterator = iterator;
    using transient_type = transient_set<K, Hash, KeyEqual, Policy>;

    // The empty set has no root at all.
    persistent_set() noexcept = default;
    persistent_set(std::initializer_list<K> keys) : persistent_set(from_range(keys.begin(), keys.end())) {}
    // Copying shares the root (one reference count); moving takes it over.

    void swap(persistent_set& other) noexcept { map_.swap(other.map_); }

    size_type size() const noexcept { return map_.size(); }
    bool empty() const noexcept { return map_.empty(); }

    bool contains(const K& key) const { return map_.find(key) != nullptr; }
    // For callers that already hashed the key with Hash.
    bool contains_hashed(const K& key, hash_t hash) const { return map_.find_hashed(key, hash) != nullptr; }

    // Inserting a key that is present returns this very set.
    [[nodiscard]] persistent_set insert(const K& key) const { return persistent_set(map_.set(key, no_value{})); }
    [[nodiscard]] persistent_set insert_hashed(const K& key, hash_t hash) const {
        return persistent_set(map_.set_hashed(key, no_value{}, hash));
    }

    // Erasing an absent key returns this very set.
    [[nodiscard]] persistent_set erase(const K& key) const { return persistent_set(map_.erase(key)); }
    [[nodiscard]] persistent_set erase_hashed(const K& key, hash_t hash) const {
        return persistent_set(map_.erase_hashed(key, hash));
    }

    // ---- set algebra ----------------------------------------------------------------------
    // Each returns this very set, or `other` itself, when the result holds exactly its keys.

    [[nodiscard]] persistent_set set_union(const persistent_set& other) const {
        if (other.empty() || identical(other)) return *this;
        if (empty()) return other;
        return combine<detail::set_op::union_of>(other, [&](std::size_t added) { return size() + added; });
    }

    [[nodiscard]] persistent_set set_intersection(const persistent_set& other) const {
        if (empty() || identical(other)) return *this;
        if (other.empty()) return other;
        return combine<detail::set_op::intersection>(other, [&](std::size_t removed) { return size() - removed; });
    }

    // The keys of this set that are not in `other`.
    [[nodiscard]] persistent_set set_difference(const persistent_set& other) const {
        if (empty() || other.empty()) return *this;
        if (identical(other)) return persistent_set();
        return combine<detail::set_op::difference>(other, [](std::size_t count) { return count; });
    }

    [[nodiscard]] persistent_set set_symmetric_difference(const persistent_set& other) const {
        if (other.empty()) return *this;
        if (empty()) return other;
        if (identical(other)) return persistent_set();
        return combine<detail::set_op::symmetric_difference>(other, [](std::size_t count) { return count; });
    }

    bool is_subset_of(const persistent_set& other) const {
        if (size() > other.size()) return false;
        if (empty() || identical(other)) return true;
        return algebra::subset(root(), other.root(), 0);
    }
    bool is_superset_of(const persistent_set& other) const { return other.is_subset_of(*this); }

    bool is_disjoint_from(const persistent_set& other) const {
        if (empty() || other.empty()) return true;
        return algebra::disjoint(root(), other.root(), 0);
    }

    // What changed from this set to `newer`: visitor.removed(entry) for each key only this set
    // has, visitor.added(entry) for each key only `newer` has (entries have .first, the key).
    // Shared subtrees are skipped: versions that differ in k keys cost about k log n.
    template <class Visitor>
    void diff(const persistent_set& newer, Visitor&& visitor) const {
        struct keys_only {
            Visitor& v;
            void added(const value_type& e) { v.added(e); }
            void removed(const value_type& e) { v.removed(e); }
            void changed(const value_type&, const value_type&) noexcept {}  // sets have no values
        } adapter{visitor};
        map_.diff(newer.map_, adapter);
    }

    // The same keys. Subtrees shared by pointer are not visited.
    bool operator==(const persistent_set& other) const { return map_ == other.map_; }
    bool operator!=(const persistent_set& other) const { return !(map_ == other.map_); }

    // Whether both sets are the very same version (same root), in O(1).
    bool identical(const persistent_set& other) const noexcept { return map_.identical(other.map_); }

    iterator begin() const noexcept { return map_.begin(); }
    iterator end() const noexcept { return map_.end(); }

    transient_type transient() const { return transient_type(*this); }

    // Builds through a transient; later duplicates are ignored.
    template <class InputIt>
    static persistent_set from_range(InputIt first, InputIt last) {
        transient_type t;
        for (; first != last; ++first) t.insert(*first);
        return t.persistent();
    }

    // Low-level access for bindings and atomic cells: the root, and adopting a reference to one.
    const node_type* root() const noexcept { return map_.root(); }
    static persistent_set adopt(node_type* root, size_type size) noexcept {
        return persistent_set(map_type::adopt(root, size));
    }
    // Gives up this set's reference to its root; the set becomes empty.
    node_type* release_root() noexcept { return map_.release_root(); }

    // The set as a map of its keys to no_value (same nodes).
    const map_type& as_map() const noexcept { return map_; }
    explicit persistent_set(map_type map) noexcept : map_(std::move(map)) {}

private:
    using algebra = detail::set_algebra<trie>;
    using side = typename algebra::side;

    // Runs the walk for Op; `size_of` turns its tally into the result's size. A result that is
    // one of the two roots comes back as that very set.
    template <detail::set_op Op, class SizeOf>
    persistent_set combine(const persistent_set& other, SizeOf size_of) const {
        std::size_t tally = 0;
        const typename algebra::result r =
            algebra::template walk<Op>(side::of(root()), side::of(other.root()), 0, tally, true);
        if (r.n == root() || r.n == other.root()) {
            trie::release(r.n);
            return r.n == root() ? *this : other;
        }
        return adopt(r.n, size_of(tally));
    }

    map_type map_;
};

}  // namespace pypersistent

#include "transient_set.hpp"
