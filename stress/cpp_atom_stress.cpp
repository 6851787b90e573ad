// Multi-threaded stress test for pypersistent::atom and pypersistent::shared_cell (atom.hpp).
//
// Phase 1, counters: W writer threads (--threads, default 16) each publish N updates (--ops,
//   default 10,000; 1,000 with --short) to one atom<persistent_map<uint64_t, uint64_t>>. Each
//   update increments the writer's own counter key and the shared total key together; three in
//   four go through swap(), one in four through a hand-written deref / compare_and_set loop.
//   R reader threads (--readers, default 4) meanwhile take snapshots with deref() and check
//   that each one is consistent (total == sum of the counters, iteration visits size() entries)
//   and that nothing ever goes backwards. At the end every counter equals the number of updates
//   its writer published, and the total equals their sum: no update was lost or applied twice.
//   Each writer also checks that the map swap() returns holds exactly its own count.
//
// Phase 2, reset chain: threads reset() the atom to fresh maps tagged with unique ids. Every
//   version stored must be handed back by exactly one reset() (as the old value), except the
//   one left in the atom at the end: exchange neither loses nor duplicates a version.
//
// Phase 3, shared_cell with a counted value type: threads mix load() (keeping some handles for
//   a while), with_current(), exchange() and compare_exchange() on a shared_cell<counted>.
//   `counted` counts its live instances with a std::atomic and poisons itself when destroyed,
//   so a use after free shows as a bad value (and as an ASan report). Every stored value must
//   leave the cell exactly once (returned by exchange, or replaced by a successful
//   compare_exchange, whose expected handle names it); once all handles are gone exactly one
//   instance (the cell's current value) is alive, and none after the cell is destroyed.
//
// Phase 4, hammer: for --hammer-ms (2 s; 1 s with --short) half the threads exchange() as fast
//   as they can and the other half load() and with_current(); the same exactly-once and
//   live-instance checks.
//
// Map nodes go through a counting policy: after phases 1 and 2 no node is alive.
//
// Usage: cpp_atom_stress [--short] [--threads N] [--ops N] [--readers N] [--hammer-ms MS] [--seed S]
// Exit status: 0 when every check passed, 1 on any failed check, 2 on bad arguments.

#include <pypersistent/atom.hpp>
#include <pypersistent/pypersistent.hpp>

#include "stress_support.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pp = pypersistent;

