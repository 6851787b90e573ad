// Iteration over a trie in its canonical order: a node's entries (by ascending fragment), then
// its children, depth first. The state is one frame per level, so it is O(depth), never O(n).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>

#include "champ.hpp"

namespace pypersistent {
namespace detail {

template <class Trie>
class champ_iterator {
    using node = typename Trie::node;

public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = typename Trie::entry_type;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    champ_iterator() noexcept = default;  // the end

    explicit champ_iterator(const node* root) noexcept {
        if (!root) return;
        push(root);
        if (current_ == end_) next_node();
    }

    reference operator*() const noexcept { return *current_; }
    pointer operator->() const noexcept { return current_; }

    champ_iterator& operator++() noexcept {
        if (++current_ == end_) next_node();
        return *this;
    }
    champ_iterator operator++(int) noexcept {
        champ_iterator old = *this;
        ++*this;
        return old;
    }

    bool operator==(const champ_iterator& other) const noexcept { return current_ == other.current_; }
    bool operator!=(const champ_iterator& other) const noexcept { return current_ != other.current_; }

private:
    void push(const node* n) noexcept {
        ++depth_;
        stack_[depth_] = n;
        next_child_[depth_] = 0;
        current_ = Trie::entries(n);
        end_ = current_ + Trie::entry_count(n);
    }

    // The current node's entries are exhausted: go on to the next node, in pre-order, that has
    // entries of its own.
    void next_node() noexcept {
        while (depth_ >= 0) {
            const node* n = stack_[depth_];
            if (next_child_[depth_] < Trie::child_count(n)) {
                push(Trie::children(n)[next_child_[depth_]++]);
                if (current_ != end_) return;
            } else {
                --depth_;
            }
        }
        current_ = end_ = nullptr;
    }

    const node* stack_[max_depth + 1] = {};
    std::uint8_t next_child_[max_depth + 1] = {};
    int depth_ = -1;
    const value_type* current_ = nullptr;
    const value_type* end_ = nullptr;
};

}  // namespace detail
}  // namespace pypersistent
