// Multi-threaded stress test of persistent_sorted_map / transient_sorted_map (the B+-tree).
//
// Threads share persistent sorted maps whose *nodes* are shared while the map *objects* move
// from thread to thread. Each thread repeatedly:
//
//   - takes a version out of a shared lock-free slot (std::atomic<box*>, exchanged: whoever takes
//     a box out owns it exclusively), or falls back to one of its own versions or to a read-only
//     base version that every thread reads at the same time;
//   - derives new versions from it: chains of persistent set/erase (runs of neighbouring keys, so
//     that leaves split and merge), transient batches frozen with persistent() and then edited
//     further (the frozen version must not change);
//   - takes slices (subseq: new versions sharing the subtrees inside the range);
//   - verifies every version it touches against its model (a std::map): iteration in order both
//     ways, lookups, floor/ceiling, a range, equality with a version rebuilt from scratch, and
//     now and then diff against the version it was derived from;
//   - hands versions to other threads through the slots, keeps some for a while and re-verifies
//     them later, and drops the rest.
//
// Two maps move together in each version, holding the same keys:
//   u64   persistent_sorted_map<uint64_t, uint64_t>, node memory and retains counted
//   str   persistent_sorted_map<uint64_t, std::string> (heap strings: ASan sees their lifetimes)
//
// After every map is gone the live node and byte counts and the net retain count must be 0.
// Exit status: 0 when every check passed, 1 on any failed check, 2 on bad arguments.

#include <pypersistent/sorted_map.hpp>

#include "stress_support.hpp"

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pp = pypersistent;

