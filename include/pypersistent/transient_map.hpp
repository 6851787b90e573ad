// transient_map: a mutable builder over the same trie. It edits in place the nodes it created
// itself and copies any node it shares with persistent maps the first time it changes it;
// persistent() freezes the current contents into a persistent_map in O(1).
//
// Each edit runs inside the policy's edit_scope (see default_policy), closed only once the
// transient is consistent again.
//
// Thread safety: a transient is a plain mutable object. One thread at a time may use it (the
// Python binding wraps every call in a per-object critical section). The persistent maps it
// hands out are immutable and may be shared freely.
#pragma once

#include <cstddef>
#include <utility>

#include "persistent_map.hpp"

namespace pypersistent {

template <class K, class V, class Hash, class KeyEqual, class ValueEqual, class Policy>
class transient_map {
public:
    using persistent_type = persistent_map<K, V, Hash, KeyEqual, ValueEqual, Policy>;
    using trie = typename persistent_type::trie;
    using node_type = typename trie::node;
    using value_type = typename persistent_type::value_type;
    using size_type = std::size_t;
    using iterator = typename persistent_type::iterator;

    transient_map() : owner_(next_owner_token()) {}
    explicit transient_map(const persistent_type& base) : root_(base.root_), size_(base.size_), owner_(next_owner_token()) {
        if (root_) trie::retain(root_);
    }
    transient_map(const transient_map&) = delete;
    transient_map& operator=(const transient_map&) = delete;
    transient_map(transient_map&& other) noexcept : root_(other.root_), size_(other.size_), owner_(other.owner_) {
        other.root_ = nullptr;
        other.size_ = 0;
        other.owner_ = next_owner_token();
    }
    transient_map& operator=(transient_map&& other) noexcept {
        if (this != &other) {
            // Released last: a release may run foreign code that looks at this transient.
            node_type* old = root_;
            root_ = other.root_;
            size_ = other.size_;
            owner_ = other.owner_;
            other.root_ = nullptr;
            other.size_ = 0;
            other.owner_ = next_owner_token();
            trie::release(old);
        }
        return *this;
    }
    ~transient_map() { trie::release(root_); }

    size_type size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }

    const V* find(const K& key) const {
        if (!root_) return nullptr;
        const value_type* e = trie::find(root_, trie::hash_key(key), key);
        return e ? &e->second : nullptr;
    }
    const V* find_hashed(const K& key, hash_t hash) const {
        const value_type* e = trie::find(root_, hash, key);
        return e ? &e->second : nullptr;
    }
    // persistent_map::find_entry_matching: the entry on hash's path that
    // entry_is_key(const value_type&) accepts, or nullptr.
    template <class EntryIsKey>
    PYPERSISTENT_ALWAYS_INLINE const value_type* find_entry_matching(hash_t hash, EntryIsKey&& entry_is_key) const {
        if (!root_) return nullptr;
        return trie::find_matching(root_, trie::maps_of(root_), hash, entry_is_key);
    }
    bool contains(const K& key) const { return find(key) != nullptr; }

    // Insert or assign; returns whether the key was new.
    bool set(const K& key, const V& value) { return set_hashed(key, value, trie::hash_key(key)); }
    bool set_hashed(const K& key, const V& value, hash_t hash) {
        [[maybe_unused]] typename Policy::edit_scope scope;
        if (!root_) {
            root_ = trie::make_single(key, value, hash, owner_);
            size_ = 1;
            return true;
        }
        const bool root_owned = trie::owned_by(root_, owner_);
        bool added = false;
        replace_root(trie::assoc(root_, 0, hash, key, value, owner_, added), root_owned);
        if (added) ++size_;
        return added;
    }

    // Returns whether the key was there.
    bool erase(const K& key) {
        if (!root_) return false;
        return erase_hashed(key, trie::hash_key(key));
    }
    // Strong guarantee, like every operation: if anything throws, the transient is unchanged.
    bool erase_hashed(const K& key, hash_t hash) {
        if (!root_) return false;
        [[maybe_unused]] typename Policy::edit_scope scope;
        const bool root_owned = trie::owned_by(root_, owner_);
        bool removed = false;
        replace_root(trie::dissoc(root_, 0, hash, key, owner_, removed), root_owned);
        if (removed) --size_;
        return removed;
    }

    // Adds all of `other`, its values winning, reusing its subtrees.
    void merge(const persistent_type& other) {
        if (!other.root_) return;
        if (!root_) {
            trie::retain(other.root_);
            root_ = other.root_;
            size_ = other.size_;
            return;
        }
        [[maybe_unused]] typename Policy::edit_scope scope;
        std::size_t added = 0;
        node_type* merged = trie::merge(root_, other.root_, 0, added);
        node_type* old = root_;
        root_ = merged;
        size_ += added;
        trie::release(old);
        // The merged nodes are not ours but may point to nodes that are: freeze those, or a
        // later in-place edit could free a node that an unowned parent still points to.
        owner_ = next_owner_token();
    }

    // The current contents as a persistent map, in O(1). The transient stays usable: it takes a
    // fresh owner token, so the nodes now shared with the returned map are never edited again.
    persistent_type persistent() {
        if (root_) trie::retain(root_);
        owner_ = next_owner_token();
        return persistent_type(root_, size_);
    }

    // For bindings: the current root, valid until the next change.
    const node_type* root() const noexcept { return root_; }

    // Invalidated by any change to the transient.
    iterator begin() const noexcept { return iterator(root_); }
    iterator end() const noexcept { return iterator(); }

private:
    // The trie operations consume an owned node exactly when they return a different one.
    void replace_root(node_type* new_root, bool old_root_owned) noexcept {
        if (new_root == root_) return;
        node_type* old = root_;
        root_ = new_root;
        if (!old_root_owned) trie::release(old);
    }

    node_type* root_ = nullptr;
    size_type size_ = 0;
    owner_t owner_;
};

}  // namespace pypersistent
