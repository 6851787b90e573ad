// persistent_vector: an immutable sequence. Every update returns a new vector that shares all
// untouched nodes with the old one; the old one never changes. Indexing, set, push_back and
// pop_back are O(log32 n) (push_back and pop_back reach into the trie once every 32 calls);
// take() is O(log32 n); drop(), a slice that does not start at 0, and concatenation copy the
// elements they keep from the second part, O(n).
#pragma once

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <utility>

#include "policy.hpp"
#include "vector_trie.hpp"

namespace pypersistent {

template <class T, class Policy>
class transient_vector;

// Copying a value may throw; a throwing operation leaves every vector as it was.
template <class T, class Policy = default_policy>
class persistent_vector {
public:
    using trie = detail::vector_trie<T, Policy>;
    using node_type = typename trie::node;
    using parts_type = typename trie::parts;
    using value_type = T;
    using size_type = std::size_t;
    using difference_type = std::ptrdiff_t;
    using reference = const T&;
    using const_reference = const T&;
    using iterator = detail::vector_iterator<trie>;
    using const_iterator = iterator;
    using transient_type = transient_vector<T, Policy>;

    // The empty vector has no nodes at all, so empty vectors never touch a shared counter.
    persistent_vector() noexcept = default;

    persistent_vector(std::initializer_list<T> items) : persistent_vector(from_range(items.begin(), items.end())) {}

    template <class InputIt, class = typename std::iterator_traits<InputIt>::iterator_category>
    persistent_vector(InputIt first, InputIt last) : persistent_vector(from_range(first, last)) {}

    persistent_vector(const persistent_vector& other) noexcept : p_(other.p_) { trie::retain_parts(p_); }
    persistent_vector(persistent_vector&& other) noexcept { p_.take_from(other.p_); }
    persistent_vector& operator=(const persistent_vector& other) noexcept {
        persistent_vector(other).swap(*this);
        return *this;
    }
    persistent_vector& operator=(persistent_vector&& other) noexcept {
        persistent_vector old(std::move(*this));  // released last
        p_.take_from(other.p_);
        return *this;
    }
    ~persistent_vector() { trie::release_parts(p_); }

    void swap(persistent_vector& other) noexcept {
        parts_type mine(p_);
        p_ = other.p_;
        other.p_ = mine;
    }

    size_type size() const noexcept { return p_.size; }
    bool empty() const noexcept { return p_.size == 0; }

    // Unchecked: i < size().
    const T& operator[](size_type i) const noexcept {
        const node_type* leaf = i >= trie::tail_offset(p_.size) ? p_.tail : trie::descend(p_.root, p_.shift, i);
        return trie::values(leaf)[i & trie::mask];
    }
    const T& at(size_type i) const {
        if (i >= p_.size) throw std::out_of_range("pypersistent::persistent_vector::at: index out of range");
        return (*this)[i];
    }
    // Unchecked: the vector is not empty.
    const T& front() const noexcept { return (*this)[0]; }
    const T& back() const noexcept { return trie::values(p_.tail)[trie::tail_count(p_.size) - 1]; }

    [[nodiscard]] persistent_vector push_back(const T& value) const {
        persistent_vector out;
        trie::push_back(p_, value, out.p_);
        return out;
    }

    // Assigning a value the policy calls the same returns this very vector.
    [[nodiscard]] persistent_vector set(size_type i, const T& value) const {
        if (i >= p_.size) throw std::out_of_range("pypersistent::persistent_vector::set: index out of range");
        persistent_vector out;
        if (i >= trie::tail_offset(p_.size)) {
            node_type* tail = trie::with_value(p_.tail, static_cast<unsigned>(i & trie::mask), value, 0);
            if (tail == p_.tail) return *this;
            if (p_.root) trie::retain(p_.root);
            out.p_ = parts_type(p_.root, tail, p_.size, p_.shift);
        } else {
            node_type* root = trie::assoc(p_.root, p_.shift, i, value, 0);
            if (root == p_.root) return *this;
            trie::retain(p_.tail);
            out.p_ = parts_type(root, p_.tail, p_.size, p_.shift);
        }
        return out;
    }