namespace {

// ---- configuration (the common options and failure reporting: stress_support.hpp) -----------

struct config : stress::thread_options {
    unsigned hammer_ms = 2000;
    bool hammer_given = false;  // --hammer-ms was given: --short keeps it
    bool verbose = false;
    config() { ops = 10000; }
} g_cfg;

using stress::parse_number;
using stress::run_threads;
using rng = stress::xorshift_rng;

// ---- counting node policy (stress_support.hpp) ----------------------------------------------

using stress::counting_policy;
using stress::g_live_nodes;
using stress::g_size_mismatches;

using map_t = pp::persistent_map<std::uint64_t, std::uint64_t, std::hash<std::uint64_t>, std::equal_to<std::uint64_t>,
                                 std::equal_to<std::uint64_t>, counting_policy>;
using atom_t = pp::atom<map_t>;

constexpr std::uint64_t total_key = ~std::uint64_t(0);
constexpr std::uint64_t id_key = ~std::uint64_t(0) - 1;

// ---- phase 1: counters ------------------------------------------------------------------------

// Checks one snapshot; returns its counters (by writer) and total.
bool check_snapshot(const map_t& snap, unsigned writers, std::vector<std::uint64_t>& counters, std::uint64_t& total,
                    const char* who) {
    std::fill(counters.begin(), counters.end(), 0);
    const std::uint64_t* t = snap.find(total_key);
    if (!t) {
        CHECK(false, "%s: snapshot without the total key", who);
        return false;
    }
    total = *t;
    std::uint64_t sum = 0, visited = 0, seen_total = 0;
    bool ok = true;
    for (const auto& e : snap) {
        ++visited;
        if (e.first == total_key) {
            seen_total = e.second;
        } else if (e.first < writers) {
            counters[e.first] = e.second;
            sum += e.second;
        } else {
            CHECK(false, "%s: unexpected key %" PRIu64, who, e.first);
            ok = false;
        }
    }
    CHECK(visited == snap.size(), "%s: iteration visited %" PRIu64 " of %zu entries", who, visited, snap.size());
    CHECK(seen_total == total, "%s: iteration saw total %" PRIu64 ", find saw %" PRIu64, who, seen_total, total);
    CHECK(sum == total, "%s: inconsistent snapshot: total %" PRIu64 " but counters sum to %" PRIu64, who, total, sum);
    return ok && visited == snap.size() && seen_total == total && sum == total;
}

void phase_counters() {
    const unsigned writers = g_cfg.threads;
    const unsigned readers = g_cfg.readers;
    const std::uint64_t ops = g_cfg.ops;
    std::vector<std::uint64_t> published(writers, 0), calls(writers, 0), cas_failures(writers, 0);
    std::vector<std::uint64_t> snapshots(readers, 0);
    std::atomic<unsigned> writers_left{writers};

    {
        atom_t a(map_t{{total_key, 0}});
        run_threads(
            writers + readers,
            [&](unsigned t) {
                if (t < writers) {
                    const std::uint64_t key = t;
                    std::uint64_t done = 0, my_calls = 0, my_failures = 0;
                    auto bump = [&](const map_t& m) {
                        // Now and then give the CPU away between the load and the CAS, so that other
                        // writers publish meanwhile even on few cores (forces retries).
                        if (++my_calls % 16 == 0) std::this_thread::yield();
                        const std::uint64_t* mine = m.find(key);
                        return m.set(key, (mine ? *mine : 0) + 1).set(total_key, m.at(total_key) + 1);
                    };
                    for (std::uint64_t i = 0; i < ops; ++i) {
                        if (i % 4 != 3) {
                            const map_t result = a.swap(bump);
                            ++done;
                            const std::uint64_t* mine = result.find(key);
                            CHECK(mine && *mine == done, "writer %u: swap returned a map with count %" PRIu64
                                  " after %" PRIu64 " updates", t, mine ? *mine : 0, done);
                        } else {
                            while (true) {
                                const map_t cur = a.deref();
                                const map_t next = bump(cur);
                                if (a.compare_and_set(cur, next)) break;
                                ++my_failures;
                            }
                            ++done;
                        }
                    }
                    published[t] = done;
                    calls[t] = my_calls;
                    cas_failures[t] = my_failures;
                    writers_left.fetch_sub(1, std::memory_order_acq_rel);
                    return;
                }
                const unsigned r = t - writers;
                char who[32];
                std::snprintf(who, sizeof who, "reader %u", r);
                std::vector<std::uint64_t> counters(writers), previous(writers, 0);
                std::uint64_t total = 0, previous_total = 0, n = 0;
                std::vector<std::pair<map_t, std::uint64_t>> kept;  // old snapshots, re-checked at the end
                while (true) {
                    const bool last_look = writers_left.load(std::memory_order_acquire) == 0;
                    const map_t snap = a.deref();
                    if (check_snapshot(snap, writers, counters, total, who)) {
                        CHECK(total >= previous_total, "%s: total went back from %" PRIu64 " to %" PRIu64, who,
                              previous_total, total);
                        for (unsigned w = 0; w < writers; ++w) {
                            if (counters[w] < previous[w]) {
                                CHECK(false, "%s: counter %u went back from %" PRIu64 " to %" PRIu64, who, w,
                                      previous[w], counters[w]);
                            }
                        }
                        previous = counters;
                        previous_total = total;
                    }
                    if (n % 64 == 0 && kept.size() < 32) kept.emplace_back(snap, total);
                    ++n;
                    if (last_look) break;
                }
                for (const auto& [snap, t0] : kept) {
                    std::uint64_t t1 = 0;
                    check_snapshot(snap, writers, counters, t1, who);
                    CHECK(t1 == t0, "%s: a kept snapshot changed its total from %" PRIu64 " to %" PRIu64, who, t0, t1);
                }
                snapshots[r] = n;
            },
            "counters");

        const map_t final_map = a.deref();
        std::vector<std::uint64_t> counters(writers);
        std::uint64_t total = 0, expected_total = 0;
        check_snapshot(final_map, writers, counters, total, "final map");
        for (unsigned w = 0; w < writers; ++w) {
            CHECK(published[w] == ops, "writer %u published %" PRIu64 " of %" PRIu64, w, published[w], ops);
            CHECK(counters[w] == published[w], "writer %u: counter %" PRIu64 " != %" PRIu64 " updates published", w,
                  counters[w], published[w]);
            expected_total += published[w];
        }
        CHECK(total == expected_total, "total %" PRIu64 " != %" PRIu64, total, expected_total);
        CHECK(final_map.size() == writers + 1, "final map has %zu entries, expected %u", final_map.size(), writers + 1);
        for (unsigned r = 0; r < readers; ++r) CHECK(snapshots[r] > 0, "reader %u took no snapshot", r);

        std::uint64_t all_calls = 0, failures = 0, reads = 0;
        for (unsigned w = 0; w < writers; ++w) {
            all_calls += calls[w];
            failures += cas_failures[w];
        }
        for (auto n : snapshots) reads += n;
        std::printf("  counters: %u writers x %" PRIu64 " updates: total %" PRIu64
                    " exact; %" PRIu64 " function calls (swap retries + CAS attempts), %" PRIu64
                    " failed compare_and_set; %u readers checked %" PRIu64 " snapshots\n",
                    writers, ops, total, all_calls, failures, readers, reads);
    }
    CHECK(g_live_nodes.load() == 0, "counters: %" PRId64 " map nodes alive after the atom is gone", g_live_nodes.load());
}

// ---- phase 2: reset chain ---------------------------------------------------------------------

void phase_reset_chain() {
    const unsigned threads = g_cfg.threads;
    const std::uint64_t ops = std::max<std::uint64_t>(1, g_cfg.ops / 4);
    const std::uint64_t ids = std::uint64_t(threads) * ops + 1;  // id 0: the initial version
    std::vector<std::atomic<std::uint32_t>> handed_back(ids);
    for (auto& h : handed_back) h.store(0);

    auto make = [](std::uint64_t id) { return map_t{{id_key, id}, {total_key, id * 3}, {id % 97, id}}; };
    auto id_of = [](const map_t& m, const char* who) -> std::uint64_t {
        const std::uint64_t* id = m.find(id_key);
        const std::uint64_t* total = m.find(total_key);
        if (!id || !total || *total != *id * 3 || m.size() != 3) {
            CHECK(false, "%s: a version that was never stored (or was damaged)", who);
            return ~std::uint64_t(0);
        }
        return *id;
    };

    std::uint64_t final_id = 0;
    {
        atom_t a(make(0));
        run_threads(
            threads,
            [&](unsigned t) {
                for (std::uint64_t i = 0; i < ops; ++i) {
                    const std::uint64_t id = 1 + std::uint64_t(t) * ops + i;
                    const map_t old = a.reset(make(id));
                    const std::uint64_t old_id = id_of(old, "reset");
                    if (old_id < ids) {
                        const auto n = handed_back[old_id].fetch_add(1, std::memory_order_relaxed);
                        CHECK(n == 0, "version %" PRIu64 " was handed back by reset() %u times", old_id, n + 1);
                    }
                    if (i % 8 == 0) id_of(a.deref(), "deref");
                }
            },
            "reset chain");
        final_id = id_of(a.deref(), "final");
    }
    std::uint64_t missing = 0;
    for (std::uint64_t id = 0; id < ids; ++id) {
        const auto n = handed_back[id].load();
        if (id == final_id) {
            CHECK(n == 0, "the final version %" PRIu64 " was also handed back", id);
        } else if (n != 1) {
            ++missing;
        }
    }
    CHECK(missing == 0, "%" PRIu64 " versions were never handed back by reset()", missing);
    CHECK(g_live_nodes.load() == 0, "reset chain: %" PRId64 " map nodes alive after the atom is gone",
          g_live_nodes.load());
    std::printf("  reset chain: %u threads x %" PRIu64 " resets: every version handed back exactly once\n", threads,
                ops);
}

// ---- phase 3: shared_cell with a counted value ------------------------------------------------

std::atomic<std::int64_t> g_live_counted{0};
std::atomic<std::uint64_t> g_counted_constructions{0};

constexpr std::uint64_t counted_magic = 0x5EED5EED5EED5EEDull;
constexpr std::uint64_t counted_poison = 0xDEADDEADDEADDEADull;

// Counts live instances (every constructor increments, the destructor decrements) and carries
// a checksum that the destructor destroys.
struct counted {
    std::uint64_t id;
    std::uint64_t check;
    std::unique_ptr<std::uint64_t> heap;  // a heap block per instance: ASan tracks its lifetime

