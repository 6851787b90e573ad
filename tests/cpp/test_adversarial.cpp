// Adversarial fuzzing of the core with hostile Hash / KeyEqual / ValueEqual functors.
//
// What it does. Random operations run on a pool of live persistent_map versions and on one
// transient_map: persistent set / erase / merge (both directions, often between a version and
// one derived from it by a few edits, so that merge meets entries against subtrees that share
// nodes), find / contains, ==, iteration, and transient set / erase / merge / find /
// persistent() / freeze. The functors are stateless types that read the global `chaos` state,
// driven by a seeded PRNG. Phases alternate: calm phases (honest functors) and hostile phases in
// which key equality answers at random, flips its answer on every call for the same pair, says
// always yes or always no, or throws; the hash changes between calls for the same key (a
// per-key salt that is bumped at random, or a random hash now and then) or throws; value
// equality misbehaves likewise. Hash shapes (one per test case) force collision nodes, long
// chains of single-child nodes down to the last bitmap level, crowded fragments, and so on,
// over small key universes.
//
// After every operation, successful or not:
//   - every live version iterates exactly the (key id, value id, cached hash) sequence recorded
//     when it was made (old versions never change), and its size() equals that count;
//   - the transient's size() equals its entry count, and its contents changed only through its
//     own operations;
//   - structure (checked against the CACHED hash, since the live hash is unstable): bitmaps
//     disjoint, every entry in the fragment slot of its cached hash, collision nodes only below
//     the last bitmap level with equal cached hashes, canonical form (no non-root subtree with
//     fewer than two keys);
//   - accounting: every reachable node's reference count equals the number of parent slots and
//     map objects pointing to it, the live node and byte counts equal what is reachable, and
//     every key / value handle is retained exactly as many times as reachable entries hold it;
//   - a throwing operation leaves the version or transient it ran on unchanged and allocates
//     nothing that survives;
//   - in hostile phases, each operation changed at most what it may (a set adds one entry or
//     replaces one value, an erase removes at most one entry, a merge result holds at least the
//     left side's count and at most both, every entry made of keys and values of its inputs);
//   - in calm phases, on versions whose entries are consistent with the current hash and have
//     distinct keys, results match a std::map model exactly.
// At the end of every seed, once all maps are gone: zero live nodes and bytes, and every key and
// value handle released exactly as often as it was retained. Two policies: cached hashes
// (full path checks) and uncached (the core recomputes hashes under chaos, so entry paths are
// checked only in calm phases, as part of deciding whether the model applies).
//
// Running.
//   short (default, CI): ctest --test-dir build/cpp -R Adversarial
//                        or build/cpp/tests/cpp/test_adversarial
//   long: environment variables (run the program directly: ctest stops a test after 300 s)
//     PYPERSISTENT_FUZZ_SECONDS=N     each of the 14 test cases keeps running new seeds for N s
//     PYPERSISTENT_FUZZ_ITERATIONS=N  operations per seed (default 4000)
//     PYPERSISTENT_FUZZ_SEED_BASE=B   first seed (default 1); case i runs B+i, B+i+7, B+i+14, ...
//                                     (UncachedHash cases: B+1000+i, ...)
//     e.g. PYPERSISTENT_FUZZ_SECONDS=60 PYPERSISTENT_FUZZ_SEED_BASE=$RANDOM
//              build/cpp/tests/cpp/test_adversarial          (14 minutes; add
//              --gtest_filter='*.CachedHash/*' for half of it)
//   replay: a failure prints its seed and step, e.g.
//     PYPERSISTENT_FUZZ_SEED=S PYPERSISTENT_FUZZ_ITERATIONS=<step+1>
//         build/cpp/tests/cpp/test_adversarial --gtest_filter='*.CachedHash/0'
//     runs exactly seed S (the seed alone picks the hash shape; the other cases are skipped);
//     PYPERSISTENT_FUZZ_VERBOSE=1 also prints every operation to stderr.

#include "test_util.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using pptest::mix64;
using pypersistent::hash_t;
using pypersistent::persistent_map;

constexpr int max_keys = 64;    // key ids 0..63
constexpr int max_values = 16;  // value ids 0..15
constexpr int n_shapes = 7;     // hash shapes; also the number of test cases per policy

// ---- chaos: the state every functor reads ------------------------------------------------------

struct chaos_error : std::exception {
    const char* what() const noexcept override { return "chaos: injected functor failure"; }
};