    [[nodiscard]] persistent_vector pop_back() const {
        if (p_.size == 0) throw std::out_of_range("pypersistent::persistent_vector::pop_back: empty vector");
        persistent_vector out;
        trie::pop_back(p_, out.p_);
        return out;
    }

    // The first n elements (all of them if n >= size()), sharing every leaf but the new tail.
    [[nodiscard]] persistent_vector take(size_type n) const {
        if (n >= p_.size) return *this;
        persistent_vector out;
        if (n > 0) trie::take(p_, n, out.p_);
        return out;
    }
    // All but the first n elements: a copy of them, O(size() - n).
    [[nodiscard]] persistent_vector drop(size_type n) const { return slice(n, p_.size); }
    // Elements [first, last), both clamped to size(). O(log n) when first is 0, else O(last - first).
    [[nodiscard]] persistent_vector slice(size_type first, size_type last) const {
        if (last > p_.size) last = p_.size;
        if (first >= last) return persistent_vector();
        if (first == 0) return take(last);
        transient_type t;
        iterator it = iterator_at(first);
        for (size_type i = first; i < last; ++i, ++it) t.push_back(*it);
        return t.persistent();
    }

    // This vector followed by `other`: O(other.size()) (the elements of `other` are copied),
    // O(1) when either is empty.
    [[nodiscard]] persistent_vector concat(const persistent_vector& other) const {
        if (other.empty()) return *this;
        if (empty()) return other;
        transient_type t(*this);
        for (const T& v : other) t.push_back(v);
        return t.persistent();
    }
    [[nodiscard]] persistent_vector operator+(const persistent_vector& other) const { return concat(other); }

    // Same size and equal elements by `eq`, compared in index order; subtrees both vectors share
    // are not visited.
    template <class Equal = std::equal_to<T>>
    bool equal(const persistent_vector& other, Equal eq = Equal()) const {
        return trie::equal(p_, other.p_, eq);
    }
    bool operator==(const persistent_vector& other) const { return equal(other); }
    bool operator!=(const persistent_vector& other) const { return !equal(other); }

    // Whether both are the very same version (same nodes), in O(1).
    bool identical(const persistent_vector& other) const noexcept {
        return p_.root == other.p_.root && p_.tail == other.p_.tail && p_.size == other.p_.size;
    }

    iterator begin() const noexcept { return iterator(p_, 0); }
    iterator end() const noexcept { return iterator(); }
    // At element i (the end if i >= size()), in O(log n).
    iterator iterator_at(size_type i) const noexcept { return iterator(p_, i); }

    transient_type transient() const { return transient_type(*this); }

    template <class InputIt>
    static persistent_vector from_range(InputIt first, InputIt last) {
        transient_type t;
        for (; first != last; ++first) t.push_back(*first);
        return t.persistent();
    }

    // Low-level access for bindings and atomic cells: the nodes, and adopting references to them.
    const node_type* root() const noexcept { return p_.root; }
    const node_type* tail() const noexcept { return p_.tail; }
    unsigned shift() const noexcept { return p_.shift; }
    const parts_type& parts() const noexcept { return p_; }
    // Takes over one reference to each of raw.root and raw.tail.
    static persistent_vector adopt(const parts_type& raw) noexcept { return persistent_vector(raw); }
    // Gives up this vector's references to its nodes; the vector becomes empty.
    parts_type release_parts() noexcept {
        parts_type out;
        out.take_from(p_);
        return out;
    }

private:
    friend transient_type;
    explicit persistent_vector(const parts_type& raw) noexcept : p_(raw) {}

    parts_type p_;
};

}  // namespace pypersistent

#include "transient_vector.hpp"
