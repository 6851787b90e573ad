// transient_set: a mutable builder over persistent_set's trie, a transient_map whose values are
// no_value. It edits in place the nodes it created itself and copies any node it shares with
// persistent sets the first time it changes it; persistent() freezes the current contents into
// a persistent_set in O(1). Each edit runs inside the policy's edit_scope, and every operation
// gives the strong guarantee (see transient_map).
//
// Thread safety: a plain mutable object, one thread at a time. The persistent sets it hands out
// are immutable and may be shared freely.
#pragma once

#include <cstddef>
#include <utility>

#include "persistent_set.hpp"
#include "transient_map.hpp"

namespace pypersistent {

template <class K, class Hash, class KeyEqual, class Policy>
class transient_set {
public:
    using persistent_type = persistent_set<K, Hash, KeyEqual, Policy>;
    using map_type = typename persistent_type::map_type::transient_type;
    using trie = typename persistent_type::trie;
    using node_type = typename trie::node;
    using key_type = K;
    using value_type = typename persistent_type::value_type;
    using size_type = std::size_t;
    using iterator = typename persistent_type::iterator;

    transient_set() = default;
    explicit transient_set(const persistent_type& base) : map_(base.as_map()) {}
    // Move-only, like transient_map.

    size_type size() const noexcept { return map_.size(); }
    bool empty() const noexcept { return map_.empty(); }

    bool contains(const K& key) const { return map_.find(key) != nullptr; }
    bool contains_hashed(const K& key, hash_t hash) const { return map_.find_hashed(key, hash) != nullptr; }

    // Returns whether the key was new (a key already present stays as it is).
    bool insert(const K& key) { return map_.set(key, no_value{}); }
    bool insert_hashed(const K& key, hash_t hash) { return map_.set_hashed(key, no_value{}, hash); }

    // Returns whether the key was there.
    bool erase(const K& key) { return map_.erase(key); }
    bool erase_hashed(const K& key, hash_t hash) { return map_.erase_hashed(key, hash); }

    // The current contents as a persistent set, in O(1). The transient stays usable: it takes a
    // fresh owner token, so the nodes now shared with the returned set are never edited again.
    persistent_type persistent() { return persistent_type(map_.persistent()); }

    // For bindings: the current root, valid until the next change.
    const node_type* root() const noexcept { return map_.root(); }

    // Invalidated by any change to the transient.
    iterator begin() const noexcept { return map_.begin(); }
    iterator end() const noexcept { return map_.end(); }

private:
    map_type map_;
};

}  // namespace pypersistent
