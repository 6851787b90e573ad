// The whole header-only core: persistent_map, transient_map, persistent_set, transient_set,
// persistent_vector, transient_vector and their policies.
// No Python here; see python_bridge.hpp for hosts that embed Python.
#pragma once

#include "persistent_map.hpp"
#include "persistent_set.hpp"
#include "persistent_vector.hpp"
#include "policy.hpp"
#include "shared_cell_registry.hpp"
#include "shared_map.hpp"
#include "sorted_map.hpp"
#include "transient_map.hpp"
#include "transient_set.hpp"
#include "transient_vector.hpp"