    explicit counted(std::uint64_t i) : id(i), check(i ^ counted_magic), heap(new std::uint64_t(i)) { born(); }
    counted(const counted& o) : id(o.id), check(o.check), heap(new std::uint64_t(*o.heap)) { born(); }
    counted(counted&& o) noexcept : id(o.id), check(o.check), heap(std::move(o.heap)) { born(); }
    counted& operator=(const counted&) = delete;
    counted& operator=(counted&&) = delete;
    ~counted() {
        check = counted_poison;
        g_live_counted.fetch_sub(1, std::memory_order_relaxed);
    }
    bool valid() const { return check == (id ^ counted_magic) && heap && *heap == id; }

private:
    static void born() {
        g_live_counted.fetch_add(1, std::memory_order_relaxed);
        g_counted_constructions.fetch_add(1, std::memory_order_relaxed);
    }
};

using cell_t = pp::shared_cell<counted>;

void phase_shared_cell() {
    const unsigned threads = g_cfg.threads;
    const std::uint64_t ops = g_cfg.ops;
    const std::uint64_t ids = std::uint64_t(threads) * ops + 1;
    // stored[id]: the value went into the cell; left[id]: how many times it left it.
    std::vector<std::atomic<std::uint8_t>> stored(ids);
    std::vector<std::atomic<std::uint32_t>> left(ids);
    for (auto& s : stored) s.store(0);
    for (auto& l : left) l.store(0);
    std::atomic<std::uint64_t> exchanges{0}, cas_ok{0}, cas_failed{0}, loads{0}, withs{0};

    auto leave = [&](std::uint64_t id, const char* how) {
        if (id >= ids) {
            CHECK(false, "%s: value with impossible id %" PRIu64, how, id);
            return;
        }
        const auto n = left[id].fetch_add(1, std::memory_order_relaxed);
        CHECK(n == 0, "%s: value %" PRIu64 " left the cell %u times", how, id, n + 1);
    };

    std::uint64_t final_id = 0;
    {
        cell_t cell(counted(0));
        stored[0].store(1);
        run_threads(
            threads,
            [&](unsigned t) {
                rng r(g_cfg.seed * 1000003 + t);
                std::vector<cell_t::handle> kept(4, cell.load());
                std::uint64_t n_exchanges = 0, n_ok = 0, n_failed = 0, n_loads = 0, n_withs = 0;
                for (std::uint64_t i = 0; i < ops; ++i) {
                    const std::uint64_t id = 1 + std::uint64_t(t) * ops + i;
                    switch (r.below(8)) {
                        case 0:
                        case 1:
                        case 2: {
                            cell_t::handle h = cell.load();
                            CHECK(h->valid(), "load(): a destroyed or damaged value (id %" PRIu64 ")", h->id);
                            cell_t::handle copy = h;  // copies share the store
                            CHECK(copy.same_store(h), "a copied handle names another store");
                            kept[r.below(4)] = std::move(h);  // held across other threads' stores
                            ++n_loads;
                            break;
                        }
                        case 3:
                        case 4: {
                            const bool ok = cell.with_current([](const counted& c) { return c.valid(); });
                            CHECK(ok, "with_current(): a destroyed or damaged value");
                            ++n_withs;
                            break;
                        }
                        case 5: {
                            stored[id].store(1, std::memory_order_relaxed);
                            cell_t::handle old = cell.exchange(counted(id));
                            CHECK(old->valid(), "exchange(): returned a destroyed value");
                            leave(old->id, "exchange");
                            if (r.below(2)) kept[r.below(4)] = std::move(old);
                            ++n_exchanges;
                            break;
                        }
                        default: {
                            cell_t::handle expected = cell.load();
                            if (r.below(4) == 0) std::this_thread::yield();  // let others store meanwhile
                            stored[id].store(1, std::memory_order_relaxed);
                            if (cell.compare_exchange(expected, counted(id))) {
                                CHECK(expected->valid(), "compare_exchange(): the replaced value was destroyed");
                                leave(expected->id, "compare_exchange");
                                ++n_ok;
                            } else {
                                stored[id].store(0, std::memory_order_relaxed);  // never went in
                                CHECK(expected->valid(), "a failed compare_exchange damaged the expected value");
                                ++n_failed;
                            }
                            break;
                        }
                    }
                    if (i % 16 == 0) {
                        for (const auto& h : kept) {
                            CHECK(h->valid(), "a kept handle's value was destroyed (id %" PRIu64 ")", h->id);
                        }
                    }
                }
                exchanges += n_exchanges;
                cas_ok += n_ok;
                cas_failed += n_failed;
                loads += n_loads;
                withs += n_withs;
            },
            "shared_cell");

        final_id = cell.load()->id;
        CHECK(g_live_counted.load() == 1, "shared_cell: %" PRId64 " counted values alive with no handle left (expected 1)",
              g_live_counted.load());
    }
    CHECK(g_live_counted.load() == 0, "shared_cell: %" PRId64 " counted values alive after the cell is gone",
          g_live_counted.load());

    std::uint64_t never_left = 0, left_unstored = 0;
    for (std::uint64_t id = 0; id < ids; ++id) {
        const bool in = stored[id].load() != 0;
        const auto n = left[id].load();
        if (id == final_id) {
            CHECK(in && n == 0, "the final value %" PRIu64 " also left the cell", id);
        } else if (in && n != 1) {
            ++never_left;
        } else if (!in && n != 0) {
            ++left_unstored;
        }
    }
    CHECK(never_left == 0, "%" PRIu64 " stored values never left the cell", never_left);
    CHECK(left_unstored == 0, "%" PRIu64 " values left the cell without ever being stored", left_unstored);
    std::printf("  shared_cell: %u threads x %" PRIu64 " ops: %" PRIu64 " loads, %" PRIu64 " with_current, %" PRIu64
                " exchanges, %" PRIu64 " compare_exchange (%" PRIu64 " failed); %" PRIu64
                " values constructed, 0 alive at the end\n",
                threads, ops, loads.load(), withs.load(), exchanges.load(), cas_ok.load() + cas_failed.load(),
                cas_failed.load(), g_counted_constructions.load());
}

// Phase 4, hammer: half the threads only store (exchange), the other half only read (load and
// drop at once, with_current), as fast as they can. This is the interleaving where a reader that
// lost the race with a store gives back its borrow while the storing thread is between
// publishing the new box and crediting the old box's borrows.
// The race window is a few instructions wide, so this phase runs for a fixed time (--hammer-ms)
// rather than a fixed number of operations; ops bounds the ids a storing thread may use.
void phase_hammer() {
    const unsigned threads = std::max(2u, g_cfg.threads);
    const std::uint64_t ops = std::uint64_t(1) << 22;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(g_cfg.hammer_ms);
    // The multiset of values that left the cell must be {0} + every stored value - the final one.
    // Compared by count, sum and sum of a mixing hash of the ids (cheap enough for the hot loop).
    struct tally {
        std::uint64_t count = 0, sum = 0, mixed = 0;
        void add(std::uint64_t id) {
            ++count;
            sum += id;
            mixed += mix(id);
        }
        static std::uint64_t mix(std::uint64_t x) {
            x += 0x9E3779B97F4A7C15ull;
            x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
            x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
            return x ^ (x >> 31);
        }
    };
    std::vector<tally> left_by(threads);
    std::vector<std::uint64_t> stored_by(threads, 0);
    std::atomic<std::uint64_t> stores{0}, reads{0};
    std::uint64_t final_id = 0;
    {
        cell_t cell(counted(0));
        run_threads(
            threads,
            [&](unsigned t) {
                std::uint64_t n = 0;
                if (t % 2 == 0) {
                    for (std::uint64_t i = 0; i < ops; ++i) {
                        if (i % 256 == 0 && std::chrono::steady_clock::now() >= deadline) break;
                        const std::uint64_t id = 1 + std::uint64_t(t) * ops + i;
                        cell_t::handle old = cell.exchange(counted(id));
                        CHECK(old->valid(), "hammer: exchange() returned a destroyed value");
                        if (old->valid()) left_by[t].add(old->id);
                        ++n;
                    }
                    stored_by[t] = n;
                    stores += n;
                } else {
                    for (std::uint64_t i = 0; i < ops; ++i) {
                        if (i % 256 == 0 && std::chrono::steady_clock::now() >= deadline) break;
                        if (i % 2 == 0) {
                            CHECK(cell.load()->valid(), "hammer: load() saw a destroyed value");
                        } else {
                            const bool ok = cell.with_current([](const counted& c) { return c.valid(); });
                            CHECK(ok, "hammer: with_current() saw a destroyed value");
                        }
                        ++n;
                    }
                    reads += n;
                }
            },
            "hammer");
        final_id = cell.load()->id;
        CHECK(g_live_counted.load() == 1, "hammer: %" PRId64 " counted values alive with no handle left (expected 1)",
              g_live_counted.load());
    }
    CHECK(g_live_counted.load() == 0, "hammer: %" PRId64 " counted values alive after the cell is gone",
          g_live_counted.load());
    // Every stored id (0, and 1 + t * ops + i for i < stored_by[t]) left exactly once, except the
    // final one; no other id left.
    tally left, expected;
    for (const auto& l : left_by) {
        left.count += l.count;
        left.sum += l.sum;
        left.mixed += l.mixed;
    }
    expected.add(0);
    for (unsigned t = 0; t < threads; t += 2)
        for (std::uint64_t i = 0; i < stored_by[t]; ++i) expected.add(1 + std::uint64_t(t) * ops + i);
    expected.count -= 1;
    expected.sum -= final_id;
    expected.mixed -= tally::mix(final_id);
    CHECK(left.count == expected.count && left.sum == expected.sum && left.mixed == expected.mixed,
          "hammer: the values that left the cell are not exactly the stored ones but the last (%" PRIu64
          " left, %" PRIu64 " expected)",
          left.count, expected.count);
    std::printf("  hammer: %u threads: %" PRIu64 " exchanges against %" PRIu64
                " loads / with_current, every value left exactly once, 0 alive at the end\n",
                threads, stores.load(), reads.load());
}

// ---- main -------------------------------------------------------------------------------------

[[noreturn]] void usage(const char* argv0, const char* msg) {
    if (msg) std::fprintf(stderr, "%s: %s\n", argv0, msg);
    std::fprintf(stderr,
                 "usage: %s [--short] [--threads N] [--ops N] [--readers N] [--hammer-ms MS] [--seed S]\n"
                 "  --short      a run of a few seconds for CI (under ThreadSanitizer on 2 cores)\n"
                 "  --threads N  writer threads (default 16)\n"
                 "  --ops N      updates per writer thread (default 10000; 1000 with --short)\n"
                 "  --readers N  snapshot reader threads (default 4)\n"
                 "  --hammer-ms MS  duration of the exchange-vs-readers phase (default 2000; 1000 with --short)\n"
                 "  --seed S     random seed of the shared_cell phase (default 1)\n",
                 argv0);
    std::exit(2);
}


}  // namespace

