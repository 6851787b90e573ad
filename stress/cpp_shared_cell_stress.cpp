// Multi-threaded stress test for the interpreter-neutral map and the process-wide named cells
// (neutral_value.hpp, shared_map.hpp, shared_cell_registry.hpp).
//
// Phase 1, counters: W writer threads (--threads, default 16, at least 8 recommended) each open
//   their own handle to the named cell "stress.counters" of the process-wide registry and
//   publish N updates (--ops, default 5,000; 500 with --short). Each update increments the
//   writer's own counter (key: the tuple ("writer", t)), the shared "total", a "big total" kept at
//   2^63 - W*N/2 + total (so it crosses from small ints to heap big ints half way), and records
//   the writer's name under "last" (a heap str): three in four through swap(), one in four
//   through deref / compare_and_set. R readers (--readers, default 4) open the cell by name too
//   and check every snapshot: total == sum of the counters, big total consistent with total,
//   totals never go backwards. At the end each counter equals its writer's updates: no update
//   was lost or applied twice.
//
// Phase 2, churn: every thread repeatedly opens one of a few names at random, swaps an
//   increment into it, copies and drops handles, and closes it again, racing against the others'
//   opens and last closes. Each thread checks that its own increment is in the map swap()
//   returned; at the end no cell is left in the registry.
//
// Every neutral heap block (big ints, strings, tuples, maps) is counted: none is alive at the
// end, and the registry holds no cell.
//
// Usage: cpp_shared_cell_stress [--short] [--threads N] [--ops N] [--readers N] [--seed S]
// Exit status: 0 when every check passed, 1 on any failed check, 2 on bad arguments.

#define PYPERSISTENT_NEUTRAL_COUNT_BLOCKS 1
#include <pypersistent/neutral_value.hpp>
#include <pypersistent/shared_cell_registry.hpp>
#include <pypersistent/shared_map.hpp>

#include "stress_support.hpp"

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pp = pypersistent;
using pp::neutral_value;
using pp::shared_cell_registry;
using pp::shared_map;
using nv = neutral_value;