namespace chaos {

enum class eq_mode { honest, random_answer, flip, always_true, always_false };
constexpr const char* eq_mode_names[] = {"honest", "random", "flip", "always-true", "always-false"};

struct eq_params {
    eq_mode mode = eq_mode::honest;
    unsigned lie_per_mille = 0;    // random_answer: how often the answer is the wrong one
    unsigned throw_per_mille = 0;
};
struct hash_params {
    unsigned throw_per_mille = 0;
    unsigned bump_per_mille = 0;    // re-salt the key: its hash changes from now on
    unsigned random_per_mille = 0;  // answer a random hash of the same shape, this call only
};

enum shape_kind : int { spread, few_bits, top_chain, low_fan, mid_bits, scattered, clumpy };
constexpr const char* shape_names[n_shapes] = {"spread",    "few-bits",  "top-chain", "low-fan",
                                               "mid-bits",  "scattered", "clumpy"};

inline bool active = false;  // functors misbehave only while an operation under test runs
inline std::mt19937_64 rng{1};
inline int shape = spread;
inline hash_t mask = ~hash_t(0);
inline hash_t pattern = 0;
inline std::array<std::uint64_t, max_keys> salt{};
inline hash_params hp{};
inline eq_params key_eq{}, value_eq{};
// Flip mode: the parity of calls so far, per unordered pair of ids.
inline std::array<std::array<std::uint8_t, max_keys>, max_keys> key_parity{}, value_parity{};
inline long thrown = 0, lies = 0, hash_changes = 0;

inline bool roll(unsigned per_mille) { return per_mille != 0 && rng() % 1000 < per_mille; }

// Every hash is a function of a key's "class" (its id mixed with its salt) through the shape:
// the bits outside `mask` are fixed, so few masked bits mean many whole-hash collisions, and
// which bits are masked decides at which levels keys part ways.
inline hash_t shape_hash(std::uint64_t cls) {
    const hash_t m = mix64(cls);
    if (shape == clumpy) return (m & 3u) == 0 ? pattern : m;  // a quarter of the classes collide
    return (m & mask) | (pattern & ~mask);
}
// The honest hash of a key under the current salts (what checks and calm phases use).
inline hash_t calm_hash(int id) { return shape_hash(mix64(static_cast<std::uint64_t>(id)) ^ salt[static_cast<std::size_t>(id)]); }

inline void reset(std::uint64_t seed) {
    active = false;
    rng.seed(seed ^ 0x5DEECE66Dull);
    std::mt19937_64 setup(seed * 0x9E3779B97F4A7C15ull + 17);
    shape = static_cast<int>(seed % n_shapes);
    pattern = setup();
    auto random_bits = [&](int n) {
        hash_t m = 0;
        for (int set = 0; set < n;) {
            const hash_t bit = hash_t(1) << (setup() % 64);
            if (!(m & bit)) {
                m |= bit;
                ++set;
            }
        }
        return m;
    };
    switch (shape) {
        case spread: mask = ~hash_t(0); break;
        case few_bits: mask = random_bits(2); break;                   // 4 whole hashes
        case top_chain: mask = hash_t(7) << 61; break;                 // 12 single-child levels, then 8 ways
        case low_fan: mask = hash_t(3) | (hash_t(1) << 62); break;     // 4 root slots, chains below
        case mid_bits: mask = random_bits(4); break;
        case scattered: mask = random_bits(5 + static_cast<int>(setup() % 3)); break;
        default: mask = ~hash_t(0); break;
    }
    salt.fill(0);
    hp = {};
    key_eq = {};
    value_eq = {};
    for (auto& row : key_parity) row.fill(0);
    for (auto& row : value_parity) row.fill(0);
    thrown = lies = hash_changes = 0;
}

inline hash_t hash_of(int id) {
    if (active) {
        if (roll(hp.throw_per_mille)) {
            ++thrown;
            throw chaos_error();
        }
        if (roll(hp.bump_per_mille)) {
            salt[static_cast<std::size_t>(id)] = rng();
            ++hash_changes;
        }
        if (roll(hp.random_per_mille)) {
            ++hash_changes;
            return shape_hash(rng());
        }
    }
    return calm_hash(id);
}

inline bool equal(const eq_params& p, std::array<std::array<std::uint8_t, max_keys>, max_keys>& parity, int a, int b) {
    const bool honest = a == b;
    if (!active) return honest;
    if (roll(p.throw_per_mille)) {
        ++thrown;
        throw chaos_error();
    }
    bool answer = honest;
    switch (p.mode) {
        case eq_mode::honest: break;
        case eq_mode::random_answer:
            if (roll(p.lie_per_mille)) answer = !honest;
            break;
        case eq_mode::flip: {
            auto& bit = parity[static_cast<std::size_t>(std::min(a, b))][static_cast<std::size_t>(std::max(a, b))];
            answer = bit ? !honest : honest;
            bit ^= 1u;
            break;
        }
        case eq_mode::always_true: answer = true; break;
        case eq_mode::always_false: answer = false; break;
    }
    if (answer != honest) ++lies;
    return answer;
}

inline std::string describe() {
    if (hp.throw_per_mille == 0 && hp.bump_per_mille == 0 && hp.random_per_mille == 0 &&
        key_eq.mode == eq_mode::honest && key_eq.throw_per_mille == 0 && value_eq.mode == eq_mode::honest &&
        value_eq.throw_per_mille == 0) {
        return "calm";
    }
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "hostile: hash throw %u bump %u random %u /1000; key_eq %s lie %u throw %u; value_eq %s lie %u throw %u",
                  hp.throw_per_mille, hp.bump_per_mille, hp.random_per_mille,
                  eq_mode_names[static_cast<int>(key_eq.mode)], key_eq.lie_per_mille, key_eq.throw_per_mille,
                  eq_mode_names[static_cast<int>(value_eq.mode)], value_eq.lie_per_mille, value_eq.throw_per_mille);
    return buf;
}

}  // namespace chaos

// ---- handles, functors, counting policy ------------------------------------------------------------

template <int Tag>
struct handle {
    int id;
    explicit handle(int i) noexcept : id(i) {}
    bool operator==(const handle& o) const noexcept { return id == o.id; }  // policy same_value: honest
};
using key_h = handle<0>;
using val_h = handle<1>;

struct fuzz_hash {
    hash_t operator()(const key_h& k) const { return chaos::hash_of(k.id); }
};
struct fuzz_key_equal {
    bool operator()(const key_h& a, const key_h& b) const {
        return chaos::equal(chaos::key_eq, chaos::key_parity, a.id, b.id);
    }
};
struct fuzz_value_equal {
    bool operator()(const val_h& a, const val_h& b) const {
        return chaos::equal(chaos::value_eq, chaos::value_parity, a.id, b.id);
    }
};

namespace counts {
inline std::array<long, max_keys> key_retains{}, key_releases{};
inline std::array<long, max_values> value_retains{}, value_releases{};
inline long live_nodes = 0, live_bytes = 0, net_retained = 0, size_mismatches = 0;
inline std::unordered_map<const void*, std::size_t> sizes;

inline void reset() {
    key_retains.fill(0);
    key_releases.fill(0);
    value_retains.fill(0);
    value_releases.fill(0);
    live_nodes = live_bytes = net_retained = size_mismatches = 0;
    sizes.clear();
}
}  // namespace counts

template <bool Cache>
struct counting_policy : pypersistent::default_policy {
    using refcount = pypersistent::single_thread_refcount;
    static constexpr bool cache_hash = Cache;

    static void retain(const key_h& k) noexcept {
        ++counts::key_retains[static_cast<std::size_t>(k.id)];
        ++counts::net_retained;
    }
    static void retain(const val_h& v) noexcept {
        ++counts::value_retains[static_cast<std::size_t>(v.id)];
        ++counts::net_retained;
    }
    static void release(const key_h& k) noexcept {
        ++counts::key_releases[static_cast<std::size_t>(k.id)];
        --counts::net_retained;
    }
    static void release(const val_h& v) noexcept {
        ++counts::value_releases[static_cast<std::size_t>(v.id)];
        --counts::net_retained;
    }
    static void* allocate(std::size_t bytes) {
        void* p = ::operator new(bytes);
        ++counts::live_nodes;
        counts::live_bytes += static_cast<long>(bytes);
        counts::sizes[p] = bytes;
        return p;
    }
    static void deallocate(void* p, std::size_t bytes) noexcept {
        --counts::live_nodes;
        counts::live_bytes -= static_cast<long>(bytes);
        auto it = counts::sizes.find(p);
        if (it == counts::sizes.end() || it->second != bytes) ++counts::size_mismatches;
        if (it != counts::sizes.end()) counts::sizes.erase(it);
        ::operator delete(p);
    }
};

struct net_state {
    long nodes = counts::live_nodes;
    long bytes = counts::live_bytes;
    long retained = counts::net_retained;
    bool operator==(const net_state& o) const { return nodes == o.nodes && bytes == o.bytes && retained == o.retained; }
};

// ---- settings ------------------------------------------------------------------------------------