namespace {

using stress::g_checks;
using stress::g_failures;
using stress::g_live_bytes;
using stress::g_live_nodes;
using stress::g_size_mismatches;
using stress::g_total_allocations;
using stress::parse_number;
using stress::t_checks;

inline std::atomic<std::int64_t> g_net_retained{0};

// Node memory counted (stress_support.hpp), and every retain of a u64 key or value matched.
struct sorted_counting_policy : stress::counting_policy {
    static void retain(const std::uint64_t&) noexcept { g_net_retained.fetch_add(1, std::memory_order_relaxed); }
    static void release(const std::uint64_t&) noexcept { g_net_retained.fetch_sub(1, std::memory_order_relaxed); }
    template <class T>
    static void retain(const T&) noexcept {}
    template <class T>
    static void release(const T&) noexcept {}
};

using u64_map = pp::persistent_sorted_map<std::uint64_t, std::uint64_t, std::less<std::uint64_t>, sorted_counting_policy>;
using str_map = pp::persistent_sorted_map<std::uint64_t, std::string, std::less<std::uint64_t>, stress::counting_policy>;
using model = std::map<std::uint64_t, std::uint64_t>;

inline std::uint64_t splitmix(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

struct rng {
    std::uint64_t state;
    explicit rng(std::uint64_t seed) : state(splitmix(seed)) {}
    std::uint64_t next() noexcept { return splitmix(state++); }
    std::uint32_t below(std::uint32_t n) noexcept { return static_cast<std::uint32_t>((next() >> 32) * n >> 32); }
    bool chance(std::uint32_t percent) noexcept { return below(100) < percent; }
};

inline std::string str_of(std::uint64_t v) { return "value-" + std::to_string(v) + "-padding-to-defeat-sso"; }

struct config {
    unsigned threads = 16;
    std::uint64_t ops = 400;
    std::uint64_t seed = 1;
    std::uint32_t universe = 4096;
    unsigned slots = 0;
} g_cfg;

struct version {
    u64_map u64;
    str_map str;
    std::shared_ptr<const model> m;
};

struct box {
    version v;
};

std::vector<std::atomic<box*>>* g_slots = nullptr;
const std::vector<version>* g_bases = nullptr;
std::atomic<std::uint64_t> g_versions_made{0};
std::atomic<std::uint64_t> g_handoffs{0};

// Keys are spread over the 64-bit range but keep the order of their index.
inline std::uint64_t key_of(std::uint32_t i) noexcept { return (std::uint64_t(i) << 32) | (splitmix(i) & 0xFFFF); }

void verify(const version& v, rng& r, bool full, const char* where) {
    const model& m = *v.m;
    CHECK(v.u64.size() == m.size() && v.str.size() == m.size(), "%s: sizes %zu/%zu, model %zu", where, v.u64.size(),
          v.str.size(), m.size());
    if (full) {
        auto it = m.begin();
        auto s = v.str.begin();
        bool same = true;
        for (const auto& e : v.u64) {
            if (it == m.end() || s == v.str.end() || e.first != it->first || e.second != it->second ||
                s->first != it->first || s->second != str_of(it->second)) {
                same = false;
                break;
            }
            ++it;
            ++s;
        }
        CHECK(same && it == m.end(), "%s: forward iteration differs from the model", where);
        auto rit = m.rbegin();
        std::size_t back = 0;
        for (auto e = v.u64.rbegin(); e != v.u64.rend() && rit != m.rend(); ++e, ++rit, ++back) {
            if (e->first != rit->first) break;
        }
        CHECK(back == m.size(), "%s: reverse iteration differs from the model", where);
    }
    for (int i = 0; i < 16; ++i) {
        const std::uint64_t k = key_of(r.below(g_cfg.universe)) + (r.chance(30) ? 1 : 0);
        auto f = m.find(k);
        const std::uint64_t* got = v.u64.find(k);
        CHECK((got != nullptr) == (f != m.end()) && (!got || *got == f->second), "%s: find differs", where);
        const std::string* gs = v.str.find(k);
        CHECK((gs != nullptr) == (f != m.end()) && (!gs || *gs == str_of(f->second)), "%s: str find differs", where);
        auto lb = m.lower_bound(k);
        const auto* c = v.u64.ceiling(k);
        CHECK((c == nullptr) == (lb == m.end()) && (!c || c->first == lb->first), "%s: ceiling differs", where);
        auto ub = m.upper_bound(k);
        const auto* fl = v.u64.floor(k);
        CHECK((fl == nullptr) == (ub == m.begin()) && (!fl || fl->first == std::prev(ub)->first), "%s: floor differs", where);
    }
    const std::uint64_t lo = key_of(r.below(g_cfg.universe)), hi = lo + (std::uint64_t(r.below(64)) << 32);
    auto it = m.lower_bound(lo);
    bool same = true;
    for (const auto& e : v.u64.range(lo, hi)) {
        if (it == m.end() || it->first != e.first) {
            same = false;
            break;
        }
        ++it;
    }
    CHECK(same && (it == m.end() || it->first >= hi), "%s: range differs", where);
}

// A map rebuilt from scratch by a transient in a random order.
version rebuild(const model& m, rng& r) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> items(m.begin(), m.end());
    for (std::size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[r.below(static_cast<std::uint32_t>(i))]);
    u64_map::transient_type a;
    str_map::transient_type b;
    for (const auto& [k, val] : items) {
        a.set(k, val);
        b.set(k, str_of(val));
    }
    version v;
    v.u64 = a.persistent();
    v.str = b.persistent();
    v.m = std::make_shared<const model>(m);
    return v;
}

// What from.diff(to) reports, counted, against the models' difference.
struct diff_counts {
    std::size_t added = 0, removed = 0, changed = 0;
};
struct diff_counter {
    diff_counts& c;
    template <class E>
    void added(const E&) { ++c.added; }
    template <class E>
    void removed(const E&) { ++c.removed; }
    template <class E>
    void changed(const E&, const E&) { ++c.changed; }
};
void check_diff(const version& from, const version& to) {
    diff_counts want, got, got_str;
    for (const auto& [k, val] : *from.m) {
        auto it = to.m->find(k);
        if (it == to.m->end()) ++want.removed;
        else if (it->second != val) ++want.changed;
    }
    for (const auto& kv : *to.m) want.added += from.m->count(kv.first) == 0 ? 1 : 0;
    from.u64.diff(to.u64, diff_counter{got});
    from.str.diff(to.str, diff_counter{got_str});
    CHECK(got.added == want.added && got.removed == want.removed && got.changed == want.changed &&
              got_str.added == want.added && got_str.removed == want.removed && got_str.changed == want.changed,
          "diff differs from the models: +%zu -%zu ~%zu, model +%zu -%zu ~%zu", got.added, got.removed, got.changed,
          want.added, want.removed, want.changed);
}

version derive(const version& from, rng& r) {
    model m = *from.m;
    version v;
    if (r.chance(15)) {
        // A slice: shares every subtree inside the range with `from`.
        const std::uint64_t lo = key_of(r.below(g_cfg.universe));
        const std::uint64_t hi = lo + (std::uint64_t(r.below(g_cfg.universe / 2 + 1)) << 32);
        v.u64 = from.u64.subseq(&lo, &hi);
        v.str = from.str.subseq(&lo, &hi);
        m.erase(m.begin(), m.lower_bound(lo));
        m.erase(m.lower_bound(hi), m.end());
    } else if (r.chance(50)) {
        // Persistent chains over a run of neighbouring keys.
        v.u64 = from.u64;
        v.str = from.str;
        const std::uint32_t start = r.below(g_cfg.universe);
        const std::uint32_t len = 1 + r.below(80);
        const bool erase = r.chance(45);
        for (std::uint32_t i = start; i < start + len && i < g_cfg.universe; ++i) {
            const std::uint64_t k = key_of(i);
            if (erase) {
                v.u64 = v.u64.erase(k);
                v.str = v.str.erase(k);
                m.erase(k);
            } else {
                const std::uint64_t val = r.next() & 0xFFFFFF;
                v.u64 = v.u64.set(k, val);
                v.str = v.str.set(k, str_of(val));
                m[k] = val;
            }
        }
    } else {
        // A transient batch, frozen halfway (the frozen version must not change).
        auto a = from.u64.transient();
        auto b = from.str.transient();
        model half;
        u64_map frozen;
        const std::uint32_t n = 1 + r.below(300);
        for (std::uint32_t j = 0; j < n; ++j) {
            const std::uint64_t k = key_of(r.below(g_cfg.universe));
            if (r.chance(40)) {
                const bool had = m.erase(k) == 1;
                CHECK(a.erase(k) == had && b.erase(k) == had, "transient erase disagrees");
            } else {
                const std::uint64_t val = r.next() & 0xFFFFFF;
                const bool added = m.count(k) == 0;
                CHECK(a.set(k, val) == added && b.set(k, str_of(val)) == added, "transient set disagrees");
                m[k] = val;
            }
            if (j == n / 2) {
                frozen = a.persistent();
                half = m;
            }
        }
        v.u64 = a.persistent();
        v.str = b.persistent();
        CHECK(frozen.size() == half.size(), "frozen transient version changed size");
        auto it = half.begin();
        bool same = true;
        for (const auto& e : frozen) {
            if (it == half.end() || e.first != it->first || e.second != it->second) {
                same = false;
                break;
            }
            ++it;
        }
        CHECK(same, "frozen transient version changed");
    }
    v.m = std::make_shared<const model>(std::move(m));
    if (r.chance(25)) check_diff(from, v);
    g_versions_made.fetch_add(1, std::memory_order_relaxed);
    return v;
}

void worker(unsigned id) {
    rng r(g_cfg.seed * 0x100000001B3ull + id);
    std::vector<version> mine;
    for (std::uint64_t op = 0; op < g_cfg.ops; ++op) {
        version base;
        std::unique_ptr<box> taken;
        const unsigned slot = r.below(static_cast<std::uint32_t>(g_slots->size()));
        taken.reset((*g_slots)[slot].exchange(nullptr));
        if (taken) {
            base = std::move(taken->v);
            verify(base, r, r.chance(20), "taken");
        } else if (!mine.empty() && r.chance(50)) {
            base = mine[r.below(static_cast<std::uint32_t>(mine.size()))];
        } else {
            base = (*g_bases)[r.below(static_cast<std::uint32_t>(g_bases->size()))];
        }
        version next = derive(base, r);
        verify(next, r, r.chance(10), "derived");
        verify(base, r, false, "base after derive");
        if (r.chance(5)) {
            version again = rebuild(*next.m, r);
            CHECK(again.u64 == next.u64 && next.u64 == again.u64 && again.str == next.str, "rebuilt version unequal");
        }
        if (r.chance(40)) {
            std::unique_ptr<box> b(new box{std::move(next)});
            box* old = (*g_slots)[r.below(static_cast<std::uint32_t>(g_slots->size()))].exchange(b.release());
            delete old;
            g_handoffs.fetch_add(1, std::memory_order_relaxed);
        } else if (r.chance(50)) {
            if (mine.size() >= 8) {
                verify(mine.front(), r, true, "kept");
                mine.erase(mine.begin());
            }
            mine.push_back(std::move(next));
        }
    }
    for (const version& v : mine) verify(v, r, true, "kept at exit");
    g_checks.fetch_add(t_checks);
}

[[noreturn]] void usage(const char* argv0, const char* msg) {
    if (msg) std::fprintf(stderr, "%s: %s\n", argv0, msg);
    std::fprintf(stderr,
                 "usage: %s [--short] [--threads N] [--ops N] [--seed S] [--keys N]\n"
                 "  --short      a run of a few seconds for CI (under ThreadSanitizer on 2 cores)\n"
                 "  --threads N  worker threads (default 16)\n"
                 "  --ops N      derivation steps per thread (default 400; 60 with --short)\n"
                 "  --seed S     random seed (default 1)\n"
                 "  --keys N     size of the key universe (default 4096; 1024 with --short)\n",
                 argv0);
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    bool short_run = false, ops_given = false, keys_given = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage(argv[0], ("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "--short") {
            short_run = true;
        } else if (a == "--threads") {
            g_cfg.threads = static_cast<unsigned>(parse_number(argv[0], "--threads", value()));
        } else if (a == "--ops") {
            g_cfg.ops = parse_number(argv[0], "--ops", value());
            ops_given = true;
        } else if (a == "--seed") {
            g_cfg.seed = parse_number(argv[0], "--seed", value());
        } else if (a == "--keys") {
            g_cfg.universe = static_cast<std::uint32_t>(parse_number(argv[0], "--keys", value()));
            keys_given = true;
        } else if (a == "-h" || a == "--help") {
            usage(argv[0], nullptr);
        } else {
            usage(argv[0], ("unknown argument " + a).c_str());
        }
    }
    if (short_run) {
        if (!ops_given) g_cfg.ops = 60;
        if (!keys_given) g_cfg.universe = 1024;
    }
    if (g_cfg.threads < 1 || g_cfg.threads > 1000) usage(argv[0], "--threads must be in 1..1000");
    if (g_cfg.universe < 16 || g_cfg.universe > (1u << 22)) usage(argv[0], "--keys must be in 16..4194304");
    g_cfg.slots = 2 * g_cfg.threads;

    std::printf("cpp_sorted_map_stress: %u threads x %" PRIu64 " ops, %u keys, seed %" PRIu64 "\n", g_cfg.threads,
                g_cfg.ops, g_cfg.universe, g_cfg.seed);
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    {
        std::vector<std::atomic<box*>> slots(g_cfg.slots);
        for (auto& s : slots) s.store(nullptr);
        g_slots = &slots;
        std::vector<version> bases;
        {
            rng r(g_cfg.seed ^ 0xBA5E);
            bases.push_back(version{u64_map(), str_map(), std::make_shared<const model>()});
            model third, all;
            for (std::uint32_t i = 0; i < g_cfg.universe; ++i) {
                all[key_of(i)] = i;
                if (i % 3 == 0) third[key_of(i)] = i;
            }
            bases.push_back(rebuild(third, r));
            bases.push_back(rebuild(all, r));
            for (const version& v : bases) verify(v, r, true, "base");
        }
        g_bases = &bases;
        std::vector<std::thread> threads;
        std::vector<std::exception_ptr> errors(g_cfg.threads);
        for (unsigned t = 0; t < g_cfg.threads; ++t) {
            threads.emplace_back([t, &errors] {
                try {
                    worker(t);
                } catch (...) {
                    errors[t] = std::current_exception();
                }
            });
        }
        for (auto& th : threads) th.join();
        for (unsigned t = 0; t < g_cfg.threads; ++t) {
            if (!errors[t]) continue;
            try {
                std::rethrow_exception(errors[t]);
            } catch (const std::exception& e) {
                CHECK(false, "thread %u threw: %s", t, e.what());
            }
        }
        rng r(g_cfg.seed ^ 0xD0);
        for (auto& s : slots) {
            std::unique_ptr<box> b(s.exchange(nullptr));
            if (b) verify(b->v, r, true, "box left in a slot");
        }
        for (const version& v : bases) verify(v, r, true, "base at exit");
        g_bases = nullptr;
        g_slots = nullptr;
    }  // every map is gone here
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(g_live_nodes.load() == 0, "live node counter is %" PRId64 " after every map was dropped", g_live_nodes.load());
    CHECK(g_live_bytes.load() == 0, "live byte counter is %" PRId64 " after every map was dropped", g_live_bytes.load());
    CHECK(g_net_retained.load() == 0, "net retains %" PRId64 " after every map was dropped", g_net_retained.load());
    CHECK(g_size_mismatches.load() == 0, "%" PRIu64 " deallocations with a wrong size", g_size_mismatches.load());
    g_checks.fetch_add(t_checks);
    std::printf("cpp_sorted_map_stress: %.2fs, %" PRIu64 " versions made, %" PRIu64 " handoffs, %" PRIu64
                " node allocations, %" PRIu64 " checks, %" PRIu64 " failures\n",
                secs, g_versions_made.load(), g_handoffs.load(), g_total_allocations.load(), g_checks.load(),
                g_failures.load());
    if (g_failures.load() != 0) {
        std::printf("cpp_sorted_map_stress: FAILED\n");
        return 1;
    }
    std::printf("cpp_sorted_map_stress: OK\n");
    return 0;
}
