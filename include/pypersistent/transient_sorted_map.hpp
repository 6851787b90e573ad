// transient_sorted_map: a mutable builder over the same B+-tree as persistent_sorted_map. It
// edits in place the nodes it made itself and copies any node it shares with persistent maps
// the first time it changes it; persistent() freezes the current contents in O(1).
//
// Each edit runs inside the policy's edit_scope (see default_policy), closed only once the
// transient is consistent again. Every operation gives the strong guarantee: if it throws
// (Compare, a copy, an allocation), the transient is unchanged and usable.
//
// Thread safety: a transient is a plain mutable object; one thread at a time may use it. The
// persistent maps it hands out are immutable and may be shared freely.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <utility>

#include "sorted_map.hpp"

namespace pypersistent {

template <class K, class V, class Compare, class Policy>
class transient_sorted_map {
public:
    using persistent_type = persistent_sorted_map<K, V, Compare, Policy>;
    using tree_type = typename persistent_type::tree_type;
    using tree_parts = typename tree_type::tree;
    using node_type = typename tree_type::node;
    using key_type = K;
    using mapped_type = V;
    using value_type = typename persistent_type::value_type;
    using size_type = std::size_t;
    using iterator = typename persistent_type::iterator;
    using const_iterator = iterator;
    using reverse_iterator = typename persistent_type::reverse_iterator;

    transient_sorted_map() : owner_(next_owner_token()) {}
    explicit transient_sorted_map(const persistent_type& base) : t_(base.t_), owner_(next_owner_token()) {
        if (t_.root) tree_type::retain(t_.root);
    }
    transient_sorted_map(const transient_sorted_map&) = delete;
    transient_sorted_map& operator=(const transient_sorted_map&) = delete;
    transient_sorted_map(transient_sorted_map&& o) noexcept : t_(o.t_), owner_(o.owner_) {
        o.t_ = tree_parts{};
        o.owner_ = next_owner_token();
    }
    transient_sorted_map& operator=(transient_sorted_map&& o) noexcept {
        if (this != &o) {
            // Released last: a release may run foreign code that looks at this transient.
            const tree_parts old = t_;
            t_ = o.t_;
            owner_ = o.owner_;
            o.t_ = tree_parts{};
            o.owner_ = next_owner_token();
            tree_type::release(old.root, old.height);
        }
        return *this;
    }
    ~transient_sorted_map() { tree_type::release(t_.root, t_.height); }

    size_type size() const noexcept { return t_.size; }
    bool empty() const noexcept { return t_.size == 0; }

    const V* find(const K& key) const {
        const value_type* e = tree_type::find(t_, key);
        return e ? &e->second : nullptr;
    }
    bool contains(const K& key) const { return tree_type::find(t_, key) != nullptr; }
    const V& at(const K& key) const {
        const V* v = find(key);
        if (!v) throw std::out_of_range("pypersistent::transient_sorted_map::at: key not found");
        return *v;
    }

    // Insert or assign; returns whether the key was new.
    bool set(const K& key, const V& value) {
        [[maybe_unused]] typename Policy::edit_scope scope;
        tree_parts out;
        bool added = false;
        const auto what = tree_type::insert(t_, key, value, owner_, out, added);
        apply(what, out, added ? 1 : 0);
        return added;
    }

    // Returns whether the key was there.
    bool erase(const K& key) {
        [[maybe_unused]] typename Policy::edit_scope scope;
        tree_parts out;
        bool removed = false;
        const auto what = tree_type::erase(t_, key, owner_, out, removed);
        apply(what, out, removed ? -1 : 0);
        return removed;
    }

    // The current contents as a persistent map, in O(1). The transient stays usable: it takes a
    // fresh owner token, so the nodes now shared with the returned map are never edited again.
    persistent_type persistent() {
        if (t_.root) tree_type::retain(t_.root);
        owner_ = next_owner_token();
        return persistent_type(t_);
    }

    // Invalidated by any change to the transient.
    iterator begin() const noexcept { return iterator::first_of(t_.root, t_.height); }
    iterator end() const noexcept { return iterator::end_of(t_.root, t_.height); }
    reverse_iterator rbegin() const noexcept { return reverse_iterator(end()); }
    reverse_iterator rend() const noexcept { return reverse_iterator(begin()); }
    iterator lower_bound(const K& key) const { return iterator::template bound_of<false>(t_.root, t_.height, key); }
    iterator upper_bound(const K& key) const { return iterator::template bound_of<true>(t_.root, t_.height, key); }
    // As persistent_sorted_map's: null when there is no such entry.
    const value_type* ceiling(const K& key) const { return lower_bound(key).operator->(); }
    const value_type* higher(const K& key) const { return upper_bound(key).operator->(); }
    const value_type* floor(const K& key) const { return (--upper_bound(key)).operator->(); }
    const value_type* lower(const K& key) const { return (--lower_bound(key)).operator->(); }
    const value_type* first() const noexcept { return begin().operator->(); }
    const value_type* last() const noexcept { return iterator::last_of(t_.root, t_.height).operator->(); }

    // For bindings and tests: the current nodes, valid until the next change.
    const node_type* root() const noexcept { return t_.root; }
    unsigned height() const noexcept { return t_.height; }
    const tree_parts& parts() const noexcept { return t_; }

private:
    void apply(typename tree_type::outcome what, const tree_parts& out, int delta) noexcept {
        switch (what) {
            case tree_type::outcome::unchanged:
                return;
            case tree_type::outcome::in_place:
                t_.size = static_cast<size_type>(static_cast<std::ptrdiff_t>(t_.size) + delta);
                return;
            case tree_type::outcome::replaced: {
                const tree_parts old = t_;
                t_ = out;
                tree_type::release(old.root, old.height);  // last: may run foreign code
                return;
            }
        }
    }

    tree_parts t_;
    owner_t owner_;
};

}  // namespace pypersistent
