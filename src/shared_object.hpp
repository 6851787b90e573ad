// What shared_object.cpp (SharedMap) offers the binding's other files that work with the
// interpreter-neutral map itself: shared_crossinterp.cpp.
#pragma once

#include <pypersistent/shared_map.hpp>

#include "bindings.hpp"

namespace pypersistent::python {

// A new SharedMap object of `state`'s module (the calling interpreter's) over `map`'s trie.
PyObject* new_shared_map_object(module_state* state, const shared_map& map);

// The map of a SharedMap object, or null if `o` is not one.
const shared_map* shared_map_of(PyObject* o) noexcept;

}  // namespace pypersistent::python
