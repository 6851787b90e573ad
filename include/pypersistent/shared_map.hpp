// shared_map: the interpreter-neutral persistent map (keys and values are neutral_value, see
// neutral_value.hpp, where the type itself is declared because a neutral value may hold a map),
// with conveniences for C++ hosts that build configuration or data for Python to read.
//
//   using namespace pypersistent;
//   shared_map config{
//       {"service", "billing"},
//       {"port", 8080},
//       {"ratio", 0.25},
//       {"tags", neutral_value::tuple({"eu", "prod"})},
//       {"db", shared_map{{"host", "db1"}, {"pool", 16}}},
//   };
//   const neutral_value* host = get_in(config, {"db", "host"});   // 'db1'
//   shared_map next = assoc_in(config, {"db", "pool"}, 32);       // config is unchanged
//
// Every shared_map is immutable and may be read from any thread (and, through the Python
// binding, from any interpreter) at once; shared_transient is the single-threaded builder.
// Publishing versions between threads or interpreters goes through an atom<shared_map>
// (shared_atom) or a named cell of the process-wide registry (shared_cell_registry.hpp).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <utility>

#include "atom.hpp"
#include "neutral_value.hpp"

namespace pypersistent {

using shared_atom = atom<shared_map>;

// A map from key/value pairs; later duplicates win (1 and 1.0 are the same key).
inline shared_map make_shared_map(std::initializer_list<std::pair<neutral_value, neutral_value>> items) {
    return shared_map(items);
}

// The value at `path` through nested maps, or nullptr when a key is missing or a value on the
// way is not a map. An empty path is not allowed (returns nullptr).
inline const neutral_value* get_in(const shared_map& m, const neutral_value* path, std::size_t n) {
    const shared_map* current = &m;
    const neutral_value* found = nullptr;
    for (std::size_t i = 0; i < n; ++i) {
        found = current->find(path[i]);
        if (!found) return nullptr;
        if (i + 1 < n) {
            if (!found->is_map()) return nullptr;
            current = &found->as_map();
        }
    }
    return found;
}
inline const neutral_value* get_in(const shared_map& m, std::initializer_list<neutral_value> path) {
    return get_in(m, path.begin(), path.size());
}

// A map with `value` at `path`, creating empty nested maps where keys are missing and replacing
// non-map values on the way. The path must not be empty (the map is returned unchanged if it is).
inline shared_map assoc_in(const shared_map& m, const neutral_value* path, std::size_t n, const neutral_value& value) {
    if (n == 0) return m;
    if (n == 1) return m.set(path[0], value);
    const neutral_value* inner = m.find(path[0]);
    const shared_map base = inner && inner->is_map() ? inner->as_map() : shared_map();
    return m.set(path[0], neutral_value(assoc_in(base, path + 1, n - 1, value)));
}
inline shared_map assoc_in(const shared_map& m, std::initializer_list<neutral_value> path, const neutral_value& value) {
    return assoc_in(m, path.begin(), path.size(), value);
}

}  // namespace pypersistent
