// Google Benchmark comparison of pypersistent::persistent_map with immer::map and with a
// std::unordered_map that is copied before every change (the naive way to get persistence),
// of pypersistent::persistent_vector with immer::vector (the vec_* benchmarks, see the vectors
// section below), and of pypersistent::persistent_set with immer::set (the set_* benchmarks).
//
// Benchmarks are named  op/library/size  (see README.md for the list of operations and how
// benchmarks/cpp/make_table.py turns the JSON output into a table).
//
// Keys are splitmix64 outputs of consecutive counters: distinct by construction (the mixer is
// a bijection), uniformly spread, identical for every library. Hits are the outputs of counters
// 0..n-1, misses those of counters 2^32.. (so never present). Every library hashes with
// std::hash<std::int64_t>, the identity in libstdc++, which is a good hash for such keys.
//
// Memory: this binary replaces the global operator new/delete. While a memory benchmark builds
// one map, they add up the heap bytes of every live block (glibc's malloc_usable_size plus its
// 8-byte chunk header, i.e. what the block really takes). Separately, a counting allocator in
// each library's own allocation hook (our policy, immer's heap policy, the std allocator) adds
// up the bytes each library asked for. Outside memory benchmarks the counters are switched off
// and cost one predictable branch per allocation, the same for every library.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#define PYPERSISTENT_BENCH_HEAP_COUNTER 1
#else
#define PYPERSISTENT_BENCH_HEAP_COUNTER 0
#endif

#include <pypersistent/pypersistent.hpp>

#ifndef PYPERSISTENT_BENCH_HAVE_IMMER
#define PYPERSISTENT_BENCH_HAVE_IMMER 0
#endif
#if PYPERSISTENT_BENCH_HAVE_IMMER
#include <immer/heap/cpp_heap.hpp>
#include <immer/heap/heap_policy.hpp>
#include <immer/map.hpp>
#include <immer/map_transient.hpp>
#include <immer/memory_policy.hpp>
#include <immer/set.hpp>
#include <immer/set_transient.hpp>
#include <immer/vector.hpp>
#include <immer/vector_transient.hpp>
#endif

// ---- allocation counting --------------------------------------------------------------------

// The replaced operator new/delete are malloc/free underneath; GCC flags free() on a pointer
// that, after inlining, came from operator new.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace counting {
bool active = false;            // single-threaded benchmarks only
std::int64_t heap_bytes = 0;    // live heap footprint of blocks allocated while active
std::int64_t requested = 0;     // live bytes asked for through the libraries' allocation hooks

inline std::int64_t block_bytes(void* p) noexcept {
#if PYPERSISTENT_BENCH_HEAP_COUNTER
    return static_cast<std::int64_t>(malloc_usable_size(p) + sizeof(std::size_t));
#else
    (void)p;
    return 0;
#endif
}
inline void on_alloc(void* p) noexcept {
    if (active) heap_bytes += block_bytes(p);
}
inline void on_free(void* p) noexcept {
    if (active && p) heap_bytes -= block_bytes(p);
}
}  // namespace counting

namespace counting {
inline void* allocate(std::size_t n) noexcept {
    void* p = std::malloc(n ? n : 1);
    if (p) on_alloc(p);
    return p;
}
inline void release(void* p) noexcept {
    on_free(p);
    std::free(p);
}
}  // namespace counting