std::optional<std::uint64_t> env_u64(const char* name) {
    const char* s = std::getenv(name);
    if (!s || !*s) return std::nullopt;
    return static_cast<std::uint64_t>(std::strtoull(s, nullptr, 0));
}

struct settings {
    long steps = 4000;
    double seconds = 0;
    std::uint64_t seed_base = 1;
    std::optional<std::uint64_t> replay_seed;
    bool verbose = false;

    static settings from_env() {
        settings s;
        if (auto v = env_u64("PYPERSISTENT_FUZZ_ITERATIONS")) s.steps = static_cast<long>(*v);
        if (auto v = env_u64("PYPERSISTENT_FUZZ_SECONDS")) s.seconds = static_cast<double>(*v);
        if (auto v = env_u64("PYPERSISTENT_FUZZ_SEED_BASE")) s.seed_base = *v;
        s.replay_seed = env_u64("PYPERSISTENT_FUZZ_SEED");
        if (auto v = env_u64("PYPERSISTENT_FUZZ_VERBOSE")) s.verbose = *v != 0;
        return s;
    }
};

struct run_stats {
    long steps = 0, throws = 0, merges = 0, lies = 0, hash_changes = 0, calm_checks = 0;
};

// ---- the fuzzer ------------------------------------------------------------------------------------

template <bool Cache>
class fuzzer {
public:
    using Map = persistent_map<key_h, val_h, fuzz_hash, fuzz_key_equal, fuzz_value_equal, counting_policy<Cache>>;
    using Transient = typename Map::transient_type;
    using Trie = typename Map::trie;
    using node = typename Trie::node;
    using entry = typename Trie::entry_type;

    struct rec {
        int k, v;
        hash_t h;  // the cached hash (0 without caching)
        bool operator==(const rec& o) const { return k == o.k && v == o.v && h == o.h; }
        bool operator<(const rec& o) const {
            if (k != o.k) return k < o.k;
            if (h != o.h) return h < o.h;
            return v < o.v;
        }
    };
    using snap = std::vector<rec>;
    using model = std::map<int, int>;

    struct version {
        Map map;
        snap s;
        long serial;
        long parent;
    };

    fuzzer(std::uint64_t seed, const settings& cfg) : seed_(seed), cfg_(cfg), rng_(seed) {
        universe_ = 4 + static_cast<int>(rng_() % (max_keys - 4 + 1));
        if (rng_() % 2) universe_ = 4 + static_cast<int>(rng_() % 20);  // often tiny
        push(Map(), {}, -1);
        Map m = fresh_map();
        snap s = snapshot(m);
        push(std::move(m), std::move(s), -1);
    }

    // Runs the steps; returns false (after reporting) at the first failure.
    bool run(long steps, run_stats& stats) {
        for (step_ = 0; step_ < steps; ++step_) {
            if (phase_left_-- <= 0) new_phase();
            op_.clear();
            error_.clear();
            try {
                one_step();
            } catch (const std::exception& e) {
                chaos::active = false;
                if (error_.empty()) error_ = std::string("unexpected exception escaped: ") + e.what();
            }
            chaos::active = false;
            if (cfg_.verbose) std::fprintf(stderr, "[fuzz] seed %" PRIu64 " step %ld: %s\n", seed_, step_, op_.c_str());
            if (error_.empty()) check_all();
            if (!error_.empty()) {
                report();
                add_stats(stats);
                abandon();
                return false;
            }
            ++stats.steps;
        }
        add_stats(stats);
        return true;
    }

private:
    void add_stats(run_stats& stats) const {
        stats.throws += throws_;
        stats.merges += merges_;
        stats.calm_checks += calm_checks_;
        stats.lies += chaos::lies;
        stats.hash_changes += chaos::hash_changes;
    }

    // After a failure the reference counts may be wrong, and releasing the maps could free a
    // node twice and crash the whole test program: keep them alive, reachable (so that no leak
    // is reported either), and let the other tests run.
    void abandon() {
        static std::vector<std::vector<version>>* graveyard = new std::vector<std::vector<version>>;
        static std::vector<Transient>* transients = new std::vector<Transient>;
        graveyard->push_back(std::move(pool_));
        pool_.clear();
        if (t_) transients->push_back(std::move(*t_));
        t_.reset();
    }

    // ---- reporting -------------------------------------------------------------------------

    void report() {
        ADD_FAILURE() << "adversarial fuzz failure\n  seed " << seed_ << ", step " << step_ << " (" << (Cache ? "CachedHash" : "UncachedHash")
                      << ", shape " << chaos::shape_names[chaos::shape] << ", " << universe_ << " keys)\n  phase: " << phase_
                      << "\n  operation: " << op_ << "\n  failure: " << error_
                      << "\n  replay: PYPERSISTENT_FUZZ_SEED=" << seed_ << " PYPERSISTENT_FUZZ_ITERATIONS=" << step_ + 1
                      << " PYPERSISTENT_FUZZ_VERBOSE=1 test_adversarial --gtest_filter='*." << (Cache ? "CachedHash" : "UncachedHash")
                      << "/0'";
    }
    bool fail(const std::string& what) {
        if (error_.empty()) error_ = what;
        return false;
    }
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    void describe(const char* fmt, ...) {
        char buf[256];
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        op_ += buf;
    }
    static std::string str(const snap& s) {
        std::string out = "[";
        for (const rec& r : s) {
            char buf[64];
            if (Cache) {
                std::snprintf(buf, sizeof buf, " k%d=v%d#%016" PRIx64, r.k, r.v, r.h);
            } else {
                std::snprintf(buf, sizeof buf, " k%d=v%d", r.k, r.v);
            }
            out += buf;
        }
        return out + " ]";
    }

    // ---- randomness ------------------------------------------------------------------------

    std::uint64_t below(std::uint64_t n) { return rng_() % n; }
    int key() { return static_cast<int>(below(static_cast<std::uint64_t>(universe_))); }
    int value() { return static_cast<int>(below(max_values)); }
    std::size_t pick() { return static_cast<std::size_t>(below(pool_.size())); }

    void new_phase() {
        phase_left_ = 10 + static_cast<long>(below(150));
        chaos::hp = {};
        chaos::key_eq = {};
        chaos::value_eq = {};
        calm_ = below(3) == 0;
        if (calm_) {
            if (below(2)) chaos::salt.fill(0);  // old versions may become consistent again
        } else {
            auto maybe = [&](unsigned max) { return below(2) ? 0u : 1u + static_cast<unsigned>(below(max)); };
            chaos::hp.throw_per_mille = maybe(40);
            chaos::hp.bump_per_mille = maybe(150);
            chaos::hp.random_per_mille = maybe(150);
            auto eq = [&](chaos::eq_params& p) {
                p.mode = static_cast<chaos::eq_mode>(below(5));
                p.lie_per_mille = p.mode == chaos::eq_mode::random_answer ? 20u + static_cast<unsigned>(below(480)) : 0u;
                p.throw_per_mille = maybe(40);
            };
            eq(chaos::key_eq);
            eq(chaos::value_eq);
            if (chaos::describe() == "calm") chaos::key_eq.mode = chaos::eq_mode::flip;
        }
        phase_ = chaos::describe();
    }

