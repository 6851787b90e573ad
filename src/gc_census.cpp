// What the cycle collector sees through trie nodes that several maps (or lists) share. The walk
// itself, written once for every node type through small traits, is in gc_census.hpp.
//
// Nodes are not Python objects, so the collector cannot count their references itself. A map's
// tp_traverse shows it the Python references in the map's trie, and the census below makes it
// see each shared node exactly as it would see a GC object holding those references:
//
// - In the phase that subtracts internal references (CPython's subtract_refs / update_refs,
//   visit_decref), a node's contents are visited once, and only once every one of its holders
//   (its reference count: the roots and parent slots that point to it) has been traversed in
//   this pass. A node that some holder outside the collected set keeps (an older generation, a
//   live transient, a C++ host, a frozen object) never completes, so its contents keep counting
//   as external references: they are never mistaken for garbage.
// - In every other traversal of a collection (reachability marking, finalizer reachability...)
//   a shared node's contents are visited the first time any holder reaches it in that pass:
//   visiting more than the collector's model would is harmless there, and visiting once per
//   pass keeps the cost to the number of distinct nodes, not versions times size.
// - Outside collections (gc.get_referents, and whenever the census cannot tell what is
//   happening) only nodes that the map reaches through reference-count-1 chains are visited:
//   references that belong to it alone. That errs on the side of keeping objects alive.
//
// Telling the phases apart. A collection runs between the "start" and "stop" calls of
// gc.callbacks, where the module registers census_callback. Inside it, the decref pass is the
// traversal whose `arg` is the traversed object itself on GIL builds (subtract_refs passes the
// parent) and NULL on free-threaded builds (update_refs, and the resurrection check's
// visit_decref_unreachable); every other collector traversal passes a list or stack. A
// collection may subtract twice (the resurrection check after finalizers runs on the garbage
// again): a decref traversal after a reachability traversal, or of a holder already counted,
// starts a new pass with fresh counts.
//
// Thread-safety: GIL builds keep one census per interpreter (module state) and touch it with
// that interpreter's GIL held. Free-threaded builds collect with the world stopped, on the thread
// that received "start"; traversals on other threads (gc.get_referents runs without stopping
// the world) take the outside-collections path. A mutex guards the tallies against the one
// race left, a hand-made call of the callback while another thread traverses: the collector
// itself never waits on it, since no thread can be stopped while holding it (nothing under
// it reaches a safe point).
#include <mutex>
#include <new>

#include "gc_census.hpp"

namespace pypersistent::python {
namespace {

census_mode classify(gc_census& census, PyObject* holder, visitproc visit, void* arg) {
#ifdef Py_GIL_DISABLED
    if (census.collector.load(std::memory_order_relaxed) != PyThread_get_thread_ident()) return census_mode::outside;
    (void)holder;
    (void)visit;
    return arg == nullptr ? census_mode::decref : census_mode::reach;
#else
    if (!census.collecting) return census_mode::outside;
    if (arg != holder) return census_mode::reach;
    // Debug builds also validate a newly tracked object with arg == the object: only the
    // collection's own decref visitor counts.
    if (!census.decref_visit) census.decref_visit = visit;
    return visit == census.decref_visit ? census_mode::decref : census_mode::outside;
#endif
}

}  // namespace

census_mode census_enter(gc_census& census, PyObject* holder, visitproc visit, void* arg) {
    const census_mode mode = classify(census, holder, visit, arg);
    if (mode == census_mode::outside) return mode;
    if (mode == census_mode::reach) {
        census.reached = true;
        return mode;
    }
    // A second subtraction in the same collection (the resurrection check) starts afresh.
    try {
        const bool counted_before = !census.holders.insert(holder).second;
        if (census.reached || counted_before) {
            census.reset();
            census.holders.insert(holder);
        }
    } catch (const std::bad_alloc&) {
        return census_mode::outside;  // cannot count: private nodes only
    }
    return mode;
}

int traverse_trie(PyObject* holder, module_state* state, const object_trie::node* root, visitproc visit, void* arg) {
    return traverse_nodes<map_node_traits>(holder, state, &root, 1, visit, arg);
}

void gc_census::reset() noexcept {
    nodes.clear();
    holders.clear();
    reached = false;
}

// gc.callbacks entry: census_callback(phase, info). `self` is the module state's capsule.
PyObject* census_callback(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs < 1 || !PyUnicode_Check(args[0])) Py_RETURN_NONE;
    auto* state = static_cast<module_state*>(PyCapsule_GetPointer(self, "pypersistent._state"));
    if (!state) return nullptr;
    gc_census& census = state->census;
    const bool start = PyUnicode_CompareWithASCIIString(args[0], "start") == 0;
    if (!start && PyUnicode_CompareWithASCIIString(args[0], "stop") != 0) Py_RETURN_NONE;
#ifdef Py_GIL_DISABLED
    std::lock_guard<std::mutex> lock(census.lock);
    census.collector.store(start ? PyThread_get_thread_ident() : 0, std::memory_order_relaxed);
#else
    census.collecting = start;
#endif
    census.decref_visit = nullptr;
    census.reset();
    // Give the memory back between collections.
    if (!start) {
        decltype(census.nodes)().swap(census.nodes);
        decltype(census.holders)().swap(census.holders);
    }
    Py_RETURN_NONE;
}

}  // namespace pypersistent::python
