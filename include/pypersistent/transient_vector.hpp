// transient_vector: a mutable builder over the same trie. It edits in place the nodes it made
// itself and copies any node it shares with persistent vectors the first time it changes it;
// persistent() freezes the current contents into a persistent_vector in O(1).
//
// Each edit runs inside the policy's edit_scope (see default_policy), closed only once the
// transient is consistent again. Every operation gives the strong guarantee: if it throws, the
// transient is unchanged and usable.
//
// Thread safety: a transient is a plain mutable object. One thread at a time may use it. The
// persistent vectors it hands out are immutable and may be shared freely.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <utility>

#include "persistent_vector.hpp"

namespace pypersistent {

template <class T, class Policy>
class transient_vector {
public:
    using persistent_type = persistent_vector<T, Policy>;
    using trie = typename persistent_type::trie;
    using node_type = typename trie::node;
    using parts_type = typename trie::parts;
    using value_type = T;
    using size_type = std::size_t;
    using iterator = typename persistent_type::iterator;
    using const_iterator = iterator;

    transient_vector() : owner_(next_owner_token()) {}
    explicit transient_vector(const persistent_type& base) : p_(base.p_), owner_(next_owner_token()) {
        trie::retain_parts(p_);
    }
    transient_vector(const transient_vector&) = delete;
    transient_vector& operator=(const transient_vector&) = delete;
    transient_vector(transient_vector&& other) noexcept : owner_(other.owner_) {
        p_.take_from(other.p_);
        other.owner_ = next_owner_token();
    }
    transient_vector& operator=(transient_vector&& other) noexcept {
        if (this != &other) {
            // Released last: a release may run foreign code that looks at this transient.
            parts_type old;
            old.take_from(p_);
            p_.take_from(other.p_);
            owner_ = other.owner_;
            other.owner_ = next_owner_token();
            trie::release_parts(old);
        }
        return *this;
    }
    ~transient_vector() { trie::release_parts(p_); }

    size_type size() const noexcept { return p_.size; }
    bool empty() const noexcept { return p_.size == 0; }

    // Unchecked: i < size().
    const T& operator[](size_type i) const noexcept { return trie::values(trie::leaf_for(p_, i))[i & trie::mask]; }
    const T& at(size_type i) const {
        if (i >= p_.size) throw std::out_of_range("pypersistent::transient_vector::at: index out of range");
        return (*this)[i];
    }
    // Unchecked: the vector is not empty.
    const T& front() const noexcept { return (*this)[0]; }
    const T& back() const noexcept { return trie::values(p_.tail)[trie::tail_count(p_.size) - 1]; }

    void push_back(const T& value) {
        [[maybe_unused]] typename Policy::edit_scope scope;
        // A non-empty tail with room that this transient made: the value goes straight in.
        const size_type size = p_.size;
        const unsigned in_tail = static_cast<unsigned>(size & trie::mask);
        node_type* tail = p_.tail;
        if (in_tail != 0 && tail->owner == owner_) {
            trie::append_value_at(tail, in_tail, value);
            p_.size = size + 1;
            return;
        }
        push_back_slow(value);
    }

    void set(size_type i, const T& value) {
        if (i >= p_.size) throw std::out_of_range("pypersistent::transient_vector::set: index out of range");
        [[maybe_unused]] typename Policy::edit_scope scope;
        if (i >= trie::tail_offset(p_.size)) {
            replace_tail(trie::with_value(p_.tail, static_cast<unsigned>(i & trie::mask), value, owner_));
        } else {
            replace_root(trie::assoc(p_.root, p_.shift, i, value, owner_), p_.shift);
        }
    }

