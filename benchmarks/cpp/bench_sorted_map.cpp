// A small, dependency-free benchmark of persistent_sorted_map against std::map (plain
// std::chrono timing, ns/op printed): 100K random int keys inserted one by one (persistent
// updates, a transient, and std::map), lookups of present and absent keys, in-order iteration,
// floor queries, erase of every key one by one, and a persistent update with the old version
// kept (std::map: copy + insert, at a smaller size since it is O(n)).
//
//   ./build-bench/benchmarks/cpp/bench_sorted_map [n]      (default n = 100000)

#include <pypersistent/sorted_map.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <vector>

namespace {

using pmap = pypersistent::persistent_sorted_map<std::int64_t, std::int64_t>;
using clock_type = std::chrono::steady_clock;

volatile std::int64_t g_sink = 0;

template <class F>
double ns_per_op(std::size_t ops, F&& f) {
    // Best of three runs.
    double best = 1e300;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = clock_type::now();
        f();
        const double ns = std::chrono::duration<double, std::nano>(clock_type::now() - t0).count();
        best = std::min(best, ns / static_cast<double>(ops));
    }
    return best;
}

void row(const char* what, double ours, double theirs) {
    std::printf("%-34s %10.1f %10.1f %8.2fx\n", what, ours, theirs, ours / theirs);
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t n = argc > 1 ? static_cast<std::size_t>(std::strtoull(argv[1], nullptr, 10)) : 100000;
    std::mt19937_64 rng(42);
    std::vector<std::int64_t> keys(n), absent(n);
    for (auto& k : keys) k = static_cast<std::int64_t>(rng() >> 1) | 1;  // odd: present
    for (auto& k : absent) k = static_cast<std::int64_t>(rng() >> 1) & ~std::int64_t(1);  // even: absent
    std::vector<std::int64_t> probe = keys;
    std::shuffle(probe.begin(), probe.end(), rng);

    std::printf("n = %zu                          persistent_sorted_map   std::map   ratio (ns/op)\n", n);
    pmap built;
    std::map<std::int64_t, std::int64_t> ref;
    const double ins_p = ns_per_op(n, [&] {
        pmap m;
        for (auto k : keys) m = m.set(k, k);
        built = m;
    });
    const double ins_t = ns_per_op(n, [&] {
        pmap::transient_type t;
        for (auto k : keys) t.set(k, k);
        built = t.persistent();
    });
    const double ins_s = ns_per_op(n, [&] {
        std::map<std::int64_t, std::int64_t> m;
        for (auto k : keys) m.emplace(k, k);
        ref = std::move(m);
    });
    row("insert (persistent set)", ins_p, ins_s);
    row("insert (transient set)", ins_t, ins_s);

    const double hit_p = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (auto k : probe) s += *built.find(k);
        g_sink = s;
    });
    const double hit_s = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (auto k : probe) s += ref.find(k)->second;
        g_sink = s;
    });
    row("lookup hit", hit_p, hit_s);
    const double miss_p = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (auto k : absent) s += built.find(k) ? 1 : 0;
        g_sink = s;
    });
    const double miss_s = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (auto k : absent) s += ref.find(k) != ref.end() ? 1 : 0;
        g_sink = s;
    });
    row("lookup miss", miss_p, miss_s);
    const double floor_p = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (auto k : absent) {
            const auto* e = built.floor(k);
            s += e ? e->first : 0;
        }
        g_sink = s;
    });
    const double floor_s = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (auto k : absent) {
            auto it = ref.upper_bound(k);
            s += it != ref.begin() ? std::prev(it)->first : 0;
        }
        g_sink = s;
    });
    row("floor (absent keys)", floor_p, floor_s);
    const double it_p = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (const auto& e : built) s += e.second;
        g_sink = s;
    });
    const double it_s = ns_per_op(n, [&] {
        std::int64_t s = 0;
        for (const auto& e : ref) s += e.second;
        g_sink = s;
    });
    row("in-order iteration", it_p, it_s);
    const double er_p = ns_per_op(n, [&] {
        pmap m = built;
        for (auto k : probe) m = m.erase(k);
        g_sink = static_cast<std::int64_t>(m.size());
    });
    const double er_s = ns_per_op(n, [&] {
        auto m = ref;  // (the copy is included; it is small next to n erases)
        for (auto k : probe) m.erase(k);
        g_sink = static_cast<std::int64_t>(m.size());
    });
    row("erase all (persistent erase)", er_p, er_s);
    // Keeping the old version: std::map must copy the whole map.
    const std::size_t versions = 200;
    const double keep_p = ns_per_op(versions, [&] {
        std::vector<pmap> kept;
        pmap m = built;
        for (std::size_t i = 0; i < versions; ++i) kept.push_back(m = m.set(absent[i], 1));
        g_sink = static_cast<std::int64_t>(kept.size());
    });
    const double keep_s = ns_per_op(versions, [&] {
        std::vector<std::map<std::int64_t, std::int64_t>> kept;
        kept.reserve(versions);
        const std::map<std::int64_t, std::int64_t>* last = &ref;
        for (std::size_t i = 0; i < versions; ++i) {
            kept.push_back(*last);
            kept.back().emplace(absent[i], 1);
            last = &kept.back();
        }
        g_sink = static_cast<std::int64_t>(kept.size());
    });
    row("update keeping old version", keep_p, keep_s);
    return 0;
}
