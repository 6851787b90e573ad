// What the C++ stress programs share: failure reporting that any thread may use (CHECK), a
// strict number parser for their options, a node policy that counts allocations, and the thread
// harness of the programs that pit writer threads against reader threads (starting threads at
// once, a small random source, the common options, the first and last lines of output).
#pragma once

#include <pypersistent/policy.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

// ---- thread harness -------------------------------------------------------------------------

// Starts every thread at once (a spin on an atomic flag: the threads are all running before any
// of them starts working), joins them, and turns exceptions into failures. Each thread's checks
// are added to g_checks when it ends.
inline void run_threads(unsigned n, const std::function<void(unsigned)>& body, const char* phase) {
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::exception_ptr> errors(n);
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (unsigned t = 0; t < n; ++t) {
        threads.emplace_back([&, t] {
            ready.fetch_add(1, std::memory_order_acq_rel);
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            try {
                body(t);
            } catch (...) {
                errors[t] = std::current_exception();
            }
            g_checks.fetch_add(std::exchange(t_checks, 0), std::memory_order_relaxed);
        });
    }
    while (ready.load(std::memory_order_acquire) < n) std::this_thread::yield();
    go.store(true, std::memory_order_release);
    for (auto& th : threads) th.join();
    for (unsigned t = 0; t < n; ++t) {
        if (!errors[t]) continue;
        try {
            std::rethrow_exception(errors[t]);
        } catch (const std::exception& e) {
            CHECK(false, "%s: thread %u threw: %s", phase, t, e.what());
        } catch (...) {
            CHECK(false, "%s: thread %u threw a non-standard exception", phase, t);
        }
    }
}

// A small, fast random source (xorshift64), one per thread; the seed is scrambled so that
// neighbouring seeds (seed * k + thread) give unrelated sequences.
struct xorshift_rng {
    std::uint64_t s;
    explicit xorshift_rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
    std::uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    std::uint32_t below(std::uint32_t n) { return static_cast<std::uint32_t>(next() % n); }
};

// The options of a program with writer and reader threads. A program derives its config from
// this, setting its own default for ops and adding its own options.
struct thread_options {
    unsigned threads = 16;   // --threads: writer threads
    std::uint64_t ops = 0;   // --ops: updates per writer thread
    unsigned readers = 4;    // --readers: snapshot reader threads
    std::uint64_t seed = 1;  // --seed
    bool short_run = false;  // --short: a run of a few seconds for CI
    bool ops_given = false;  // --ops was given: --short keeps it
};

// Parses --short, --threads N, --ops N, --readers N, --seed S and -h/--help (usage(argv[0],
// nullptr)) into `o`. Any other argument goes to extra(argument, value), which returns false for
// one it does not know either (then usage(argv[0], "unknown argument ...")); value() takes the
// argument's value, or calls usage() when there is none. usage must not return.
template <class Usage, class Extra>
void parse_thread_options(int argc, char** argv, thread_options& o, Usage usage, Extra extra) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage(argv[0], ("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "--short") {
            o.short_run = true;
        } else if (a == "--threads") {
            o.threads = static_cast<unsigned>(parse_number(argv[0], "--threads", value()));
        } else if (a == "--ops") {
            o.ops = parse_number(argv[0], "--ops", value());
            o.ops_given = true;
        } else if (a == "--readers") {
            o.readers = static_cast<unsigned>(parse_number(argv[0], "--readers", value()));
        } else if (a == "--seed") {
            o.seed = parse_number(argv[0], "--seed", value());
        } else if (a == "-h" || a == "--help") {
            usage(argv[0], nullptr);
        } else if (!extra(a, value)) {
            usage(argv[0], ("unknown argument " + a).c_str());
        }
    }
}

// The ranges every such program accepts (at least min_ops updates per writer); usage() for a
// value outside them.
template <class Usage>
void check_thread_options(const char* argv0, const thread_options& o, std::uint64_t min_ops, Usage usage) {
    if (o.threads < 1 || o.threads > 1000) usage(argv0, "--threads must be in 1..1000");
    if (o.readers > 1000) usage(argv0, "--readers must be in 0..1000");
    if (o.ops < min_ops || o.ops > 100000000)
        usage(argv0, ("--ops must be in " + std::to_string(min_ops) + "..100000000").c_str());
}

// The first line of output: the program and what it runs.
inline void print_start(const char* program, const thread_options& o) {
    std::printf("%s: %u writer threads x %" PRIu64 " ops, %u readers, seed %" PRIu64 "\n", program, o.threads, o.ops,
                o.readers, o.seed);
    std::fflush(stdout);
}

// The last line of output, "<program>: OK|FAILED: N checks, N failures<details>, S s" (details:
// the program's own counts, from ", "), after adding the calling thread's checks; returns the
// exit status: 0 when every check passed, 1 otherwise.
inline int print_end(const char* program, std::chrono::steady_clock::time_point started, const std::string& details = "") {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    g_checks.fetch_add(std::exchange(t_checks, 0), std::memory_order_relaxed);
    const std::uint64_t failures = g_failures.load();
    std::printf("%s: %s: %" PRIu64 " checks, %" PRIu64 " failures%s, %.2f s\n", program, failures ? "FAILED" : "OK",
                g_checks.load(), failures, details.c_str(), seconds);
    return failures ? 1 : 0;
}

}  // namespace stress