    // ---- snapshots and versions ------------------------------------------------------------

    static rec rec_of(const entry& e) {
        hash_t h = 0;
        if constexpr (Cache) h = e.hash;
        return rec{e.first.id, e.second.id, h};
    }
    template <class M>
    static snap snapshot(const M& m) {
        snap s;
        for (auto it = m.begin(); it != m.end(); ++it) {
            s.push_back(rec_of(*it));
            if (s.size() > 10000) break;  // a broken iteration must not run forever
        }
        return s;
    }

    // Lying equalities duplicate keys; versions past this size are checked once, then dropped,
    // so that the checks after every step stay cheap.
    static constexpr std::size_t max_entries = 200;

    long push(Map m, snap s, long parent) {
        const long serial = serial_++;
        if (s.size() > max_entries) return serial;
        version v{std::move(m), std::move(s), serial, parent};
        if (pool_.size() < 10) {
            pool_.push_back(std::move(v));
        } else {
            pool_[pick()] = std::move(v);
        }
        return serial;
    }

    // A map built from scratch under honest functors: it shares no node with the others.
    Map fresh_map() {
        const bool saved = chaos::active;
        chaos::active = false;
        Transient t;
        const int n = static_cast<int>(below(static_cast<std::uint64_t>(universe_) + 1));
        for (int i = 0; i < n; ++i) {
            const int k = key(), v = value();  // in this order on every compiler (replays)
            t.set(key_h(k), val_h(v));
        }
        chaos::active = saved;
        return t.persistent();
    }

    // ---- structure ---------------------------------------------------------------------------

    struct walk_result {
        std::string error;
        std::size_t keys = 0;
        bool calm_consistent = true;  // every entry sits where the current honest hash puts it
    };

