// The census of shared nodes (see gc_census.cpp for the rules), written once for every node type.
//
// A structure's tp_traverse calls traverse_nodes<Traits>(holder, state, roots, count, visit, arg)
// with the roots it holds (a map: its trie's root; a list: its trie's root and its tail). The
// traits tell the census what a node is:
//
//     struct traits {
//         using handle = ...;                          // a node, with whatever its walk needs
//         static bool null(handle);                    // an absent root
//         static const void* key(handle);              // identity of the node in the census
//         static std::uint32_t refs(handle);           // its reference count: its holders
//         static int visit_own(handle, visitproc, void*);   // Py_VISIT of its Python references
//         template <class Edge> static int for_children(handle, Edge&& edge);  // edge(child) for
//                                                     // each child until one returns non-zero
//     };
//
// Node identities are addresses, so node types of different structures share the tables.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <type_traits>

#include "bindings.hpp"

namespace pypersistent::python {

enum class census_mode { outside, decref, reach };

// Which traversal of the collector this is, with the holder registered for a decref pass (a
// second subtraction in the same collection starts a fresh pass). `outside` when the census
// cannot count (outside collections, or out of memory): the caller then visits private nodes
// only. On free-threaded builds the caller holds census.lock. (gc_census.cpp)
census_mode census_enter(gc_census& census, PyObject* holder, visitproc visit, void* arg);

// Visits the references of nodes reachable from `n` through reference-count-1 chains only.
template <class Traits>
int census_visit_private(typename Traits::handle n, visitproc visit, void* arg) {
    if (Traits::refs(n) != 1) return 0;
    if (const int r = Traits::visit_own(n, visit, arg)) return r;
    return Traits::for_children(n, [&](typename Traits::handle child) {
        return census_visit_private<Traits>(child, visit, arg);
    });
}

// One holder's walk in a collection: every reference of the structure from one root or parent
// slot goes through edge(), which applies the census's rules.
template <class Traits>
class census_walk {
public:
    using handle = typename Traits::handle;

    census_walk(gc_census& census, census_mode mode, visitproc visit, void* arg)
        : census_(census), decref_(mode == census_mode::decref), visit_(visit), arg_(arg) {}

    int edge(handle n) {
        const std::uint32_t holders = Traits::refs(n);
        if (holders == 1) return contents(n);
        gc_census::tally* t = nullptr;
        try {
            t = &census_.nodes[Traits::key(n)];
        } catch (const std::bad_alloc&) {
            // No room to count: the decref pass leaves the node uncounted (its contents stay
            // alive); other passes visit it without deduplication.
            return decref_ ? 0 : contents(n);
        }
        if (decref_) {
            if (++t->holders != holders) return 0;
        } else {
            if (t->reach_visit == visit_ && t->reach_arg == arg_) return 0;
            t->reach_visit = visit_;
            t->reach_arg = arg_;
        }
        return contents(n);
    }

private:
    int contents(handle n) {
        if (const int r = Traits::visit_own(n, visit_, arg_)) return r;
        return Traits::for_children(n, [this](handle child) { return edge(child); });
    }

    gc_census& census_;
    const bool decref_;
    const visitproc visit_;
    void* const arg_;
};

// tp_traverse of the references in the structures under `roots` (null roots are skipped), all
// held by `holder`.
template <class Traits>
int traverse_nodes(PyObject* holder, module_state* state, const typename Traits::handle* roots, std::size_t count,
                   visitproc visit, void* arg) {
    bool any = false;
    for (std::size_t i = 0; i < count; ++i) any = any || !Traits::null(roots[i]);
    if (!any) return 0;
    gc_census& census = state->census;
    const auto walk = [&](census_mode mode) -> int {
        census_walk<Traits> w(census, mode, visit, arg);
        for (std::size_t i = 0; i < count; ++i) {
            if (Traits::null(roots[i])) continue;
            if (const int r = w.edge(roots[i])) return r;
        }
        return 0;
    };
#ifdef Py_GIL_DISABLED
    if (census.collector.load(std::memory_order_relaxed) != 0) {
        std::lock_guard<std::mutex> lock(census.lock);
        const census_mode mode = census_enter(census, holder, visit, arg);
        if (mode != census_mode::outside) return walk(mode);
    }
#else
    const census_mode mode = census_enter(census, holder, visit, arg);
    if (mode != census_mode::outside) return walk(mode);
#endif
    for (std::size_t i = 0; i < count; ++i) {
        if (Traits::null(roots[i])) continue;
        if (const int r = census_visit_private<Traits>(roots[i], visit, arg)) return r;
    }
    return 0;
}

// ---- the structures' node traits ----------------------------------------------------------

// The map's CHAMP trie: entries (key, value) and children in every node.
// A CHAMP trie's nodes: the map's (keys and values) and the set's (keys only).
template <class Trie>
struct champ_node_traits {
    using handle = const typename Trie::node*;
    static constexpr bool has_values =
        !std::is_same<std::remove_cv_t<decltype(Trie::entry_type::second)>, pypersistent::no_value>::value;
    static bool null(handle n) noexcept { return n == nullptr; }
    static const void* key(handle n) noexcept { return n; }
    static std::uint32_t refs(handle n) noexcept { return n->refs.load(); }
    static int visit_own(handle n, visitproc visit, void* arg) {
        const auto* entries = Trie::entries(n);
        for (unsigned i = 0, c = Trie::entry_count(n); i < c; ++i) {
            Py_VISIT(entries[i].first);
            if constexpr (has_values) Py_VISIT(entries[i].second);
        }
        return 0;
    }
    template <class Edge>
    static int for_children(handle n, Edge&& edge) {
        const auto* children = Trie::children(n);
        for (unsigned i = 0, c = Trie::child_count(n); i < c; ++i) {
            if (const int r = edge(children[i])) return r;
        }
        return 0;
    }
};
using map_node_traits = champ_node_traits<object_trie>;
using set_node_traits = champ_node_traits<object_set_trie>;

// The list's vector trie: leaves (level 0; the tail is one too) hold values, inner nodes hold
// children one level (5 bits of shift) down. A node does not know its level: the handle does.
struct vector_node_traits {
    struct handle {
        const object_vector_trie::node* node;
        unsigned shift;
    };
    static bool null(handle n) noexcept { return n.node == nullptr; }
    static const void* key(handle n) noexcept { return n.node; }
    static std::uint32_t refs(handle n) noexcept { return n.node->refs.load(); }
    // A leaf holds references to the values it owns, past those it borrows from its lender.
    static int visit_own(handle n, visitproc visit, void* arg) {
        if (n.shift != 0) return 0;
        PyObject* const* values = object_vector_trie::values(n.node);
        for (unsigned i = object_vector_trie::borrowed(n.node), c = n.node->count; i < c; ++i) Py_VISIT(values[i]);
        return 0;
    }
    // An inner node's children, or a leaf's lender (a leaf, which owns the borrowed values).
    template <class Edge>
    static int for_children(handle n, Edge&& edge) {
        if (n.shift == 0) {
            const object_vector_trie::node* lender = object_vector_trie::lender_of(n.node);
            return lender ? edge(handle{lender, 0}) : 0;
        }
        const auto* children = object_vector_trie::children(n.node);
        for (unsigned i = 0, c = n.node->count; i < c; ++i) {
            if (const int r = edge(handle{children[i], n.shift - object_vector_trie::bits})) return r;
        }
        return 0;
    }
};

}  // namespace pypersistent::python
