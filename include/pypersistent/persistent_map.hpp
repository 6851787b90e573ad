// persistent_map: an immutable hash map. Every update returns a new map that shares all
// untouched nodes with the old one; the old one never changes.
#pragma once

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <utility>

#include "champ.hpp"
#include "iterator.hpp"
#include "policy.hpp"

namespace pypersistent {

template <class K, class V, class Hash, class KeyEqual, class ValueEqual, class Policy>
class transient_map;

// Hash and the two equalities are stateless function objects, default-constructed where used.
// Any of them may throw; a throwing operation leaves every map as it was.
template <class K, class V, class Hash = std::hash<K>, class KeyEqual = std::equal_to<K>,
          class ValueEqual = std::equal_to<V>, class Policy = default_policy>
class persistent_map {
public:
    using trie = detail::champ<K, V, Hash, KeyEqual, ValueEqual, Policy>;
    using node_type = typename trie::node;
    using key_type = K;
    using mapped_type = V;
    using value_type = typename trie::entry_type;  // has .first and .second
    using size_type = std::size_t;
    using iterator = detail::champ_iterator<trie>;
    using const_iterator = iterator;
    using transient_type = transient_map<K, V, Hash, KeyEqual, ValueEqual, Policy>;

    // The empty map has no root at all, so empty maps never touch a shared counter.
    persistent_map() noexcept = default;

    persistent_map(std::initializer_list<std::pair<K, V>> items) : persistent_map(from_range(items.begin(), items.end())) {}

    persistent_map(const persistent_map& other) noexcept
        : root_(other.root_), size_(other.size_), root_maps_(other.root_maps_) {
        if (root_) trie::retain(root_);
    }
    persistent_map(persistent_map&& other) noexcept : root_(other.root_), size_(other.size_), root_maps_(other.root_maps_) {
        other.root_ = nullptr;
        other.size_ = 0;
        other.root_maps_ = {};
    }
    persistent_map& operator=(const persistent_map& other) noexcept {
        persistent_map(other).swap(*this);
        return *this;
    }
    persistent_map& operator=(persistent_map&& other) noexcept {
        persistent_map(std::move(other)).swap(*this);
        return *this;
    }
    ~persistent_map() { trie::release(root_); }

    void swap(persistent_map& other) noexcept {
        std::swap(root_, other.root_);
        std::swap(size_, other.size_);
        std::swap(root_maps_, other.root_maps_);
    }

    size_type size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }

    const V* find(const K& key) const {
        if (!root_) return nullptr;
        const value_type* e = trie::find(root_, root_maps_, trie::hash_key(key), key);
        return e ? &e->second : nullptr;
    }
    // For callers that already hashed the key with Hash.
    const V* find_hashed(const K& key, hash_t hash) const {
        const value_type* e = trie::find(root_, root_maps_, hash, key);
        return e ? &e->second : nullptr;
    }
    // The entry on hash's path that entry_is_key(const value_type&) accepts, or nullptr (see
    // champ::find_matching): a lookup by another representation of a key, whose Hash is `hash`.
    template <class EntryIsKey>
    PYPERSISTENT_ALWAYS_INLINE const value_type* find_entry_matching(hash_t hash, EntryIsKey&& entry_is_key) const {
        if (!root_) return nullptr;
        return trie::find_matching(root_, root_maps_, hash, entry_is_key);
    }
    bool contains(const K& key) const { return find(key) != nullptr; }
    const V& at(const K& key) const {
        const V* v = find(key);
        if (!v) throw std::out_of_range("pypersistent::persistent_map::at: key not found");
        return *v;
    }

    // Insert or assign. Assigning a value the policy calls the same returns this very map.
    [[nodiscard]] persistent_map set(const K& key, const V& value) const {
        return set_hashed(key, value, trie::hash_key(key));
    }
    [[nodiscard]] persistent_map set_hashed(const K& key, const V& value, hash_t hash) const {
        if (!root_) return persistent_map(trie::make_single(key, value, hash, 0), 1);
        bool added = false;
        node_type* root = trie::assoc(root_, 0, hash, key, value, 0, added);
        if (root == root_) return *this;
        return persistent_map(root, size_ + (added ? 1 : 0));
    }

