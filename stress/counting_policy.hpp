// The node policy of the C++ stress programs: it counts every node allocation with relaxed
// atomics (any thread may allocate or free a node), so a program can check at the end that no
// node is left alive. Each block carries a small header holding the requested size, so a
// deallocate given a different size than the allocation (a node_bytes() mismatch) is caught.
#pragma once

#include <pypersistent/policy.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

namespace stress {

inline std::atomic<std::int64_t> g_live_nodes{0};
inline std::atomic<std::int64_t> g_live_bytes{0};
inline std::atomic<std::uint64_t> g_total_allocations{0};
inline std::atomic<std::uint64_t> g_size_mismatches{0};

struct counting_policy : pypersistent::default_policy {
    static constexpr std::size_t header = 16;  // keeps operator new's alignment for the node

    static void* allocate(std::size_t bytes) {
        void* raw = ::operator new(bytes + header);
        std::memcpy(raw, &bytes, sizeof bytes);
        g_live_nodes.fetch_add(1, std::memory_order_relaxed);
        g_live_bytes.fetch_add(static_cast<std::int64_t>(bytes), std::memory_order_relaxed);
        g_total_allocations.fetch_add(1, std::memory_order_relaxed);
        return static_cast<char*>(raw) + header;
    }
    static void deallocate(void* p, std::size_t bytes) noexcept {
        char* raw = static_cast<char*>(p) - header;
        std::size_t allocated = 0;
        std::memcpy(&allocated, raw, sizeof allocated);
        if (allocated != bytes) g_size_mismatches.fetch_add(1, std::memory_order_relaxed);
        g_live_nodes.fetch_sub(1, std::memory_order_relaxed);
        g_live_bytes.fetch_sub(static_cast<std::int64_t>(allocated), std::memory_order_relaxed);
        ::operator delete(raw);
    }
};

struct counting_cached_policy : counting_policy {
    static constexpr bool cache_hash = true;
};

}  // namespace stress