    void pop_back() {
        if (p_.size == 0) throw std::out_of_range("pypersistent::transient_vector::pop_back: empty vector");
        [[maybe_unused]] typename Policy::edit_scope scope;
        if (p_.size == 1) {
            parts_type old;
            old.take_from(p_);
            trie::release_parts(old);
            return;
        }
        const size_type tree_size = trie::tail_offset(p_.size);
        const unsigned count = static_cast<unsigned>(p_.size - tree_size);
        if (count > 1) {
            if (trie::owned_by(p_.tail, owner_)) {
                // Uncounted before it is destroyed: the leaf never shows a dead value.
                T& last = trie::values(p_.tail)[--p_.tail->count];
                --p_.size;
                trie::destroy_value(last);
            } else {
                node_type* tail = trie::copy_leaf(p_.tail, count - 1, trie::branches, owner_);
                --p_.size;
                replace_tail(tail);
            }
            return;
        }
        // The trie's last leaf becomes the tail.
        node_type* leaf = const_cast<node_type*>(trie::leaf_for(p_, tree_size - 1));
        trie::retain(leaf);
        typename trie::node_guard new_tail{leaf, 0};
        unsigned shift = p_.shift;
        node_type* root = trie::pop_leaf(p_.root, shift, tree_size - 1, owner_);
        // Nothing below throws.
        const unsigned old_shift = p_.shift;
        --p_.size;
        p_.shift = shift;
        replace_root(root, old_shift);
        replace_tail(new_tail.hand_over());
    }

    // The current contents as a persistent vector, in O(1). The transient stays usable: it takes
    // a fresh owner token, so the nodes now shared with the returned vector are never edited again.
    persistent_type persistent() {
        trie::retain_parts(p_);
        owner_ = next_owner_token();
        return persistent_type(p_);
    }

    // For bindings: the current nodes, valid until the next change.
    const node_type* root() const noexcept { return p_.root; }
    const node_type* tail() const noexcept { return p_.tail; }
    unsigned shift() const noexcept { return p_.shift; }
    const parts_type& parts() const noexcept { return p_; }

    // Invalidated by any change to the transient.
    iterator begin() const noexcept { return iterator(p_, 0); }
    iterator end() const noexcept { return iterator(); }
    iterator iterator_at(size_type i) const noexcept { return iterator(p_, i); }

private:
    // Out of line, so that a loop of push_backs keeps its own state in registers.
    PYPERSISTENT_NOINLINE
    void push_back_slow(const T& value) {
        if (!p_.tail) {
            p_.tail = trie::single_leaf(value, trie::branches, owner_);
            p_.size = 1;
            return;
        }
        const size_type tree_size = trie::tail_offset(p_.size);
        const unsigned count = static_cast<unsigned>(p_.size - tree_size);
        if (count < trie::branches) {  // a tail shared with persistent vectors: copy it first
            typename trie::node_guard tail{trie::copy_leaf(p_.tail, count, trie::branches, owner_), 0};
            trie::append_value(tail.n, value);
            ++p_.size;
            replace_tail(tail.hand_over());
            return;
        }
        // The full tail moves into the trie and a new one starts.
        typename trie::node_guard tail{trie::single_leaf(value, trie::branches, owner_), 0};
        unsigned shift = p_.shift;
        node_type* root = trie::push_leaf(p_.root, shift, tree_size, p_.tail, owner_);
        // Nothing below throws.
        const unsigned old_shift = p_.shift;
        ++p_.size;
        p_.shift = shift;
        replace_root(root, old_shift);
        replace_tail(tail.hand_over());  // drops the old tail's reference: the trie holds its own
    }

    // The node operations return the node itself after an in-place edit, else a new reference
    // to what replaces it; the transient then drops its reference to the old one (last, since a
    // release may run foreign code).
    void replace_root(node_type* root, unsigned old_shift) noexcept {
        if (root == p_.root) return;
        node_type* old = p_.root;
        p_.root = root;
        trie::release(old, old_shift);
    }
    void replace_tail(node_type* tail) noexcept {
        if (tail == p_.tail) return;
        node_type* old = p_.tail;
        p_.tail = tail;
        trie::release(old, 0);
    }

    parts_type p_;
    owner_t owner_;
};

}  // namespace pypersistent