    // Erasing an absent key returns this very map.
    [[nodiscard]] persistent_map erase(const K& key) const {
        if (!root_) return *this;
        return erase_hashed(key, trie::hash_key(key));
    }
    [[nodiscard]] persistent_map erase_hashed(const K& key, hash_t hash) const {
        if (!root_) return *this;
        bool removed = false;
        node_type* root = trie::dissoc(root_, 0, hash, key, 0, removed);
        if (!removed) return *this;
        return persistent_map(root, size_ - 1);
    }

    // All entries of both maps, `other`'s values winning. Subtrees only one side has, or both
    // share, are reused whole. Returns this very map when `other` changes nothing.
    [[nodiscard]] persistent_map merge(const persistent_map& other) const {
        if (!other.root_ || root_ == other.root_) return *this;
        if (!root_) return other;
        std::size_t added = 0;
        node_type* root = trie::merge(root_, other.root_, 0, added);
        if (root == root_) {
            trie::release(root);
            return *this;
        }
        return persistent_map(root, size_ + added);
    }

    // Same keys with equal values (ValueEqual). Subtrees shared by pointer are not visited.
    bool operator==(const persistent_map& other) const {
        if (size_ != other.size_) return false;
        if (root_ == other.root_) return true;
        return trie::equal(root_, other.root_);
    }
    bool operator!=(const persistent_map& other) const { return !(*this == other); }

    // What changed from this map to `newer`: visitor.removed(entry) for each key only this map
    // has, visitor.added(entry) for each key only `newer` has, visitor.changed(old entry, new
    // entry) for each key whose values are neither the same (Policy::same_value) nor equal
    // (ValueEqual). Entries have .first and .second. Subtrees the two maps share are skipped:
    // versions that differ in k keys cost about k log n, whatever their size.
    template <class Visitor>
    void diff(const persistent_map& newer, Visitor&& visitor) const {
        if (root_ == newer.root_) return;
        if (!root_) {
            trie::for_each_entry(newer.root_, [&visitor](const value_type& e) { visitor.added(e); });
        } else if (!newer.root_) {
            trie::for_each_entry(root_, [&visitor](const value_type& e) { visitor.removed(e); });
        } else {
            trie::diff(root_, newer.root_, 0, visitor);
        }
    }

    // Whether both maps are the very same version (same root), in O(1).
    bool identical(const persistent_map& other) const noexcept { return root_ == other.root_; }

    iterator begin() const noexcept { return iterator(root_); }
    iterator end() const noexcept { return iterator(); }

    transient_type transient() const { return transient_type(*this); }

    // Builds through a transient; later duplicates win, like repeated assignment.
    template <class InputIt>
    static persistent_map from_range(InputIt first, InputIt last) {
        transient_type t;
        for (; first != last; ++first) t.set(first->first, first->second);
        return t.persistent();
    }

    // Low-level access for bindings and atomic cells: the root, and adopting a reference to one.
    const node_type* root() const noexcept { return root_; }
    static persistent_map adopt(node_type* root, size_type size) noexcept { return persistent_map(root, size); }
    // Gives up this map's reference to its root; the map becomes empty.
    node_type* release_root() noexcept {
        node_type* r = root_;
        root_ = nullptr;
        size_ = 0;
        root_maps_ = {};
        return r;
    }

private:
    friend transient_type;
    persistent_map(node_type* root, size_type size) noexcept : root_(root), size_(size), root_maps_(trie::maps_of(root)) {}

    node_type* root_ = nullptr;
    size_type size_ = 0;
    // A copy of the root's datamap and nodemap (zeros for the empty map). The root never
    // changes under a persistent map, and with the copy here a lookup's first step needs no
    // load from the root's header: one dependent load less on the way to the entry.
    typename trie::node_maps root_maps_{};
};

}  // namespace pypersistent

#include "transient_map.hpp"