int main(int argc, char** argv) {
    stress::parse_thread_options(argc, argv, g_cfg, usage, [&](const std::string& a, auto value) {
        if (a == "--hammer-ms") {
            g_cfg.hammer_ms = static_cast<unsigned>(parse_number(argv[0], "--hammer-ms", value()));
            g_cfg.hammer_given = true;
        } else if (a == "--verbose") {
            g_cfg.verbose = true;
        } else {
            return false;
        }
        return true;
    });
    if (g_cfg.short_run && !g_cfg.ops_given) g_cfg.ops = 1000;
    if (g_cfg.short_run && !g_cfg.hammer_given) g_cfg.hammer_ms = 1000;
    stress::check_thread_options(argv[0], g_cfg, 1, usage);

    stress::print_start("cpp_atom_stress", g_cfg);
    const auto t0 = std::chrono::steady_clock::now();

    phase_counters();
    std::fflush(stdout);
    phase_reset_chain();
    std::fflush(stdout);
    phase_shared_cell();
    std::fflush(stdout);
    phase_hammer();
    CHECK(g_size_mismatches.load() == 0, "%" PRIu64 " node deallocations were given a size other than the allocated one",
          g_size_mismatches.load());

    return stress::print_end("cpp_atom_stress", t0,
                             ", " + std::to_string(stress::g_total_allocations.load()) + " map nodes allocated (0 alive)");
}
