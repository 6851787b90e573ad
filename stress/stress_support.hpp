// What the C++ stress programs share: failure reporting that any thread may use (CHECK), a
// strict number parser for their options, and a node policy that counts allocations.
#pragma once

#include <pypersistent/policy.hpp>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

namespace stress {

// ---- failure reporting ----------------------------------------------------------------------

inline std::atomic<std::uint64_t> g_failures{0};
inline std::atomic<std::uint64_t> g_checks{0};
inline thread_local std::uint64_t t_checks = 0;  // added to g_checks when a thread ends
inline std::mutex g_print_mutex;
constexpr std::uint64_t max_printed_failures = 25;

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4)))
#endif
inline void report_failure(const char* file, int line, const char* fmt, ...) {
    const std::uint64_t n = g_failures.fetch_add(1, std::memory_order_relaxed);
    if (n >= max_printed_failures) return;
    std::lock_guard<std::mutex> lock(g_print_mutex);
    std::fprintf(stderr, "FAILED %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
    if (n + 1 == max_printed_failures) std::fprintf(stderr, "(further failures are counted, not printed)\n");
}

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        ++::stress::t_checks;                                                     \
        if (!(cond)) ::stress::report_failure(__FILE__, __LINE__, __VA_ARGS__);   \
    } while (0)

// A non-negative number (decimal, 0x hex or 0 octal); anything else ends the program with 2.
inline std::uint64_t parse_number(const char* argv0, const char* flag, const char* s) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-') {
        std::fprintf(stderr, "%s: bad number for %s: %s\n", argv0, flag, s);
        std::exit(2);
    }
    return v;
}

// ---- counting node policy -------------------------------------------------------------------
//
// Counts every node allocation with relaxed atomics (any thread may allocate or free a node), so
// a program can check at the end that no node is left alive. Each block carries a small header
// holding the requested size, so a deallocate given a different size than the allocation (a
// node_bytes() mismatch) is caught.

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