    static void walk(const node* n, unsigned shift, hash_t prefix, bool is_root, walk_result& r) {
        if (!r.error.empty()) return;
        auto bad = [&](const char* what) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "%s (node at shift %u, path %016" PRIx64 ")", what, shift, prefix);
            r.error = buf;
        };
        if (n->refs.load() == 0) return bad("node with a zero reference count");
        const entry* es = Trie::entries(n);
        if (n->collision) {
            if (is_root) return bad("collision node at the root");
            if (shift < 64) return bad("collision node above the last bitmap level");
            if (n->nodemap != 0) return bad("collision node with children");
            if (n->datamap < 2) return bad("collision node with fewer than two entries");
            for (unsigned i = 0; i < n->datamap; ++i) {
                if constexpr (Cache) {
                    if (es[i].hash != prefix) return bad("collision entry whose cached hash differs from its path");
                }
                if (chaos::calm_hash(es[i].first.id) != prefix) r.calm_consistent = false;
            }
            r.keys += n->datamap;
            return;
        }
        if (shift >= 64) return bad("bitmap node below the last bitmap level");
        if (n->datamap & n->nodemap) return bad("datamap and nodemap overlap");
        if (shift == 60 && ((n->datamap | n->nodemap) >> 16) != 0) return bad("fragment beyond the last level's 4 bits");
        const hash_t low_mask = shift == 0 ? 0 : ((hash_t(1) << shift) - 1);
        unsigned ei = 0;
        for (std::uint32_t m = n->datamap; m; m &= m - 1, ++ei) {
            const unsigned f = pypersistent::detail::popcount((m & (0u - m)) - 1);
            if constexpr (Cache) {
                const hash_t h = es[ei].hash;
                if ((h & low_mask) != prefix || ((h >> shift) & 31u) != f) {
                    return bad("entry not in the slot of its cached hash");
                }
                if (chaos::calm_hash(es[ei].first.id) != h) r.calm_consistent = false;
            } else {
                const hash_t h = chaos::calm_hash(es[ei].first.id);
                if ((h & low_mask) != prefix || ((h >> shift) & 31u) != f) r.calm_consistent = false;
            }
        }
        const std::size_t before = r.keys;
        r.keys += ei;
        const auto* cs = Trie::children(n);
        unsigned ci = 0;
        for (std::uint32_t m = n->nodemap; m; m &= m - 1, ++ci) {
            const unsigned f = pypersistent::detail::popcount((m & (0u - m)) - 1);
            if (!cs[ci]) return bad("null child");
            walk(cs[ci], shift + 5, prefix | (hash_t(f) << shift), false, r);
            if (!r.error.empty()) return;
        }
        if (!is_root && r.keys - before < 2) return bad("non-root subtree with fewer than two keys (not canonical)");
        if (is_root && r.keys == before) return bad("empty root node");
    }

    static walk_result structure(const node* root) {
        walk_result r;
        if (root) walk(root, 0, 0, true, r);
        return r;
    }

    // Checks one map object: its iteration equals `expected` exactly, its size() too, and its
    // trie is well formed.
    template <class M>
    bool check_map(const M& m, const snap& expected, const char* what) {
        const snap now = snapshot(m);
        if (now.size() != m.size()) {
            return fail(std::string(what) + ": size() " + std::to_string(m.size()) + " but iteration yields " +
                        std::to_string(now.size()) + " entries " + str(now));
        }
        if (!(now == expected)) {
            return fail(std::string(what) + " changed: was " + str(expected) + ", now " + str(now));
        }
        const walk_result r = structure(m.root());
        if (!r.error.empty()) return fail(std::string(what) + ": " + r.error);
        if (r.keys != now.size()) return fail(std::string(what) + ": trie holds " + std::to_string(r.keys) + " keys, iteration " + std::to_string(now.size()));
        return true;
    }

    // Whether a map's contents can be judged against a model: every entry where the current
    // honest hash puts it, and no key id twice.
    template <class M>
    static bool clean(const M& m, const snap& s) {
        std::uint64_t seen = 0;
        for (const rec& r : s) {
            const std::uint64_t bit = std::uint64_t(1) << r.k;
            if (seen & bit) return false;
            seen |= bit;
        }
        const walk_result w = structure(m.root());
        return w.error.empty() && w.calm_consistent;
    }
    static model model_of(const snap& s) {
        model out;
        for (const rec& r : s) out[r.k] = r.v;
        return out;
    }
    static std::string str(const model& m) {
        std::string out = "{";
        for (const auto& kv : m) out += " k" + std::to_string(kv.first) + "=v" + std::to_string(kv.second);
        return out + " }";
    }

    // ---- global accounting -------------------------------------------------------------------

    void check_all() {
        for (const version& v : pool_) {
            char what[64];
            std::snprintf(what, sizeof what, "version #%ld", v.serial);
            if (!check_map(v.map, v.s, what)) return;
        }
        if (t_ && !check_map(*t_, ts_, "the transient")) return;
        check_accounting();
    }

    void check_accounting() {
        refs_.clear();
        order_.clear();
        auto root = [&](const node* r) {
            if (r && refs_[r]++ == 0) order_.push_back(r);
        };
        for (const version& v : pool_) root(v.map.root());
        if (t_) root(t_->root());
        std::array<long, max_keys> keys{};
        std::array<long, max_values> values{};
        long bytes = 0, handles = 0;
        for (std::size_t i = 0; i < order_.size(); ++i) {
            const node* n = order_[i];
            const unsigned nc = Trie::child_count(n), ne = Trie::entry_count(n);
            bytes += static_cast<long>(Trie::node_bytes(ne, nc));
            const entry* es = Trie::entries(n);
            for (unsigned e = 0; e < ne; ++e) {
                ++keys[static_cast<std::size_t>(es[e].first.id)];
                ++values[static_cast<std::size_t>(es[e].second.id)];
            }
            handles += 2 * static_cast<long>(ne);
            const auto* cs = Trie::children(n);
            for (unsigned c = 0; c < nc; ++c) {
                if (refs_[cs[c]]++ == 0) order_.push_back(cs[c]);
            }
        }
        for (const node* n : order_) {
            if (n->refs.load() != static_cast<std::uint32_t>(refs_[n])) {
                char buf[128];
                std::snprintf(buf, sizeof buf, "node %p has reference count %u, but %ld references to it exist", static_cast<const void*>(n),
                              static_cast<unsigned>(n->refs.load()), refs_[n]);
                fail(buf);
                return;
            }
        }
        if (counts::live_nodes != static_cast<long>(order_.size())) {
            fail(std::to_string(counts::live_nodes) + " nodes alive, " + std::to_string(order_.size()) + " reachable (leak or double free)");
            return;
        }
        if (counts::live_bytes != bytes) {
            fail(std::to_string(counts::live_bytes) + " bytes alive, " + std::to_string(bytes) + " reachable");
            return;
        }
        if (counts::size_mismatches != 0) {
            fail("a node was deallocated with a size other than its allocation's");
            return;
        }
        if (counts::net_retained != handles) {
            fail(std::to_string(counts::net_retained) + " handles retained, " + std::to_string(handles) + " held by reachable entries");
            return;
        }
        for (std::size_t id = 0; id < max_keys; ++id) {
            if (counts::key_retains[id] - counts::key_releases[id] != keys[id]) {
                fail("key " + std::to_string(id) + ": retained " + std::to_string(counts::key_retains[id]) + ", released " +
                     std::to_string(counts::key_releases[id]) + ", held by " + std::to_string(keys[id]) + " reachable entries");
                return;
            }
        }
        for (std::size_t id = 0; id < max_values; ++id) {
            if (counts::value_retains[id] - counts::value_releases[id] != values[id]) {
                fail("value " + std::to_string(id) + ": retained " + std::to_string(counts::value_retains[id]) + ", released " +
                     std::to_string(counts::value_releases[id]) + ", held by " + std::to_string(values[id]) + " reachable entries");
                return;
            }
        }
    }

    // ---- running one operation under chaos ----------------------------------------------------

    // Runs f with hostile functors; returns whether it threw (a chaos_error).
    template <class F>
    bool attempt(F&& f) {
        chaos::active = true;
        try {
            f();
        } catch (const chaos_error&) {
            chaos::active = false;
            ++throws_;
            return true;
        }
        chaos::active = false;
        return false;
    }

    bool unchanged_counts(const net_state& before, const char* what) {
        if (!(net_state() == before)) {
            return fail(std::string("a throwing ") + what + " left allocations or handles behind (nodes " + std::to_string(before.nodes) +
                        " -> " + std::to_string(counts::live_nodes) + ", retained " + std::to_string(before.retained) + " -> " +
                        std::to_string(counts::net_retained) + ")");
        }
        return true;
    }

    // Multiset differences old - new and new - old.
    static void diff(snap a, snap b, snap& removed, snap& added) {
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        removed.clear();
        added.clear();
        std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(removed));
        std::set_difference(b.begin(), b.end(), a.begin(), a.end(), std::back_inserter(added));
    }

    // A set of (k, v) changed nothing, added exactly (k, v), or gave one existing key value v.
    // `explicit_hash`: the added entry must carry that hash. Returns the kind of change:
    // 0 none, 1 added, 2 replaced; -1 after reporting a failure.
    int check_set_effect(const snap& before, const snap& after, int k, int v, std::optional<hash_t> explicit_hash) {
        snap removed, added;
        diff(before, after, removed, added);
        if (removed.empty() && added.empty()) return 0;
        if (removed.empty() && added.size() == 1 && added[0].k == k && added[0].v == v) {
            if (Cache && explicit_hash && added[0].h != *explicit_hash) {
                fail("set_hashed stored a different hash than it was given");
                return -1;
            }
            return 1;
        }
        if (removed.size() == 1 && added.size() == 1 && removed[0].k == added[0].k && removed[0].h == added[0].h && added[0].v == v) {
            return 2;
        }
        fail("set(k" + std::to_string(k) + ", v" + std::to_string(v) + ") changed more than one entry: removed " + str(removed) +
             ", added " + str(added));
        return -1;
    }
    // An erase removed at most one entry and added none. Returns the number removed, -1 on failure.
    int check_erase_effect(const snap& before, const snap& after, int k) {
        snap removed, added;
        diff(before, after, removed, added);
        if (added.empty() && removed.size() <= 1) return static_cast<int>(removed.size());
        fail("erase(k" + std::to_string(k) + ") changed too much: removed " + str(removed) + ", added " + str(added));
        return -1;
    }
    // A merge holds at least a's count and at most both; every entry's key (with its hash) and
    // value come from the inputs.
    bool check_merge_bounds(const snap& a, const snap& b, const snap& out) {
        if (out.size() < a.size() || out.size() > a.size() + b.size()) {
            return fail("merge of " + std::to_string(a.size()) + " and " + std::to_string(b.size()) + " entries yields " +
                        std::to_string(out.size()));
        }
        std::set<std::pair<int, hash_t>> keys;
        std::uint32_t values = 0;
        for (const snap* s : {&a, &b}) {
            for (const rec& r : *s) {
                keys.insert({r.k, r.h});
                values |= 1u << r.v;
            }
        }
        for (const rec& r : out) {
            if (!keys.count({r.k, r.h}) || !(values & (1u << r.v))) {
                return fail("merge produced an entry k" + std::to_string(r.k) + "=v" + std::to_string(r.v) + " found in neither input");
            }
        }
        return true;
    }
    bool check_model(const snap& got, const model& expected, const char* what) {
        ++calm_checks_;
        const model m = model_of(got);
        if (m.size() != got.size() || m != expected) {
            return fail(std::string("calm ") + what + ": got " + str(got) + ", expected " + str(expected));
        }
        return true;
    }

    // ---- operations ----------------------------------------------------------------------------

    void one_step() {
        const std::uint64_t r = below(100);
        if (r < 18) return op_set();
        if (r < 30) return op_erase();
        if (r < 44) return op_merge();
        if (r < 50) return op_find();
        if (r < 55) return op_equal();
        if (r < 57) return op_iterate();
        if (r < 60) return op_drop();
        if (r < 62) return op_fresh();
        if (r < 66 || !t_) return op_transient_start();
        if (r < 77) return op_transient_set();
        if (r < 85) return op_transient_erase();
        if (r < 91) return op_transient_merge();
        if (r < 93) return op_transient_find();
        if (r < 98) return op_transient_persistent(false);
        return op_transient_persistent(true);
    }

    void op_set() {
        const std::size_t i = pick();
        const int k = key(), v = value();
        std::optional<hash_t> h;
        if (below(8) == 0) h = chaos::shape_hash(rng_());
        describe("persistent set on version #%ld (%zu entries): k%d=v%d", pool_[i].serial, pool_[i].s.size(), k, v);
        if (h) describe(" with explicit hash %016" PRIx64, *h);
        const bool calm_clean = calm_ && !h && clean(pool_[i].map, pool_[i].s);
        const net_state before;
        Map out;
        const Map& src = pool_[i].map;
        if (attempt([&] { out = h ? src.set_hashed(key_h(k), val_h(v), *h) : src.set(key_h(k), val_h(v)); })) {
            describe(" -> threw");
            unchanged_counts(before, "persistent set");
            return;
        }
        snap s = snapshot(out);
        if (s.size() != out.size()) {
            fail("result of set: size() " + std::to_string(out.size()) + " but iteration yields " + std::to_string(s.size()));
            return;
        }
        const int effect = check_set_effect(pool_[i].s, s, k, v, h);
        if (effect < 0) return;
        if ((effect == 0) != out.identical(src)) {
            fail(effect == 0 ? "set changed nothing but returned a new root" : "set changed the map but returned the same root");
            return;
        }
        if (calm_clean) {
            model m = model_of(pool_[i].s);
            m[k] = v;
            if (!check_model(s, m, "set")) return;
            if (!clean(out, s)) {
                fail("calm set on a consistent map produced an inconsistent one");
                return;
            }
        }
        push(std::move(out), std::move(s), pool_[i].serial);
    }

    void op_erase() {
        const std::size_t i = pick();
        const int k = key();
        std::optional<hash_t> h;
        if (below(8) == 0) h = chaos::shape_hash(rng_());
        describe("persistent erase on version #%ld (%zu entries): k%d", pool_[i].serial, pool_[i].s.size(), k);
        if (h) describe(" with explicit hash %016" PRIx64, *h);
        const bool calm_clean = calm_ && !h && clean(pool_[i].map, pool_[i].s);
        const net_state before;
        Map out;
        const Map& src = pool_[i].map;
        if (attempt([&] { out = h ? src.erase_hashed(key_h(k), *h) : src.erase(key_h(k)); })) {
            describe(" -> threw");
            unchanged_counts(before, "persistent erase");
            return;
        }
        snap s = snapshot(out);
        if (s.size() != out.size()) {
            fail("result of erase: size() " + std::to_string(out.size()) + " but iteration yields " + std::to_string(s.size()));
            return;
        }
        const int removed = check_erase_effect(pool_[i].s, s, k);
        if (removed < 0) return;
        if ((removed == 0) != out.identical(src)) {
            fail(removed == 0 ? "erase removed nothing but returned a new root" : "erase removed an entry but returned the same root");
            return;
        }
        if (calm_clean) {
            model m = model_of(pool_[i].s);
            m.erase(k);
            if (!check_model(s, m, "erase")) return;
        }
        push(std::move(out), std::move(s), pool_[i].serial);
    }

    // A pair of versions for a merge: often a version and its parent (they share most nodes and
    // differ by one edit), in either order.
    std::pair<std::size_t, std::size_t> merge_pair() {
        const std::size_t i = pick();
        if (below(3) != 0) {
            for (std::size_t j = 0; j < pool_.size(); ++j) {
                if (pool_[j].serial == pool_[i].parent) return below(2) ? std::make_pair(i, j) : std::make_pair(j, i);
            }
        }
        return {i, pick()};
    }

    void op_merge() {
        ++merges_;
        const auto [i, j] = merge_pair();
        describe("persistent merge: version #%ld (%zu entries) .merge(version #%ld (%zu entries))", pool_[i].serial, pool_[i].s.size(),
                 pool_[j].serial, pool_[j].s.size());
        const bool calm_clean = calm_ && clean(pool_[i].map, pool_[i].s) && clean(pool_[j].map, pool_[j].s);
        const net_state before;
        Map out;
        const Map& a = pool_[i].map;
        const Map& b = pool_[j].map;
        if (attempt([&] { out = a.merge(b); })) {
            describe(" -> threw");
            unchanged_counts(before, "persistent merge");
            return;
        }
        snap s = snapshot(out);
        if (s.size() != out.size()) {
            fail("result of merge: size() " + std::to_string(out.size()) + " but iteration yields " + std::to_string(s.size()) +
                 " entries " + str(s) + "; inputs " + str(pool_[i].s) + " and " + str(pool_[j].s));
            return;
        }
        if (!check_merge_bounds(pool_[i].s, pool_[j].s, s)) return;
        if (calm_clean) {
            model m = model_of(pool_[i].s);
            for (const rec& r : pool_[j].s) m[r.k] = r.v;
            if (!check_model(s, m, "merge")) return;
        }
        push(std::move(out), std::move(s), pool_[j].serial);
    }

    template <class M>
    void check_find(const M& m, const snap& s, bool calm_clean, int k, const val_h* found, bool has, bool same_calls) {
        if (found) {
            bool known = false;
            for (const rec& r : s) known |= r.v == found->id;
            if (!known) {
                fail("find returned a value that is not in the map");
                return;
            }
        }
        if (calm_clean) {
            ++calm_checks_;
            const model mm = model_of(s);
            const auto it = mm.find(k);
            if ((found != nullptr) != (it != mm.end()) || (found && found->id != it->second) || (same_calls && has != (found != nullptr))) {
                fail("calm find(k" + std::to_string(k) + ") wrong on " + str(mm));
            }
        }
        (void)m;
    }

    void op_find() {
        const std::size_t i = pick();
        const int k = key();
        const bool hashed = below(6) == 0;
        describe("persistent find/contains on version #%ld (%zu entries): k%d%s", pool_[i].serial, pool_[i].s.size(), k,
                 hashed ? " (find_hashed with the honest hash)" : "");
        const bool calm_clean = calm_ && clean(pool_[i].map, pool_[i].s);
        const Map& m = pool_[i].map;
        const val_h* found = nullptr;
        bool has = false;
        if (attempt([&] {
                found = hashed ? m.find_hashed(key_h(k), chaos::calm_hash(k)) : m.find(key_h(k));
                has = m.contains(key_h(k));
            })) {
            describe(" -> threw");
            return;
        }
        check_find(m, pool_[i].s, calm_clean, k, found, has, true);
    }

    void op_equal() {
        const auto [i, j] = merge_pair();
        describe("persistent ==: version #%ld == version #%ld", pool_[i].serial, pool_[j].serial);
        const bool calm_clean = calm_ && clean(pool_[i].map, pool_[i].s) && clean(pool_[j].map, pool_[j].s);
        bool eq = false, ne = false;
        const Map& a = pool_[i].map;
        const Map& b = pool_[j].map;
        if (attempt([&] {
                eq = a == b;
                ne = a != b;
            })) {
            describe(" -> threw");
            return;
        }
        if (a.identical(b) && !eq) {
            fail("a version is not == to itself");
            return;
        }
        if (calm_clean) {
            ++calm_checks_;
            const bool expected = model_of(pool_[i].s) == model_of(pool_[j].s);
            if (eq != expected || ne == eq) {
                fail(std::string("calm == says ") + (eq ? "equal" : "different") + ", != says " + (ne ? "different" : "equal") + " for " +
                     str(model_of(pool_[i].s)) + " and " + str(model_of(pool_[j].s)));
            }
        }
    }

    void op_iterate() {
        const std::size_t i = pick();
        describe("iterate version #%ld with iterator copies", pool_[i].serial);
        const Map& m = pool_[i].map;
        const snap& s = pool_[i].s;
        std::size_t n = 0;
        for (auto it = m.begin(); it != m.end();) {
            auto copy = it++;
            if (n >= s.size() || !(rec_of(*copy) == s[n]) || !(rec_of(*copy.operator->()) == s[n])) {
                fail("post-increment iteration disagrees with the snapshot at position " + std::to_string(n));
                return;
            }
            ++n;
        }
        if (n != s.size()) fail("post-increment iteration visited " + std::to_string(n) + " of " + std::to_string(s.size()));
    }

    void op_drop() {
        if (pool_.size() <= 2) return op_fresh();
        const std::size_t i = pick();
        describe("drop version #%ld", pool_[i].serial);
        pool_.erase(pool_.begin() + static_cast<std::ptrdiff_t>(i));
    }

    void op_fresh() {
        describe("build a fresh version from scratch (calm)");
        Map m = fresh_map();
        snap s = snapshot(m);
        push(std::move(m), std::move(s), -1);
    }

    void op_transient_start() {
        if (below(8) == 0) {
            describe("start an empty transient");
            t_.emplace();
            ts_.clear();
            t_base_ = -1;
            return;
        }
        const std::size_t i = pick();
        describe("start a transient from version #%ld (%zu entries)", pool_[i].serial, pool_[i].s.size());
        t_.emplace(pool_[i].map.transient());
        ts_ = pool_[i].s;
        t_base_ = pool_[i].serial;
    }

    void update_transient(snap s) {
        ts_ = std::move(s);
        if (ts_.size() > max_entries) {  // see max_entries
            t_.reset();
            ts_.clear();
        }
    }

    void op_transient_set() {
        const int k = key(), v = value();
        std::optional<hash_t> h;
        if (below(8) == 0) h = chaos::shape_hash(rng_());
        describe("transient set (%zu entries): k%d=v%d", ts_.size(), k, v);
        if (h) describe(" with explicit hash %016" PRIx64, *h);
        const bool calm_clean = calm_ && !h && clean(*t_, ts_);
        const net_state before;
        const std::size_t size_before = t_->size();
        bool added = false;
        if (attempt([&] { added = h ? t_->set_hashed(key_h(k), val_h(v), *h) : t_->set(key_h(k), val_h(v)); })) {
            describe(" -> threw");
            unchanged_counts(before, "transient set");
            return;  // check_all compares the transient with ts_
        }
        snap s = snapshot(*t_);
        const int effect = check_set_effect(ts_, s, k, v, h);
        if (effect < 0) return;
        if (added != (effect == 1) || t_->size() != size_before + (added ? 1 : 0)) {
            fail("transient set returned added=" + std::to_string(added) + " but the change was of kind " + std::to_string(effect) +
                 ", size " + std::to_string(size_before) + " -> " + std::to_string(t_->size()));
            return;
        }
        if (calm_clean) {
            model m = model_of(ts_);
            if (added == (m.count(k) != 0)) {
                fail("calm transient set: added flag wrong");
                return;
            }
            m[k] = v;
            if (!check_model(s, m, "transient set")) return;
        }
        update_transient(std::move(s));
    }

    void op_transient_erase() {
        const int k = key();
        std::optional<hash_t> h;
        if (below(8) == 0) h = chaos::shape_hash(rng_());
        describe("transient erase (%zu entries): k%d", ts_.size(), k);
        if (h) describe(" with explicit hash %016" PRIx64, *h);
        const bool calm_clean = calm_ && !h && clean(*t_, ts_);
        const net_state before;
        const std::size_t size_before = t_->size();
        bool removed = false;
        if (attempt([&] { removed = h ? t_->erase_hashed(key_h(k), *h) : t_->erase(key_h(k)); })) {
            describe(" -> threw");
            unchanged_counts(before, "transient erase");
            return;
        }
        snap s = snapshot(*t_);
        const int n = check_erase_effect(ts_, s, k);
        if (n < 0) return;
        if (removed != (n == 1) || t_->size() != size_before - (removed ? 1 : 0)) {
            fail("transient erase returned removed=" + std::to_string(removed) + " but " + std::to_string(n) + " entries went, size " +
                 std::to_string(size_before) + " -> " + std::to_string(t_->size()));
            return;
        }
        if (calm_clean) {
            model m = model_of(ts_);
            if (removed != (m.erase(k) != 0)) {
                fail("calm transient erase: removed flag wrong");
                return;
            }
            if (!check_model(s, m, "transient erase")) return;
        }
        update_transient(std::move(s));
    }

    void op_transient_merge() {
        ++merges_;
        std::size_t j = pick();
        if (below(2)) {  // prefer a version related to the transient's base
            for (std::size_t x = 0; x < pool_.size(); ++x) {
                if (pool_[x].parent == t_base_ || pool_[x].serial == t_base_) j = x;
            }
        }
        describe("transient (%zu entries) merge(version #%ld (%zu entries))", ts_.size(), pool_[j].serial, pool_[j].s.size());
        const bool calm_clean = calm_ && clean(*t_, ts_) && clean(pool_[j].map, pool_[j].s);
        const net_state before;
        if (attempt([&] { t_->merge(pool_[j].map); })) {
            describe(" -> threw");
            unchanged_counts(before, "transient merge");
            return;
        }
        snap s = snapshot(*t_);
        if (s.size() != t_->size()) {
            fail("transient after merge: size() " + std::to_string(t_->size()) + " but iteration yields " + std::to_string(s.size()) +
                 " entries " + str(s) + "; inputs " + str(ts_) + " and " + str(pool_[j].s));
            return;
        }
        if (!check_merge_bounds(ts_, pool_[j].s, s)) return;
        if (calm_clean) {
            model m = model_of(ts_);
            for (const rec& r : pool_[j].s) m[r.k] = r.v;
            if (!check_model(s, m, "transient merge")) return;
        }
        update_transient(std::move(s));
    }

    void op_transient_find() {
        const int k = key();
        describe("transient find/contains (%zu entries): k%d", ts_.size(), k);
        const bool calm_clean = calm_ && clean(*t_, ts_);
        const val_h* found = nullptr;
        bool has = false;
        if (attempt([&] {
                found = t_->find(key_h(k));
                has = t_->contains(key_h(k));
            })) {
            describe(" -> threw");
            return;
        }
        check_find(*t_, ts_, calm_clean, k, found, has, true);
    }

    void op_transient_persistent(bool freeze) {
        describe(freeze ? "freeze the transient (%zu entries): persistent(), then drop it" : "transient (%zu entries) persistent(), keep editing",
                 ts_.size());
        Map m = t_->persistent();
        snap s = snapshot(m);
        if (!(s == ts_) || m.size() != s.size()) {
            fail("persistent() differs from the transient: " + str(s) + " vs " + str(ts_));
            return;
        }
        const long serial = push(std::move(m), std::move(s), t_base_);
        if (freeze) {
            t_.reset();
            ts_.clear();
        } else {
            t_base_ = serial;
        }
    }

    std::uint64_t seed_;
    settings cfg_;
    std::mt19937_64 rng_;
    int universe_ = 16;
    long step_ = 0;
    long phase_left_ = 0;
    bool calm_ = true;
    std::string phase_ = "calm";
    std::string op_;
    std::string error_;
    std::vector<version> pool_;
    long serial_ = 0;
    std::optional<Transient> t_;
    snap ts_;
    long t_base_ = -1;
    long throws_ = 0, merges_ = 0, calm_checks_ = 0;
    std::unordered_map<const node*, long> refs_;
    std::vector<const node*> order_;
};

