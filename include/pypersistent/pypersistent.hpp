// The whole header-only core: persistent_map, transient_map and their policies.
// No Python here; see bridge.hpp for hosts that embed Python.
#pragma once

#include "persistent_map.hpp"
#include "policy.hpp"
#include "transient_map.hpp"