namespace {

struct config : stress::thread_options {
    config() { ops = 5000; }
} g_cfg;

using stress::run_threads;
using rng = stress::xorshift_rng;

const char* const counters_cell = "stress.counters";

nv writer_key(unsigned t) { return nv::tuple({"writer", t}); }

// The big total for a given total: 2^63 - half + total, as an unsigned 64-bit value (a small int
// below 2^63, a heap big int from there on).
nv big_total(std::uint64_t base, std::uint64_t total) { return nv(base + total); }

std::uint64_t int_of(const nv* v) { return v && v->is_small_int() ? static_cast<std::uint64_t>(v->as_int64()) : 0; }

// ---- phase 1: counters ------------------------------------------------------------------------

bool check_snapshot(const shared_map& snap, unsigned writers, std::uint64_t base, std::uint64_t& total, const char* who) {
    const nv* t = snap.find("total");
    if (!t) {
        CHECK(snap.empty(), "%s: snapshot without a total", who);
        total = 0;
        return true;
    }
    total = int_of(t);
    std::uint64_t sum = 0;
    for (unsigned w = 0; w < writers; ++w) sum += int_of(snap.find(writer_key(w)));
    std::uint64_t visited = 0;
    for (auto it = snap.begin(); it != snap.end(); ++it) ++visited;
    const nv* bt = snap.find("big total");
    const bool big_ok = bt && *bt == big_total(base, total);
    const nv* last = snap.find("last");
    const bool last_ok = last && last->is_str() && last->str_view().substr(0, 7) == "writer-";
    CHECK(sum == total, "%s: total %" PRIu64 " but the counters sum to %" PRIu64, who, total, sum);
    CHECK(visited == snap.size(), "%s: iteration visited %" PRIu64 " of %zu entries", who, visited, snap.size());
    CHECK(big_ok, "%s: big total %s does not match total %" PRIu64, who, bt ? bt->repr().c_str() : "(none)", total);
    CHECK(last_ok, "%s: bad 'last' entry", who);
    return sum == total && big_ok && last_ok;
}

void phase_counters() {
    const unsigned writers = g_cfg.threads;
    const unsigned readers = g_cfg.readers;
    const std::uint64_t ops = g_cfg.ops;
    const std::uint64_t base = (std::uint64_t(1) << 63) - writers * ops / 2;
    std::vector<std::uint64_t> published(writers, 0), cas_failures(writers, 0), snapshots(readers, 0);
    std::atomic<unsigned> writers_left{writers};
    // Held across the phase, so that the cell outlives the threads' own handles.
    auto keeper = shared_cell_registry::instance().open(counters_cell);

    run_threads(
        writers + readers,
        [&](unsigned t) {
            auto cell = shared_cell_registry::instance().open(counters_cell);
            if (t < writers) {
                const nv key = writer_key(t);
                const nv name("writer-" + std::to_string(t));
                std::uint64_t calls = 0;
                auto bump = [&](const shared_map& m) {
                    if (++calls % 16 == 0) std::this_thread::yield();  // let others publish in between
                    const std::uint64_t total = int_of(m.find("total")) + 1;
                    return m.set(key, int_of(m.find(key)) + 1)
                        .set("total", total)
                        .set("big total", big_total(base, total))
                        .set("last", name);
                };
                std::uint64_t done = 0;
                for (std::uint64_t i = 0; i < ops; ++i) {
                    if (i % 4 != 3) {
                        const shared_map result = cell.swap(bump);
                        ++done;
                        CHECK(int_of(result.find(key)) == done, "writer %u: swap returned count %" PRIu64 " after %" PRIu64,
                              t, int_of(result.find(key)), done);
                    } else {
                        while (true) {
                            const shared_map seen = cell.deref();
                            if (cell.compare_and_set(seen, bump(seen))) break;
                            ++cas_failures[t];
                        }
                        ++done;
                    }
                }
                published[t] = done;
                writers_left.fetch_sub(1, std::memory_order_acq_rel);
            } else {
                const unsigned r = t - writers;
                std::uint64_t last_total = 0;
                char who[32];
                std::snprintf(who, sizeof who, "reader %u", r);
                while (true) {
                    const bool finished = writers_left.load(std::memory_order_acquire) == 0;
                    std::uint64_t total = 0;
                    check_snapshot(cell.deref(), writers, base, total, who);
                    CHECK(total >= last_total, "%s: total went back from %" PRIu64 " to %" PRIu64, who, last_total, total);
                    last_total = total;
                    ++snapshots[r];
                    if (finished) break;
                    std::this_thread::yield();
                }
            }
        },
        "counters");

    CHECK(keeper.use_count() == 1, "counters: %" PRIu64 " handles left", keeper.use_count());
    const shared_map final_map = keeper.deref();
    std::uint64_t total = 0, expected_total = 0, failures = 0, reads = 0;
    check_snapshot(final_map, writers, base, total, "final");
    for (unsigned w = 0; w < writers; ++w) {
        const std::uint64_t got = int_of(final_map.find(writer_key(w)));
        CHECK(got == published[w], "writer %u: counter %" PRIu64 " but %" PRIu64 " updates published", w, got, published[w]);
        expected_total += published[w];
        failures += cas_failures[w];
    }
    for (auto s : snapshots) reads += s;
    CHECK(total == expected_total, "final total %" PRIu64 ", expected %" PRIu64, total, expected_total);
    const nv* bt = final_map.find("big total");
    CHECK(bt && bt->is_big_int(), "the big total should have become a big int: %s", bt ? bt->repr().c_str() : "(none)");
    std::printf("  counters: %" PRIu64 " updates by %u writers, %" PRIu64 " CAS retries, %" PRIu64
                " snapshots checked by %u readers; big total %s\n",
                total, writers, failures, reads, readers, bt ? bt->repr().c_str() : "(none)");
}

// ---- phase 2: open / close churn --------------------------------------------------------------

void phase_churn() {
    const unsigned threads = g_cfg.threads;
    const std::uint64_t rounds = g_cfg.ops / 2 + 1;
    std::atomic<std::uint64_t> fresh_opens{0};
    run_threads(
        threads,
        [&](unsigned t) {
            rng r(g_cfg.seed * 1000 + t);
            const nv me = nv::tuple({"churner", t});
            for (std::uint64_t i = 0; i < rounds; ++i) {
                const std::string name = "stress.churn." + std::to_string(r.next() % 3);
                auto cell = shared_cell_registry::instance().open(name);
                if (cell.deref().empty()) fresh_opens.fetch_add(1, std::memory_order_relaxed);
                const shared_map after = cell.swap([&](const shared_map& m) {
                    return m.set(me, int_of(m.find(me)) + 1).set("payload", nv::tuple({name, i}));
                });
                CHECK(int_of(after.find(me)) >= 1, "churner %u: own increment missing", t);
                {
                    auto copy = cell;
                    auto moved = std::move(copy);
                    CHECK(moved.same_cell(cell), "churner %u: a copied handle names another cell", t);
                }
                if (r.next() % 8 == 0) std::this_thread::yield();
            }
        },
        "churn");
    for (int k = 0; k < 3; ++k) {
        const std::string name = "stress.churn." + std::to_string(k);
        CHECK(!shared_cell_registry::instance().contains(name), "%s is still registered", name.c_str());
    }
    std::printf("  churn: %u threads x %" PRIu64 " open/swap/close rounds, %" PRIu64 " opens found a fresh cell\n",
                threads, rounds, fresh_opens.load());
}

[[noreturn]] void usage(const char* argv0, const char* error) {
    if (error) std::fprintf(stderr, "%s: %s\n", argv0, error);
    std::fprintf(stderr, "usage: %s [--short] [--threads N] [--ops N] [--readers N] [--seed S]\n", argv0);
    std::exit(error ? 2 : 0);
}

}  // namespace

int main(int argc, char** argv) {
    stress::parse_thread_options(argc, argv, g_cfg, usage, [](const std::string&, auto) { return false; });
    if (g_cfg.short_run && !g_cfg.ops_given) g_cfg.ops = 500;
    stress::check_thread_options(argv[0], g_cfg, 2, usage);

    stress::print_start("cpp_shared_cell_stress", g_cfg);
    const auto t0 = std::chrono::steady_clock::now();

    phase_counters();
    std::fflush(stdout);
    CHECK(shared_cell_registry::instance().size() == 0, "%zu cells left open after phase 1",
          shared_cell_registry::instance().size());
    phase_churn();
    CHECK(shared_cell_registry::instance().size() == 0, "%zu cells left open after phase 2",
          shared_cell_registry::instance().size());
    const std::int64_t alive = pp::neutral_detail::live_blocks.load();
    CHECK(alive == 0, "%" PRId64 " neutral heap blocks still alive", alive);

    return stress::print_end("cpp_shared_cell_stress", t0);
}