::testing::AssertionResult everything_released() {
    if (counts::live_nodes != 0) return ::testing::AssertionFailure() << counts::live_nodes << " nodes leaked";
    if (counts::live_bytes != 0) return ::testing::AssertionFailure() << counts::live_bytes << " bytes leaked";
    if (counts::size_mismatches != 0) return ::testing::AssertionFailure() << "deallocations with a wrong size";
    long total = 0;
    for (std::size_t id = 0; id < max_keys; ++id) {
        if (counts::key_retains[id] != counts::key_releases[id]) {
            return ::testing::AssertionFailure() << "key " << id << ": " << counts::key_retains[id] << " retains, "
                                                 << counts::key_releases[id] << " releases";
        }
        total += counts::key_retains[id];
    }
    for (std::size_t id = 0; id < max_values; ++id) {
        if (counts::value_retains[id] != counts::value_releases[id]) {
            return ::testing::AssertionFailure() << "value " << id << ": " << counts::value_retains[id] << " retains, "
                                                 << counts::value_releases[id] << " releases";
        }
    }
    if (total == 0) return ::testing::AssertionFailure() << "nothing was ever retained (counting policy not used?)";
    return ::testing::AssertionSuccess();
}

template <bool Cache>
bool run_seed(std::uint64_t seed, const settings& cfg, run_stats& stats) {
    counts::reset();
    chaos::reset(seed);
    bool ok;
    {
        fuzzer<Cache> f(seed, cfg);
        ok = f.run(cfg.steps, stats);
    }
    chaos::active = false;
    if (!ok) return false;  // the maps were abandoned, not released
    EXPECT_TRUE(everything_released()) << "at the end of seed " << seed << " (" << (Cache ? "CachedHash" : "UncachedHash") << ")";
    return ok && !::testing::Test::HasFailure();
}