void* operator new(std::size_t n) {
    if (void* p = counting::allocate(n)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
    if (void* p = counting::allocate(n)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counting::allocate(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counting::allocate(n); }
void operator delete(void* p) noexcept { counting::release(p); }
void operator delete[](void* p) noexcept { counting::release(p); }
void operator delete(void* p, std::size_t) noexcept { counting::release(p); }
void operator delete[](void* p, std::size_t) noexcept { counting::release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { counting::release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counting::release(p); }

namespace {

using K = std::int64_t;
using V = std::int64_t;
using Hash = std::hash<K>;

// ---- keys -----------------------------------------------------------------------------------

std::uint64_t splitmix64(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

K hit_key(std::size_t i) { return static_cast<K>(splitmix64(i)); }
K miss_key(std::size_t i) { return static_cast<K>(splitmix64((std::uint64_t(1) << 32) + i)); }
V value_of(K k) { return k ^ 0x5DEECE66D; }

// The first n hit keys in insertion order (a prefix, so smaller maps are subsets of larger).
const std::vector<K>& insert_keys(std::size_t n) {
    static std::map<std::size_t, std::vector<K>> cache;
    auto& v = cache[n];
    if (v.empty()) {
        v.reserve(n);
        for (std::size_t i = 0; i < n; ++i) v.push_back(hit_key(i));
    }
    return v;
}

// The same keys in a fixed pseudo-random order (Fisher-Yates driven by splitmix64, so the order
// does not depend on the standard library).
const std::vector<K>& shuffled_keys(std::size_t n) {
    static std::map<std::size_t, std::vector<K>> cache;
    auto& v = cache[n];
    if (v.empty()) {
        v = insert_keys(n);
        for (std::size_t i = n; i > 1; --i) {
            const std::size_t j = splitmix64(0xABCDEF00ull + i) % i;
            std::swap(v[i - 1], v[j]);
        }
    }
    return v;
}

// Lookups run over a stream of at least lookup_stream keys. Were a 1K map probed with the same
// 1,000 keys over and over, the branch predictor would learn the sequence, and the numbers would
// measure code alignment more than the trie (observed: 2-3 ns/lookup with a repeated 1K
// sequence against 5-6 ns with a non-repeating stream over the same map).
constexpr std::size_t lookup_stream = 100000;

// Present keys: the shuffled keys when n >= lookup_stream, otherwise lookup_stream draws (with
// replacement) among them.
const std::vector<K>& hit_queries(std::size_t n) {
    static std::map<std::size_t, std::vector<K>> cache;
    auto& v = cache[n];
    if (v.empty()) {
        const auto& keys = shuffled_keys(n);
        if (n >= lookup_stream) {
            v = keys;
        } else {
            v.reserve(lookup_stream);
            for (std::size_t i = 0; i < lookup_stream; ++i) v.push_back(keys[splitmix64(0x5EED0000ull + i) % n]);
        }
    }
    return v;
}

// Absent keys, all distinct.
const std::vector<K>& miss_queries(std::size_t n) {
    static std::map<std::size_t, std::vector<K>> cache;
    auto& v = cache[n];
    if (v.empty()) {
        const std::size_t count = n > lookup_stream ? n : lookup_stream;
        v.reserve(count);
        for (std::size_t i = 0; i < count; ++i) v.push_back(miss_key(i));
    }
    return v;
}

// ---- libraries ------------------------------------------------------------------------------

// Counting allocation hooks, used only by the memory benchmarks' map types.
struct counting_policy : pypersistent::default_policy {
    static void* allocate(std::size_t bytes) {
        if (counting::active) counting::requested += static_cast<std::int64_t>(bytes);
        return ::operator new(bytes);
    }
    static void deallocate(void* p, std::size_t bytes) noexcept {
        if (counting::active) counting::requested -= static_cast<std::int64_t>(bytes);
        ::operator delete(p);
    }
};

template <class T>
struct counting_std_allocator {
    using value_type = T;
    counting_std_allocator() = default;
    template <class U>
    counting_std_allocator(const counting_std_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        if (counting::active) counting::requested += static_cast<std::int64_t>(n * sizeof(T));
        return static_cast<T*>(::operator new(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept {
        if (counting::active) counting::requested -= static_cast<std::int64_t>(n * sizeof(T));
        ::operator delete(p);
    }
    template <class U>
    bool operator==(const counting_std_allocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const counting_std_allocator<U>&) const noexcept { return false; }
};

// ours and immer have the same API for everything used here.
template <class Map>
struct persistent_ops {
    static Map set(const Map& m, K k, V v) { return m.set(k, v); }
    static Map erase(const Map& m, K k) { return m.erase(k); }
    static const V* find(const Map& m, K k) { return m.find(k); }
    static Map build(const std::vector<K>& keys) {
        auto t = Map{}.transient();
        for (K k : keys) t.set(k, value_of(k));
        return t.persistent();
    }
    static Map build_by_inserts(const std::vector<K>& keys) {
        Map m;
        for (K k : keys) m = m.set(k, value_of(k));
        return m;
    }
    template <class F>
    static void each(const Map& m, F&& f) {
        for (const auto& e : m) f(e.first, e.second);
    }
};

// A mutable hash map made "persistent" by copying it before every change.
template <class Map>
struct copy_ops {
    static Map set(const Map& m, K k, V v) {
        Map r(m);
        r.insert_or_assign(k, v);
        return r;
    }
    static Map erase(const Map& m, K k) {
        Map r(m);
        r.erase(k);
        return r;
    }
    static const V* find(const Map& m, K k) {
        auto it = m.find(k);
        return it == m.end() ? nullptr : &it->second;
    }
    static Map build(const std::vector<K>& keys) {
        Map m;
        for (K k : keys) m.emplace(k, value_of(k));
        return m;
    }
    template <class F>
    static void each(const Map& m, F&& f) {
        for (const auto& e : m) f(e.first, e.second);
    }
};

struct lib_pypersistent {
    static constexpr const char* name = "pypersistent";
    static constexpr bool persistent = true;
    using map = pypersistent::persistent_map<K, V, Hash>;
    using ops = persistent_ops<map>;
    using counted_map = pypersistent::persistent_map<K, V, Hash, std::equal_to<K>, std::equal_to<V>, counting_policy>;
    using counted_ops = persistent_ops<counted_map>;
};

#if PYPERSISTENT_BENCH_HAVE_IMMER
struct counting_heap {
    template <class... Tags>
    static void* allocate(std::size_t size, Tags...) {
        if (counting::active) counting::requested += static_cast<std::int64_t>(size);
        return ::operator new(size);
    }
    template <class... Tags>
    static void deallocate(std::size_t size, void* p, Tags...) {
        if (counting::active) counting::requested -= static_cast<std::int64_t>(size);
        ::operator delete(p);
    }
};

struct lib_immer {
    static constexpr const char* name = "immer";
    static constexpr bool persistent = true;
    using map = immer::map<K, V, Hash>;
    using ops = persistent_ops<map>;
    // Same refcount, lock, transience and flags as immer::default_memory_policy; only the heap
    // differs. (immer's hash-trie nodes bypass the free lists of the default heap policy anyway:
    // they allocate from heap_policy::type, which is plain operator new.)
    using default_mp = immer::default_memory_policy;
    using counted_mp = immer::memory_policy<immer::heap_policy<counting_heap>, default_mp::refcount, default_mp::lock,
                                            default_mp::transience, default_mp::prefer_fewer_bigger_objects,
                                            default_mp::use_transient_rvalues>;
    using counted_map = immer::map<K, V, Hash, std::equal_to<K>, counted_mp>;
    using counted_ops = persistent_ops<counted_map>;
};
#endif

struct lib_unordered_map {
    static constexpr const char* name = "unordered_map";
    static constexpr bool persistent = false;
    using map = std::unordered_map<K, V, Hash>;
    using ops = copy_ops<map>;
    using counted_map = std::unordered_map<K, V, Hash, std::equal_to<K>, counting_std_allocator<std::pair<const K, V>>>;
    using counted_ops = copy_ops<counted_map>;
};

// Maps built once per library and size, kept for the read-only benchmarks.
template <class L>
const typename L::map& base_map(std::size_t n) {
    static std::map<std::size_t, std::unique_ptr<typename L::map>> cache;
    auto& p = cache[n];
    if (!p) p = std::make_unique<typename L::map>(L::ops::build(insert_keys(n)));
    return *p;
}

// Equal contents, built separately (no shared structure) in the opposite order.
template <class L>
const typename L::map& other_map(std::size_t n) {
    static std::map<std::size_t, std::unique_ptr<typename L::map>> cache;
    auto& p = cache[n];
    if (!p) {
        std::vector<K> keys(shuffled_keys(n).rbegin(), shuffled_keys(n).rend());
        p = std::make_unique<typename L::map>(L::ops::build(keys));
    }
    return *p;
}

// ---- benchmarks -----------------------------------------------------------------------------

// n persistent inserts from the empty map, each into the previous version (which then dies).
template <class L>
void bm_insert(benchmark::State& state, std::size_t n) {
    const auto& keys = insert_keys(n);
    std::optional<typename L::map> result;
    for (auto _ : state) {
        typename L::map m;
        for (K k : keys) m = L::ops::set(m, k, value_of(k));
        result.emplace(std::move(m));
        benchmark::DoNotOptimize(*result);
        state.PauseTiming();
        result.reset();  // the final map's destruction is not timed
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

template <class L>
void bm_lookup(benchmark::State& state, std::size_t n, bool hit) {
    const auto& m = base_map<L>(n);
    const auto& keys = hit ? hit_queries(n) : miss_queries(n);
    for (auto _ : state) {
        V sum = 0;
        for (K k : keys) {
            const V* v = L::ops::find(m, k);
            if (v) sum += *v;
            benchmark::DoNotOptimize(v);
        }
        benchmark::DoNotOptimize(sum);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * keys.size()));
}

constexpr std::size_t erase_count = 100;

// erase_count persistent erases in a chain from the full map; every version, the last one
// included, is destroyed within the timed region.
template <class L>
void bm_erase(benchmark::State& state, std::size_t n) {
    const auto& base = base_map<L>(n);
    const auto& keys = shuffled_keys(n);
    for (auto _ : state) {
        typename L::map m = base;  // O(1) for the persistent maps, one extra copy for unordered_map
        for (std::size_t i = 0; i < erase_count; ++i) m = L::ops::erase(m, keys[i]);
        benchmark::DoNotOptimize(m);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * erase_count));
}

template <class L>
void bm_iterate(benchmark::State& state, std::size_t n) {
    const auto& m = base_map<L>(n);
    for (auto _ : state) {
        V sum = 0;
        L::ops::each(m, [&sum](K, V v) { sum += v; });
        benchmark::DoNotOptimize(sum);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

template <class L>
void bm_equal(benchmark::State& state, std::size_t n) {
    const auto& a = base_map<L>(n);
    const auto& b = other_map<L>(n);
    for (auto _ : state) {
        bool eq = (a == b);
        benchmark::DoNotOptimize(eq);
        if (!eq) {
            state.SkipWithError("maps compare unequal");
            break;
        }
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// Bulk build: transients for the persistent maps, plain inserts for unordered_map.
template <class L>
void bm_build(benchmark::State& state, std::size_t n) {
    const auto& keys = insert_keys(n);
    std::optional<typename L::map> result;
    for (auto _ : state) {
        result.emplace(L::ops::build(keys));
        benchmark::DoNotOptimize(*result);
        state.PauseTiming();
        result.reset();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// Builds one map (with the counting types) and reports its live bytes per entry.
template <class L>
void bm_memory(benchmark::State& state, std::size_t n, bool by_inserts) {
    using M = typename L::counted_map;
    using O = typename L::counted_ops;
    const auto& keys = insert_keys(n);
    { M warm = O::build(std::vector<K>{1, 2}); benchmark::DoNotOptimize(warm); }  // statics
    for (auto _ : state) {
        counting::heap_bytes = 0;
        counting::requested = 0;
        counting::active = true;
        {
            M m = [&]() -> M {
                if constexpr (L::persistent) {
                    if (by_inserts) return O::build_by_inserts(keys);
                }
                return O::build(keys);
            }();
            counting::active = false;  // m's destruction below is not counted
            benchmark::DoNotOptimize(m);
            const double entries = static_cast<double>(n);
            state.counters["bytes_per_entry"] = static_cast<double>(counting::heap_bytes) / entries;
            state.counters["requested_bytes_per_entry"] = static_cast<double>(counting::requested) / entries;
            if (m.size() != n) state.SkipWithError("wrong size");
        }
    }
}

template <class L>
void register_library(std::size_t n) {
    const std::string lib = L::name;
    auto reg = [&](const std::string& op, std::size_t n, auto fn) {
        return benchmark::RegisterBenchmark((op + "/" + lib + "/" + std::to_string(n)).c_str(), fn)
            ->Unit(benchmark::kMicrosecond);
    };
    {
        // The copy-on-write unordered_map is quadratic: only at 1K for the persistent updates.
        const bool updates = L::persistent || n <= 1000;
        if (updates) reg("insert", n, [n](benchmark::State& s) { bm_insert<L>(s, n); });
        reg("lookup_hit", n, [n](benchmark::State& s) { bm_lookup<L>(s, n, true); });
        reg("lookup_miss", n, [n](benchmark::State& s) { bm_lookup<L>(s, n, false); });
        if (updates) reg("erase", n, [n](benchmark::State& s) { bm_erase<L>(s, n); });
        reg("iterate", n, [n](benchmark::State& s) { bm_iterate<L>(s, n); });
        reg("equal", n, [n](benchmark::State& s) { bm_equal<L>(s, n); });
        reg("build", n, [n](benchmark::State& s) { bm_build<L>(s, n); });
        reg("memory", n, [n](benchmark::State& s) { bm_memory<L>(s, n, false); })->Iterations(1);
        if (L::persistent) {
            reg("memory_inserts", n, [n](benchmark::State& s) { bm_memory<L>(s, n, true); })->Iterations(1);
        }
    }
}

// ---- vectors ----------------------------------------------------------------------------------
//
// pypersistent::persistent_vector against immer::vector (both 32-way tries with a tail, same
// API for everything used here). Elements are the hit keys in order. Benchmarks are named
// vec_<op>/library/size.

struct vlib_pypersistent {
    static constexpr const char* name = "pypersistent";
    using vec = pypersistent::persistent_vector<V>;
};
#if PYPERSISTENT_BENCH_HAVE_IMMER
struct vlib_immer {
    static constexpr const char* name = "immer";
    using vec = immer::vector<V>;
};
#endif

template <class Vec>
Vec build_vector(std::size_t n) {
    const auto& values = insert_keys(n);
    auto t = Vec{}.transient();
    for (V x : values) t.push_back(x);
    return t.persistent();
}

template <class L>
const typename L::vec& base_vector(std::size_t n) {
    static std::map<std::size_t, std::unique_ptr<typename L::vec>> cache;
    auto& p = cache[n];
    if (!p) p = std::make_unique<typename L::vec>(build_vector<typename L::vec>(n));
    return *p;
}

// Random positions in [0, n): max(n, lookup_stream) of them, for the same reason as the lookups.
const std::vector<std::size_t>& index_queries(std::size_t n) {
    static std::map<std::size_t, std::vector<std::size_t>> cache;
    auto& v = cache[n];
    if (v.empty()) {
        const std::size_t count = n > lookup_stream ? n : lookup_stream;
        v.reserve(count);
        for (std::size_t i = 0; i < count; ++i) v.push_back(splitmix64(0x1DE0000ull + i) % n);
    }
    return v;
}

// n persistent push_backs from the empty vector, each onto the previous version (which dies).
template <class L>
void bm_vec_push_back(benchmark::State& state, std::size_t n) {
    const auto& values = insert_keys(n);
    std::optional<typename L::vec> result;
    for (auto _ : state) {
        typename L::vec v;
        for (V x : values) v = v.push_back(x);
        result.emplace(std::move(v));
        benchmark::DoNotOptimize(*result);
        state.PauseTiming();
        result.reset();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// n push_backs on a transient, then persistent().
template <class L>
void bm_vec_push_back_transient(benchmark::State& state, std::size_t n) {
    std::optional<typename L::vec> result;
    for (auto _ : state) {
        result.emplace(build_vector<typename L::vec>(n));
        benchmark::DoNotOptimize(*result);
        state.PauseTiming();
        result.reset();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

template <class L>
void bm_vec_index(benchmark::State& state, std::size_t n) {
    const auto& v = base_vector<L>(n);
    const auto& queries = index_queries(n);
    for (auto _ : state) {
        V sum = 0;
        for (std::size_t i : queries) sum += v[i];
        benchmark::DoNotOptimize(sum);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * queries.size()));
}

template <class L>
void bm_vec_iterate(benchmark::State& state, std::size_t n) {
    const auto& v = base_vector<L>(n);
    for (auto _ : state) {
        V sum = 0;
        for (V x : v) sum += x;
        benchmark::DoNotOptimize(sum);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

constexpr std::size_t vec_set_count = 1000;

// vec_set_count persistent sets at random positions in a chain from the full vector; every
// version, the last one included, is destroyed within the timed region.
template <class L>
void bm_vec_set(benchmark::State& state, std::size_t n) {
    const auto& base = base_vector<L>(n);
    const auto& queries = index_queries(n);
    for (auto _ : state) {
        typename L::vec v = base;
        for (std::size_t k = 0; k < vec_set_count; ++k) v = v.set(queries[k], static_cast<V>(k));
        benchmark::DoNotOptimize(v);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * vec_set_count));
}

template <class L>
void register_vector_library(std::size_t n) {
    const std::string lib = L::name;
    auto reg = [&](const std::string& op, auto fn) {
        return benchmark::RegisterBenchmark(("vec_" + op + "/" + lib + "/" + std::to_string(n)).c_str(), fn)
            ->Unit(benchmark::kMicrosecond);
    };
    reg("push_back", [n](benchmark::State& s) { bm_vec_push_back<L>(s, n); });
    reg("push_back_transient", [n](benchmark::State& s) { bm_vec_push_back_transient<L>(s, n); });
    reg("index", [n](benchmark::State& s) { bm_vec_index<L>(s, n); });
    reg("iterate", [n](benchmark::State& s) { bm_vec_iterate<L>(s, n); });
    reg("set", [n](benchmark::State& s) { bm_vec_set<L>(s, n); });
}

// ---- sets -------------------------------------------------------------------------------------
//
// pypersistent::persistent_set against immer::set (both CHAMP tries; same API for insert, count
// and transients). Keys are the map benchmarks' keys. Benchmarks are named set_<op>/library/size.
// immer::set has no union of its own, so its set_union inserts the other set's keys into a
// transient of the first: what a user of immer writes. Ours is the structural walk.

struct slib_pypersistent {
    static constexpr const char* name = "pypersistent";
    using set = pypersistent::persistent_set<K, Hash>;
    static set set_union(const set& a, const set& b) { return a.set_union(b); }
    static bool contains(const set& s, K k) { return s.contains(k); }
};
#if PYPERSISTENT_BENCH_HAVE_IMMER
struct slib_immer {
    static constexpr const char* name = "immer";
    using set = immer::set<K, Hash>;
    static set set_union(const set& a, const set& b) {
        auto t = a.transient();
        for (K k : b) t.insert(k);
        return t.persistent();
    }
    static bool contains(const set& s, K k) { return s.count(k) != 0; }
};
#endif

template <class Set>
Set build_set(const std::vector<K>& keys) {
    auto t = Set{}.transient();
    for (K k : keys) t.insert(k);
    return t.persistent();
}

template <class L>
const typename L::set& base_set(std::size_t n) {
    static std::map<std::size_t, std::unique_ptr<typename L::set>> cache;
    auto& p = cache[n];
    if (!p) p = std::make_unique<typename L::set>(build_set<typename L::set>(insert_keys(n)));
    return *p;
}

// n persistent inserts from the empty set, each into the previous version (which then dies).
template <class L>
void bm_set_insert(benchmark::State& state, std::size_t n) {
    const auto& keys = insert_keys(n);
    std::optional<typename L::set> result;
    for (auto _ : state) {
        typename L::set s;
        for (K k : keys) s = s.insert(k);
        result.emplace(std::move(s));
        benchmark::DoNotOptimize(*result);
        state.PauseTiming();
        result.reset();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

template <class L>
void bm_set_insert_transient(benchmark::State& state, std::size_t n) {
    const auto& keys = insert_keys(n);
    std::optional<typename L::set> result;
    for (auto _ : state) {
        result.emplace(build_set<typename L::set>(keys));
        benchmark::DoNotOptimize(*result);
        state.PauseTiming();
        result.reset();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

template <class L>
void bm_set_contains(benchmark::State& state, std::size_t n) {
    const auto& s = base_set<L>(n);
    const auto& queries = hit_queries(n);
    for (auto _ : state) {
        std::size_t found = 0;
        for (K k : queries) found += L::contains(s, k) ? 1 : 0;
        benchmark::DoNotOptimize(found);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * queries.size()));
}

template <class L>
void bm_set_iterate(benchmark::State& state, std::size_t n) {
    const auto& s = base_set<L>(n);
    for (auto _ : state) {
        K sum = 0;
        for (const auto& e : s) {
            if constexpr (std::is_same<L, slib_pypersistent>::value) {
                sum += e.first;
            } else {
                sum += e;
            }
        }
        benchmark::DoNotOptimize(sum);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// The union of the n-key set with another n-key set: `shared`, the same set plus 100 new keys
// (a version derived from it, so all but ~100 paths are shared); otherwise n keys disjoint
// from it, built apart. Items: the result's keys.
template <class L>
void bm_set_union(benchmark::State& state, std::size_t n, bool shared) {
    const auto& a = base_set<L>(n);
    typename L::set b;
    if (shared) {
        b = a;
        for (std::size_t i = 0; i < 100; ++i) b = b.insert(miss_key(i));
    } else {
        b = build_set<typename L::set>(std::vector<K>(miss_queries(n).begin(), miss_queries(n).begin() + n));
    }
    std::size_t size = 0;
    for (auto _ : state) {
        auto u = L::set_union(a, b);
        size = u.size();
        benchmark::DoNotOptimize(u);
    }
    state.counters["result_size"] = static_cast<double>(size);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * size));
}

template <class L>
void register_set_library(std::size_t n) {
    const std::string lib = L::name;
    auto reg = [&](const std::string& op, auto fn) {
        return benchmark::RegisterBenchmark(("set_" + op + "/" + lib + "/" + std::to_string(n)).c_str(), fn)
            ->Unit(benchmark::kMicrosecond);
    };
    reg("insert", [n](benchmark::State& s) { bm_set_insert<L>(s, n); });
    reg("insert_transient", [n](benchmark::State& s) { bm_set_insert_transient<L>(s, n); });
    reg("contains", [n](benchmark::State& s) { bm_set_contains<L>(s, n); });
    reg("iterate", [n](benchmark::State& s) { bm_set_iterate<L>(s, n); });
    reg("union_shared", [n](benchmark::State& s) { bm_set_union<L>(s, n, true); });
    reg("union_disjoint", [n](benchmark::State& s) { bm_set_union<L>(s, n, false); });
}

}  // namespace

int main(int argc, char** argv) {
    for (std::size_t n : {std::size_t(1000), std::size_t(100000), std::size_t(1000000)}) {
        register_library<lib_pypersistent>(n);
#if PYPERSISTENT_BENCH_HAVE_IMMER
        register_library<lib_immer>(n);
#endif
        register_library<lib_unordered_map>(n);
    }
    for (std::size_t n : {std::size_t(1000), std::size_t(100000), std::size_t(1000000)}) {
        register_vector_library<vlib_pypersistent>(n);
#if PYPERSISTENT_BENCH_HAVE_IMMER
        register_vector_library<vlib_immer>(n);
#endif
    }

    for (std::size_t n : {std::size_t(10000), std::size_t(100000)}) {
        register_set_library<slib_pypersistent>(n);
#if PYPERSISTENT_BENCH_HAVE_IMMER
        register_set_library<slib_immer>(n);
#endif
    }

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::AddCustomContext("immer", PYPERSISTENT_BENCH_HAVE_IMMER ? "yes" : "not found, skipped");
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