template <bool Cache>
void run_case(int index) {
    const settings cfg = settings::from_env();
    const char* name = Cache ? "CachedHash" : "UncachedHash";
    run_stats stats;
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    long seeds = 0;
    if (cfg.replay_seed) {
        if (index != 0) GTEST_SKIP() << "PYPERSISTENT_FUZZ_SEED is set: only case 0 runs it";
        ++seeds;
        run_seed<Cache>(*cfg.replay_seed, cfg, stats);
    } else {
        for (std::uint64_t round = 0;; ++round) {
            // The uncached policy runs other seeds (same shapes), for variety.
            const std::uint64_t seed = cfg.seed_base + (Cache ? 0 : 1000) + static_cast<std::uint64_t>(index) + n_shapes * round;
            ++seeds;
            if (!run_seed<Cache>(seed, cfg, stats)) break;
            if (cfg.seconds <= 0 || elapsed() >= cfg.seconds) break;
        }
    }
    const double secs = elapsed();
    std::printf("[ fuzz     ] %s/%d: %ld seed(s), %ld steps in %.2f s (%.0f steps/s); %ld throws, %ld lies, %ld hash changes, "
                "%ld merges, %ld calm model checks\n",
                name, index, seeds, stats.steps, secs, secs > 0 ? static_cast<double>(stats.steps) / secs : 0.0, stats.throws,
                stats.lies, stats.hash_changes, stats.merges, stats.calm_checks);
    std::fflush(stdout);
    if (!::testing::Test::HasFailure() && !cfg.replay_seed && cfg.steps >= 1000) {
        // The run must have been adversarial at all, and calm phases must have checked something.
        EXPECT_GT(stats.throws, 0);
        EXPECT_GT(stats.lies, 0);
        EXPECT_GT(stats.calm_checks, 0);
    }
}

class AdversarialFuzz : public ::testing::TestWithParam<int> {};

TEST_P(AdversarialFuzz, CachedHash) { run_case<true>(GetParam()); }
TEST_P(AdversarialFuzz, UncachedHash) { run_case<false>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Shapes, AdversarialFuzz, ::testing::Range(0, n_shapes));

}  // namespace
