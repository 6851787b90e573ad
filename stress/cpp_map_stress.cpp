// Multi-threaded stress test for the header-only core (persistent_map / transient_map).
//
// Many threads share persistent maps whose *nodes* are shared while the map *objects* move from
// thread to thread. Each thread repeatedly:
//
//   - takes a version out of a shared lock-free slot (std::atomic<Box*>, exchanged: whoever takes
//     a box out owns it exclusively), or falls back to one of its own versions or to a read-only
//     base version that every thread reads at the same time;
//   - derives new versions from it (persistent set/erase chains, transient batches frozen with
//     persistent() and then edited further, persistent and transient merges);
//   - verifies every version it touches against a model: each value is a function of its key and
//     of a tag the model records (value = key * 1000003 ^ mix(tag), ...), lookups agree with the
//     model, iteration visits every key exactly once and count == size;
//   - compares versions with == (against other versions, and against a version rebuilt from
//     scratch in a random order, which must also iterate in the same canonical order, up to the
//     order of keys sharing a whole hash);
//   - hands versions to other threads through the slots, keeps some for a while and re-verifies
//     them later (a persistent version must never change), and drops the rest.
//
// Four maps move together in each version, all holding the same keys (by index):
//   u64    persistent_map<uint64_t, uint64_t>, std::hash
//   weak   uint64_t -> uint64_t with a deliberately weak hash: runs of keys share a whole 64-bit
//          hash (collision nodes at the bottom of long single-child chains), one group of keys
//          all share a single hash (a large collision node)
//   weakc  the same with cache_hash = true
//   str    uint64_t -> std::string (heap-allocated strings, so ASan sees their lifetimes)
//
// Node memory goes through a counting policy; after every map is gone the live node count and
// live byte count must both be 0, and every deallocate must have been given the size that was
// allocated.
//
// Exit status: 0 when every check passed, 1 on any failed check, 2 on bad arguments.

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
#include <ctime>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pp = pypersistent;

namespace {

// ---- failure reporting (stress_support.hpp) -----------------------------------------------

using stress::g_checks;
using stress::g_failures;
using stress::parse_number;
using stress::t_checks;

// ---- counting policy (stress_support.hpp) ---------------------------------------------------

using stress::counting_cached_policy;
using stress::counting_policy;
using stress::g_live_bytes;
using stress::g_live_nodes;
using stress::g_size_mismatches;
using stress::g_total_allocations;

// ---- keys, hashes and values ----------------------------------------------------------------

inline std::uint64_t splitmix(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
inline std::uint64_t rotl(std::uint64_t x, unsigned r) noexcept { return (x << r) | (x >> (64 - r)); }
inline std::uint64_t rotr(std::uint64_t x, unsigned r) noexcept { return (x >> r) | (x << (64 - r)); }

struct rng {
    std::uint64_t state;
    explicit rng(std::uint64_t seed) : state(splitmix(seed)) {}
    std::uint64_t next() noexcept { return splitmix(state++); }
    std::uint32_t below(std::uint32_t n) noexcept { return static_cast<std::uint32_t>((next() >> 32) * n >> 32); }
    bool chance(std::uint32_t percent) noexcept { return below(100) < percent; }
};

inline std::uint64_t mix_tag(std::uint32_t tag) noexcept { return splitmix(0xABCDull ^ tag); }

// A key whose 32-bit index sits in the middle bits and whose low bits (the first trie levels,
// std::hash being the identity) are pseudo-random.
inline std::uint64_t scattered_key(std::uint32_t index, std::uint64_t salt) noexcept {
    const std::uint64_t high = splitmix(index ^ salt) & 0xFFFFFFFF00000000ull;
    return rotl(high | index, 17);
}
inline std::uint32_t scattered_index(std::uint64_t key) noexcept { return static_cast<std::uint32_t>(rotr(key, 17)); }

// Keys 4j..4j+3 share one full 64-bit hash (collision nodes of up to 3-4 entries below a chain of
// single-child nodes), except that every multiple of 16 gets the same constant hash (one big
// collision node).
struct weak_hash {
    std::size_t operator()(std::uint64_t k) const noexcept {
        if (k % 16 == 0) return 0x5A5A5A5A5A5A5A5Aull;
        return static_cast<std::size_t>(splitmix(k >> 2));
    }
};

using u64_map = pp::persistent_map<std::uint64_t, std::uint64_t, std::hash<std::uint64_t>, std::equal_to<std::uint64_t>,
                                   std::equal_to<std::uint64_t>, counting_policy>;
using weak_map = pp::persistent_map<std::uint64_t, std::uint64_t, weak_hash, std::equal_to<std::uint64_t>,
                                    std::equal_to<std::uint64_t>, counting_policy>;
using weakc_map = pp::persistent_map<std::uint64_t, std::uint64_t, weak_hash, std::equal_to<std::uint64_t>,
                                     std::equal_to<std::uint64_t>, counting_cached_policy>;
using str_map = pp::persistent_map<std::uint64_t, std::string, std::hash<std::uint64_t>, std::equal_to<std::uint64_t>,
                                   std::equal_to<std::string>, counting_policy>;

// How each map spells key i and the value of key i under tag t, and maps a key back to i.
struct u64_traits {
    using map = u64_map;
    using hasher = std::hash<std::uint64_t>;
    static constexpr const char* name = "u64";
    static std::uint64_t key(std::uint32_t i) { return scattered_key(i, 0x1111); }
    static std::uint64_t value(std::uint32_t i, std::uint32_t tag) { return key(i) * 1000003ull ^ mix_tag(tag); }
    static bool index_of(std::uint64_t k, std::uint32_t universe, std::uint32_t& i) {
        i = scattered_index(k);
        return i < universe && key(i) == k;
    }
};
struct weak_traits {
    using map = weak_map;
    using hasher = weak_hash;
    static constexpr const char* name = "weak";
    static std::uint64_t key(std::uint32_t i) { return i; }
    static std::uint64_t value(std::uint32_t i, std::uint32_t tag) { return (std::uint64_t(i) * 1000003ull) ^ mix_tag(tag) ^ 0x77; }
    static bool index_of(std::uint64_t k, std::uint32_t universe, std::uint32_t& i) {
        i = static_cast<std::uint32_t>(k);
        return k < universe;
    }
};
struct weakc_traits : weak_traits {
    using map = weakc_map;
    static constexpr const char* name = "weakc";
};
struct str_traits {
    using map = str_map;
    using hasher = std::hash<std::uint64_t>;
    static constexpr const char* name = "str";
    static std::uint64_t key(std::uint32_t i) { return scattered_key(i, 0x2222); }
    // Longer than any small-string buffer, so every copy owns heap memory.
    static std::string value(std::uint32_t i, std::uint32_t tag) {
        std::string s = "value-of-########-under-tag-########-################";
        put_hex(&s[9], i, 8);
        put_hex(&s[28], tag, 8);
        put_hex(&s[37], key(i) * 1000003ull ^ mix_tag(tag), 16);
        return s;
    }
    static void put_hex(char* out, std::uint64_t v, int digits) {
        for (int d = digits - 1; d >= 0; --d, v >>= 4) out[d] = "0123456789abcdef"[v & 15];
    }
    static bool index_of(std::uint64_t k, std::uint32_t universe, std::uint32_t& i) {
        i = scattered_index(k);
        return i < universe && key(i) == k;
    }
};

// ---- the model and the versions ------------------------------------------------------------

// Which keys a version holds (tag != 0) and the tag their value was derived from. Immutable once
// published; shared between versions and threads through shared_ptr<const model>.
struct model {
    std::vector<std::uint32_t> tags;
    std::size_t count = 0;

    explicit model(std::uint32_t universe) : tags(universe, 0) {}
    bool operator==(const model& o) const { return count == o.count && tags == o.tags; }
    bool operator!=(const model& o) const { return !(*this == o); }
    void set(std::uint32_t i, std::uint32_t tag) {
        if (tags[i] == 0) ++count;
        tags[i] = tag;
    }
    void erase(std::uint32_t i) {
        if (tags[i] != 0) --count;
        tags[i] = 0;
    }
};
using model_ptr = std::shared_ptr<const model>;

struct version {
    u64_map u64;
    weak_map weak;
    weakc_map weakc;
    str_map str;
    model_ptr m;

    template <class Traits>
    typename Traits::map& get();
    template <class Traits>
    const typename Traits::map& get() const {
        return const_cast<version*>(this)->template get<Traits>();
    }
};
template <>
u64_map& version::get<u64_traits>() { return u64; }
template <>
weak_map& version::get<weak_traits>() { return weak; }
template <>
weakc_map& version::get<weakc_traits>() { return weakc; }
template <>
str_map& version::get<str_traits>() { return str; }

// What moves between threads. Whoever holds the pointer owns the box: the slots hand it over with
// exchange, so there is never any concurrent access to one box (only to the nodes it shares).
struct box {
    version v;
};

// ---- configuration --------------------------------------------------------------------------

struct config {
    unsigned threads = 16;
    std::uint64_t ops = 1500;  // per thread
    std::uint64_t seed = 1;
    std::uint32_t universe = 512;  // key indexes 0..universe-1
    unsigned slots = 0;            // 0: 2 * threads
    unsigned keep = 6;             // old versions each thread keeps and re-verifies
    bool verbose = false;
};

config g_cfg;

// ---- verification ---------------------------------------------------------------------------

enum class depth { light, full };

// Checks a map against its model: size, lookups (all keys or a sample), and one full iteration
// that must see every present key exactly once with the right value.
template <class Traits>
void verify_map(const typename Traits::map& map, const model& m, depth d, rng& r, const char* where) {
    const std::uint32_t U = g_cfg.universe;
    CHECK(map.size() == m.count, "%s/%s: size %zu, model %zu", where, Traits::name, map.size(), m.count);
    CHECK(map.empty() == (m.count == 0), "%s/%s: empty() disagrees", where, Traits::name);

    auto check_lookup = [&](std::uint32_t i) {
        const auto* v = map.find(Traits::key(i));
        if (m.tags[i] == 0) {
            CHECK(v == nullptr, "%s/%s: key #%u should be absent", where, Traits::name, i);
        } else {
            CHECK(v != nullptr, "%s/%s: key #%u missing", where, Traits::name, i);
            if (v) CHECK(*v == Traits::value(i, m.tags[i]), "%s/%s: key #%u has a wrong value", where, Traits::name, i);
        }
    };
    if (d == depth::full) {
        for (std::uint32_t i = 0; i < U; ++i) check_lookup(i);
    } else {
        for (int n = 0; n < 16; ++n) check_lookup(r.below(U));
    }
    // Lookups of keys outside the universe never match.
    CHECK(map.find(Traits::key(U + r.below(1000))) == nullptr, "%s/%s: foreign key found", where, Traits::name);

    if (d == depth::full || r.chance(50)) {
        std::vector<bool> seen(U, false);
        std::size_t count = 0;
        for (const auto& e : map) {
            ++count;
            std::uint32_t i = 0;
            if (!Traits::index_of(e.first, U, i)) {
                CHECK(false, "%s/%s: iteration yields an unknown key", where, Traits::name);
                continue;
            }
            CHECK(!seen[i], "%s/%s: iteration yields key #%u twice", where, Traits::name, i);
            seen[i] = true;
            CHECK(m.tags[i] != 0, "%s/%s: iteration yields absent key #%u", where, Traits::name, i);
            if (m.tags[i] != 0)
                CHECK(e.second == Traits::value(i, m.tags[i]), "%s/%s: iteration: key #%u has a wrong value", where,
                      Traits::name, i);
            if (count > U + 1) break;  // a broken trie must not loop forever
        }
        CHECK(count == map.size(), "%s/%s: iteration saw %zu entries, size %zu", where, Traits::name, count, map.size());
    }
}

void verify_version(const version& v, depth d, rng& r, const char* where) {
    verify_map<u64_traits>(v.u64, *v.m, d, r, where);
    verify_map<weak_traits>(v.weak, *v.m, d, r, where);
    verify_map<weakc_traits>(v.weakc, *v.m, d, r, where);
    verify_map<str_traits>(v.str, *v.m, d, r, where);
}

// == must agree with the models; identical roots imply equal models.
template <class Traits>
void compare_map(const version& a, const version& b, const char* where) {
    const auto& ma = a.get<Traits>();
    const auto& mb = b.get<Traits>();
    const bool want = *a.m == *b.m;
    CHECK((ma == mb) == want, "%s/%s: == says %d, models say %d", where, Traits::name, int(ma == mb), int(want));
    CHECK((ma != mb) == !want, "%s/%s: != disagrees with ==", where, Traits::name);
    CHECK((mb == ma) == want, "%s/%s: == is not symmetric", where, Traits::name);
    if (ma.identical(mb)) CHECK(want, "%s/%s: identical maps with different models", where, Traits::name);
}

void compare_versions(const version& a, const version& b, const char* where) {
    compare_map<u64_traits>(a, b, where);
    compare_map<weak_traits>(a, b, where);
    compare_map<weakc_traits>(a, b, where);
    compare_map<str_traits>(a, b, where);
}

// ---- derivations ----------------------------------------------------------------------------

struct op {
    bool erase;
    std::uint32_t index;
    std::uint32_t tag;  // for a set: the tag of the new value
};

// A random batch of sets and erases against model `m`, updating `m` as it goes. Some sets
// re-assign the current value (same tag), which must leave a persistent map identical.
std::vector<op> random_ops(model& m, std::size_t n, std::uint32_t& next_tag, rng& r, unsigned erase_percent) {
    std::vector<op> ops;
    ops.reserve(n);
    const std::uint32_t tag = next_tag++;
    for (std::size_t k = 0; k < n; ++k) {
        const std::uint32_t i = r.below(g_cfg.universe);
        if (r.chance(erase_percent)) {
            ops.push_back({true, i, 0});
            m.erase(i);
        } else {
            const std::uint32_t t = (m.tags[i] != 0 && r.chance(15)) ? m.tags[i] : tag;
            ops.push_back({false, i, t});
            m.set(i, t);
        }
    }
    return ops;
}

// Applies ops one persistent update at a time, checking each step's size and identity rules.
template <class Traits>
typename Traits::map apply_persistent(const typename Traits::map& base, const model& before, const std::vector<op>& ops) {
    using map = typename Traits::map;
    model cur_model = before;
    map cur = base;
    for (const op& o : ops) {
        const auto key = Traits::key(o.index);
        const bool present = cur_model.tags[o.index] != 0;
        if (o.erase) {
            map next = cur.erase(key);
            CHECK(next.size() == cur.size() - (present ? 1 : 0), "persistent erase/%s: size", Traits::name);
            if (!present) CHECK(next.identical(cur), "persistent erase/%s: erasing an absent key changed the root", Traits::name);
            CHECK(!next.contains(key), "persistent erase/%s: key still there", Traits::name);
            cur_model.erase(o.index);
            cur = std::move(next);
        } else {
            const bool same = present && cur_model.tags[o.index] == o.tag;
            map next = cur.set(key, Traits::value(o.index, o.tag));
            CHECK(next.size() == cur.size() + (present ? 0 : 1), "persistent set/%s: size", Traits::name);
            if (same) CHECK(next.identical(cur), "persistent set/%s: assigning the same value changed the root", Traits::name);
            const auto* v = next.find(key);
            CHECK(v && *v == Traits::value(o.index, o.tag), "persistent set/%s: value not stored", Traits::name);
            // The map we derived from must not see the change.
            const auto* old = cur.find(key);
            if (present) {
                CHECK(old && *old == Traits::value(o.index, cur_model.tags[o.index]), "persistent set/%s: old version changed",
                      Traits::name);
            } else {
                CHECK(old == nullptr, "persistent set/%s: old version gained the key", Traits::name);
            }
            cur_model.set(o.index, o.tag);
            cur = std::move(next);
        }
    }
    return cur;
}

// Applies ops to a transient, checking its return values as it goes.
template <class Traits>
void apply_transient(typename Traits::map::transient_type& t, model& cur_model, const std::vector<op>& ops) {
    for (const op& o : ops) {
        const auto key = Traits::key(o.index);
        const bool present = cur_model.tags[o.index] != 0;
        const std::size_t size_before = t.size();
        if (o.erase) {
            const bool removed = t.erase(key);
            CHECK(removed == present, "transient erase/%s: returned %d, key present %d", Traits::name, int(removed), int(present));
            CHECK(t.size() == size_before - (present ? 1 : 0), "transient erase/%s: size", Traits::name);
            CHECK(t.find(key) == nullptr, "transient erase/%s: key still there", Traits::name);
            cur_model.erase(o.index);
        } else {
            const bool added = t.set(key, Traits::value(o.index, o.tag));
            CHECK(added == !present, "transient set/%s: returned %d, key present %d", Traits::name, int(added), int(present));
            CHECK(t.size() == size_before + (present ? 0 : 1), "transient set/%s: size", Traits::name);
            const auto* v = t.find(key);
            CHECK(v && *v == Traits::value(o.index, o.tag), "transient set/%s: value not stored", Traits::name);
            cur_model.set(o.index, o.tag);
        }
    }
}

// The union of two models, b's tags winning.
model merged_model(const model& a, const model& b) {
    model out = a;
    for (std::uint32_t i = 0; i < b.tags.size(); ++i) {
        if (b.tags[i] != 0) out.set(i, b.tags[i]);
    }
    return out;
}

// Rebuilds a map holding exactly model m from nothing, inserting in a random order with some
// noise (extra keys set and erased again, values overwritten), through a transient.
template <class Traits>
typename Traits::map rebuild(const model& m, rng& r) {
    std::vector<std::uint32_t> order;
    for (std::uint32_t i = 0; i < m.tags.size(); ++i)
        if (m.tags[i] != 0) order.push_back(i);
    for (std::size_t k = order.size(); k > 1; --k) std::swap(order[k - 1], order[r.below(static_cast<std::uint32_t>(k))]);
    typename Traits::map::transient_type t;
    std::vector<std::uint32_t> noise;
    for (std::uint32_t i : order) {
        if (r.chance(10)) t.set(Traits::key(i), Traits::value(i, 0xFFFFFFFFu));  // overwritten below
        t.set(Traits::key(i), Traits::value(i, m.tags[i]));
        if (r.chance(10)) {
            const std::uint32_t j = r.below(g_cfg.universe);
            if (m.tags[j] == 0) {
                t.set(Traits::key(j), Traits::value(j, 1));
                noise.push_back(j);
            }
        }
    }
    for (std::uint32_t j : noise) t.erase(Traits::key(j));
    return t.persistent();
}

// A rebuilt map must be == and must iterate in exactly the same order (the canonical form).
template <class Traits>
void check_rebuild(const version& v, rng& r, const char* where) {
    const auto& map = v.get<Traits>();
    const auto fresh = rebuild<Traits>(*v.m, r);
    CHECK(fresh == map, "%s/%s: rebuilt map is not ==", where, Traits::name);
    CHECK(map == fresh, "%s/%s: == with a rebuilt map is not symmetric", where, Traits::name);
    CHECK(fresh.size() == map.size(), "%s/%s: rebuilt map size", where, Traits::name);
    // Collision nodes are unordered arrays (their order follows the order of insertion), so
    // keys sharing a whole hash may come in either order: compare the sequences of hashes.
    using hasher = typename Traits::hasher;
    auto a = map.begin();
    auto b = fresh.begin();
    bool same_order = true;
    for (; a != map.end() && b != fresh.end(); ++a, ++b) {
        if (hasher{}(a->first) != hasher{}(b->first)) {
            same_order = false;
            break;
        }
    }
    if (same_order) same_order = (a == map.end()) && (b == fresh.end());
    CHECK(same_order, "%s/%s: rebuilt map iterates in a different order", where, Traits::name);
    // A map rebuilt with one value changed, or one key dropped, must not be ==.
    if (v.m->count > 0) {
        std::uint32_t i = r.below(g_cfg.universe);
        while (v.m->tags[i] == 0) i = (i + 1) % g_cfg.universe;
        const auto changed = fresh.set(Traits::key(i), Traits::value(i, v.m->tags[i] ^ 0x40000000u));
        CHECK(!(changed == map), "%s/%s: == ignores a changed value", where, Traits::name);
        const auto dropped = fresh.erase(Traits::key(i));
        CHECK(!(dropped == map) && dropped != map, "%s/%s: == ignores a missing key", where, Traits::name);
    }
}

// ---- shared state ---------------------------------------------------------------------------

std::vector<std::atomic<box*>>* g_slots = nullptr;
// Read-only versions built before the threads start; every thread reads and copies them at once.
std::vector<version>* g_bases = nullptr;

std::atomic<std::uint64_t> g_handoffs{0};
std::atomic<std::uint64_t> g_takes{0};
std::atomic<std::uint64_t> g_versions_made{0};
std::atomic<unsigned> g_ready{0};

version empty_version() {
    version v;
    v.m = std::make_shared<const model>(g_cfg.universe);
    return v;
}

// ---- the worker -----------------------------------------------------------------------------

class worker {
public:
    worker(unsigned id, std::uint64_t seed) : r_(seed), next_tag_((std::uint32_t(id) + 1) << 22) {}

    void run() {
        // Start together, so the threads really overlap even on few cores.
        g_ready.fetch_add(1);
        while (g_ready.load() < g_cfg.threads) std::this_thread::yield();

        for (std::uint64_t n = 0; n < g_cfg.ops; ++n) step();

        // Drop everything this thread kept, verifying it one last time.
        for (const version& v : kept_) verify_version(v, depth::full, r_, "kept at exit");
        kept_.clear();
        g_checks.fetch_add(t_checks);
        t_checks = 0;
    }

private:
    std::vector<std::atomic<box*>>& slots() { return *g_slots; }

    // Takes a version to work from: out of a shared slot if one has a box, otherwise one of our
    // own, otherwise a shared base. The box taken out is ours alone.
    std::unique_ptr<box> take() {
        auto& s = slots();
        for (int attempt = 0; attempt < 3; ++attempt) {
            box* b = s[r_.below(static_cast<std::uint32_t>(s.size()))].exchange(nullptr, std::memory_order_acq_rel);
            if (b) {
                g_takes.fetch_add(1, std::memory_order_relaxed);
                return std::unique_ptr<box>(b);
            }
        }
        auto b = std::make_unique<box>();
        if (!kept_.empty() && r_.chance(50)) {
            b->v = kept_[r_.below(static_cast<std::uint32_t>(kept_.size()))];
        } else {
            b->v = (*g_bases)[r_.below(static_cast<std::uint32_t>(g_bases->size()))];
        }
        return b;
    }

    // Publishes a box; whatever box was in the slot comes back to us.
    std::unique_ptr<box> hand_off(std::unique_ptr<box> b) {
        auto& s = slots();
        box* old = s[r_.below(static_cast<std::uint32_t>(s.size()))].exchange(b.release(), std::memory_order_acq_rel);
        g_handoffs.fetch_add(1, std::memory_order_relaxed);
        return std::unique_ptr<box>(old);
    }

    // A version to merge with or compare against: one we kept, or a shared base.
    const version& other_version() {
        if (!kept_.empty() && r_.chance(60)) return kept_[r_.below(static_cast<std::uint32_t>(kept_.size()))];
        return (*g_bases)[r_.below(static_cast<std::uint32_t>(g_bases->size()))];
    }

    void keep(const version& v) {
        kept_.push_back(v);  // a copy: the map objects are ours, the nodes shared
        if (kept_.size() > g_cfg.keep) {
            verify_version(kept_.front(), depth::full, r_, "kept version before drop");
            kept_.pop_front();
        }
    }

    // -- derivation strategies --

    template <class Traits>
    static void set_map(version& out, typename Traits::map m) { out.get<Traits>() = std::move(m); }

    version derive_persistent(const version& base) {
        model m = *base.m;
        const auto ops = random_ops(m, 1 + r_.below(12), next_tag_, r_, r_.chance(50) ? 50 : 20);
        version out;
        out.u64 = apply_persistent<u64_traits>(base.u64, *base.m, ops);
        out.weak = apply_persistent<weak_traits>(base.weak, *base.m, ops);
        out.weakc = apply_persistent<weakc_traits>(base.weakc, *base.m, ops);
        out.str = apply_persistent<str_traits>(base.str, *base.m, ops);
        out.m = std::make_shared<const model>(std::move(m));
        return out;
    }

    // A transient from `base`: a batch, persistent() (the first version), more edits to the same
    // transient, persistent() again (the second). The first must not see the later edits, which
    // now copy the nodes the first version shares.
    template <class Traits>
    void transient_two_step(const version& base, const std::vector<op>& ops1, const std::vector<op>& ops2, version& first,
                            version& second) {
        auto t = base.get<Traits>().transient();
        model m = *base.m;
        apply_transient<Traits>(t, m, ops1);
        set_map<Traits>(first, t.persistent());
        apply_transient<Traits>(t, m, ops2);
        if (r_.chance(20)) {
            // A transient moved mid-batch keeps working (and its moved-from shell too).
            auto moved = std::move(t);
            set_map<Traits>(second, moved.persistent());
            CHECK(t.size() == 0 && t.find(Traits::key(0)) == nullptr, "transient/%s: moved-from transient not empty", Traits::name);
            t.set(Traits::key(0), Traits::value(0, 1));
            CHECK(t.size() == 1, "transient/%s: moved-from transient unusable", Traits::name);
        } else {
            set_map<Traits>(second, t.persistent());
            // Edits after the last persistent() must not reach it either.
            for (int k = 0; k < 4; ++k) t.erase(Traits::key(r_.below(g_cfg.universe)));
        }
    }

    std::pair<version, version> derive_transient(const version& base) {
        model m1 = *base.m;
        const std::size_t n = r_.chance(20) ? g_cfg.universe / 2 : 1 + r_.below(40);
        const auto ops1 = random_ops(m1, n, next_tag_, r_, r_.chance(30) ? 60 : 25);
        model m2 = m1;
        const auto ops2 = random_ops(m2, 1 + r_.below(40), next_tag_, r_, 35);
        version first, second;
        transient_two_step<u64_traits>(base, ops1, ops2, first, second);
        transient_two_step<weak_traits>(base, ops1, ops2, first, second);
        transient_two_step<weakc_traits>(base, ops1, ops2, first, second);
        transient_two_step<str_traits>(base, ops1, ops2, first, second);
        first.m = std::make_shared<const model>(std::move(m1));
        second.m = std::make_shared<const model>(std::move(m2));
        return {std::move(first), std::move(second)};
    }

    template <class Traits>
    void merge_map(const version& a, const version& b, const model& merged, version& out) {
        const auto& ma = a.get<Traits>();
        const auto& mb = b.get<Traits>();
        auto result = ma.merge(mb);
        if (merged == *a.m) CHECK(result.identical(ma), "merge/%s: a merge that adds nothing changed the root", Traits::name);
        set_map<Traits>(out, std::move(result));
    }

    version derive_merge(const version& base) {
        const version& other = other_version();
        // Sometimes merge a small derivative of base into base (shares most nodes), sometimes an
        // unrelated version.
        version b = r_.chance(40) ? derive_persistent(base) : other;
        version out;
        model merged = merged_model(*base.m, *b.m);
        merge_map<u64_traits>(base, b, merged, out);
        merge_map<weak_traits>(base, b, merged, out);
        merge_map<weakc_traits>(base, b, merged, out);
        merge_map<str_traits>(base, b, merged, out);
        out.m = std::make_shared<const model>(std::move(merged));
        verify_version(b, depth::light, r_, "merge argument after merge");
        return out;
    }

    template <class Traits>
    void transient_merge_map(const version& base, const version& b, const std::vector<op>& pre, const std::vector<op>& post,
                             version& out) {
        auto t = base.get<Traits>().transient();
        model m = *base.m;
        apply_transient<Traits>(t, m, pre);
        t.merge(b.get<Traits>());
        m = merged_model(m, *b.m);
        CHECK(t.size() == m.count, "transient merge/%s: size %zu, model %zu", Traits::name, t.size(), m.count);
        // In-place edits after the merge must not reach b or base, whose nodes the merge shares.
        apply_transient<Traits>(t, m, post);
        set_map<Traits>(out, t.persistent());
    }

    version derive_transient_merge(const version& base) {
        const version b = other_version();
        model m = *base.m;
        const auto pre = random_ops(m, r_.below(20), next_tag_, r_, 30);
        m = merged_model(m, *b.m);
        const auto post = random_ops(m, r_.below(30), next_tag_, r_, 40);
        version out;
        transient_merge_map<u64_traits>(base, b, pre, post, out);
        transient_merge_map<weak_traits>(base, b, pre, post, out);
        transient_merge_map<weakc_traits>(base, b, pre, post, out);
        transient_merge_map<str_traits>(base, b, pre, post, out);
        out.m = std::make_shared<const model>(std::move(m));
        verify_version(b, depth::light, r_, "transient merge argument");
        return out;
    }

    // Erases (nearly) everything, one key at a time: exercises the collapse of every node kind
    // back to the canonical form, down to the empty map.
    version derive_drain(const version& base) {
        model m = *base.m;
        std::vector<op> ops;
        for (std::uint32_t i = 0; i < g_cfg.universe; ++i) {
            if (m.tags[i] != 0 && !r_.chance(5)) {
                ops.push_back({true, i, 0});
            }
        }
        for (std::size_t k = ops.size(); k > 1; --k) std::swap(ops[k - 1], ops[r_.below(static_cast<std::uint32_t>(k))]);
        for (const op& o : ops) m.erase(o.index);
        version out;
        if (r_.chance(50)) {
            out.u64 = apply_persistent<u64_traits>(base.u64, *base.m, ops);
            out.weak = apply_persistent<weak_traits>(base.weak, *base.m, ops);
            out.weakc = apply_persistent<weakc_traits>(base.weakc, *base.m, ops);
            out.str = apply_persistent<str_traits>(base.str, *base.m, ops);
        } else {
            version dummy;
            const std::vector<op> none;
            transient_two_step<u64_traits>(base, ops, none, dummy, out);
            transient_two_step<weak_traits>(base, ops, none, dummy, out);
            transient_two_step<weakc_traits>(base, ops, none, dummy, out);
            transient_two_step<str_traits>(base, ops, none, dummy, out);
        }
        out.m = std::make_shared<const model>(std::move(m));
        return out;
    }

    void step() {
        std::unique_ptr<box> taken = take();
        const version& base = taken->v;
        verify_version(base, r_.chance(5) ? depth::full : depth::light, r_, "taken version");

        std::vector<version> made;
        const std::uint32_t what = r_.below(100);
        if (what < 30) {
            made.push_back(derive_persistent(base));
        } else if (what < 65) {
            auto two = derive_transient(base);
            made.push_back(std::move(two.first));
            made.push_back(std::move(two.second));
        } else if (what < 80) {
            made.push_back(derive_merge(base));
        } else if (what < 93) {
            made.push_back(derive_transient_merge(base));
        } else {
            made.push_back(derive_drain(base));
        }
        g_versions_made.fetch_add(made.size(), std::memory_order_relaxed);

        // Verify what we made, and that deriving changed nothing in the base.
        for (const version& v : made) verify_version(v, r_.chance(10) ? depth::full : depth::light, r_, "new version");
        verify_version(base, depth::light, r_, "base after derivation");

        // Compare: new against base, new against each other, against another version, and
        // sometimes against a rebuild from scratch.
        for (const version& v : made) {
            compare_versions(v, base, "new vs base");
            compare_versions(v, other_version(), "new vs other");
        }
        if (made.size() == 2) compare_versions(made[0], made[1], "first vs second");
        if (r_.chance(8)) {
            const version& v = made[r_.below(static_cast<std::uint32_t>(made.size()))];
            check_rebuild<u64_traits>(v, r_, "rebuild");
            check_rebuild<weak_traits>(v, r_, "rebuild");
            check_rebuild<weakc_traits>(v, r_, "rebuild");
            check_rebuild<str_traits>(v, r_, "rebuild");
        }

        // Keep some versions to check later, then publish the new ones.
        if (r_.chance(30)) keep(made.back());
        if (r_.chance(10)) keep(base);
        for (version& v : made) {
            auto b = std::make_unique<box>();
            b->v = std::move(v);
            if (auto back = hand_off(std::move(b))) {
                // A box published by some other thread (or by us earlier): ours now.
                verify_version(back->v, depth::light, r_, "box from a slot");
                if (r_.chance(20)) keep(back->v);
            }  // dropped here
        }

        // The base goes back into circulation or is dropped.
        if (r_.chance(30)) {
            if (auto back = hand_off(std::move(taken))) verify_version(back->v, depth::light, r_, "box from a slot");
        }

        // Re-check an old version: it must never have changed.
        if (!kept_.empty() && r_.chance(20)) {
            verify_version(kept_[r_.below(static_cast<std::uint32_t>(kept_.size()))], depth::full, r_, "kept version");
        }
    }

    rng r_;
    std::uint32_t next_tag_;
    std::deque<version> kept_;
};

// ---- main -----------------------------------------------------------------------------------

[[noreturn]] void usage(const char* argv0, const char* msg) {
    if (msg) std::fprintf(stderr, "%s: %s\n", argv0, msg);
    std::fprintf(stderr,
                 "usage: %s [--short] [--threads N] [--ops N] [--seed S] [--keys N] [--slots N] [--verbose]\n"
                 "  --short      a run of a few seconds for CI (under ThreadSanitizer on 2 cores)\n"
                 "  --threads N  worker threads (default 16)\n"
                 "  --ops N      derivation steps per thread (default 1500; 100 with --short)\n"
                 "  --seed S     random seed (default 1)\n"
                 "  --keys N     size of the key universe (default 512; 256 with --short)\n"
                 "  --slots N    handoff slots (default 2 * threads)\n",
                 argv0);
    std::exit(2);
}


}  // namespace

int main(int argc, char** argv) {
    bool short_run = false;
    bool ops_given = false, keys_given = false;
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
        } else if (a == "--slots") {
            g_cfg.slots = static_cast<unsigned>(parse_number(argv[0], "--slots", value()));
        } else if (a == "--verbose") {
            g_cfg.verbose = true;
        } else if (a == "-h" || a == "--help") {
            usage(argv[0], nullptr);
        } else {
            usage(argv[0], ("unknown argument " + a).c_str());
        }
    }
    if (short_run) {
        if (!ops_given) g_cfg.ops = 100;
        if (!keys_given) g_cfg.universe = 256;
    }
    if (g_cfg.threads < 1 || g_cfg.threads > 1000) usage(argv[0], "--threads must be in 1..1000");
    if (g_cfg.universe < 16 || g_cfg.universe > (1u << 22)) usage(argv[0], "--keys must be in 16..4194304");
    if (g_cfg.slots == 0) g_cfg.slots = 2 * g_cfg.threads;

    std::printf("cpp_map_stress: %u threads x %" PRIu64 " ops, %u keys, %u slots, seed %" PRIu64 "\n", g_cfg.threads,
                g_cfg.ops, g_cfg.universe, g_cfg.slots, g_cfg.seed);
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t cpu0 = std::clock();

    {
        std::vector<std::atomic<box*>> slots(g_cfg.slots);
        for (auto& s : slots) s.store(nullptr);
        g_slots = &slots;

        // Shared read-only bases: empty, a third of the keys, all of the keys (built through
        // transients), and one derived from the full one by persistent erases.
        std::vector<version> bases;
        {
            rng r(g_cfg.seed ^ 0xBA5E);
            bases.push_back(empty_version());
            for (int which = 0; which < 2; ++which) {
                model m(g_cfg.universe);
                for (std::uint32_t i = 0; i < g_cfg.universe; ++i)
                    if (which == 1 || i % 3 == 0) m.set(i, 1 + which);
                version v;
                v.u64 = rebuild<u64_traits>(m, r);
                v.weak = rebuild<weak_traits>(m, r);
                v.weakc = rebuild<weakc_traits>(m, r);
                v.str = rebuild<str_traits>(m, r);
                v.m = std::make_shared<const model>(std::move(m));
                verify_version(v, depth::full, r, "base");
                bases.push_back(std::move(v));
            }
            model m = *bases.back().m;
            std::vector<op> ops;
            for (std::uint32_t i = 0; i < g_cfg.universe; i += 2) ops.push_back({true, i, 0});
            version v;
            v.u64 = apply_persistent<u64_traits>(bases.back().u64, m, ops);
            v.weak = apply_persistent<weak_traits>(bases.back().weak, m, ops);
            v.weakc = apply_persistent<weakc_traits>(bases.back().weakc, m, ops);
            v.str = apply_persistent<str_traits>(bases.back().str, m, ops);
            for (const op& o : ops) m.erase(o.index);
            v.m = std::make_shared<const model>(std::move(m));
            verify_version(v, depth::full, r, "base");
            bases.push_back(std::move(v));
        }
        g_bases = &bases;

        std::vector<std::thread> threads;
        std::vector<std::exception_ptr> errors(g_cfg.threads);
        for (unsigned t = 0; t < g_cfg.threads; ++t) {
            threads.emplace_back([t, &errors] {
                try {
                    worker w(t, g_cfg.seed * 0x100000001B3ull + t);
                    w.run();
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
            } catch (...) {
                CHECK(false, "thread %u threw a non-standard exception", t);
            }
        }

        // Drain the slots: every box left there must still be intact.
        rng r(g_cfg.seed ^ 0xD0);
        std::size_t left = 0;
        for (auto& s : slots) {
            std::unique_ptr<box> b(s.exchange(nullptr));
            if (b) {
                ++left;
                verify_version(b->v, depth::full, r, "box left in a slot");
            }
        }
        for (const version& v : bases) verify_version(v, depth::full, r, "base at exit");
        if (g_cfg.verbose) std::printf("boxes left in slots: %zu\n", left);
        g_bases = nullptr;
        g_slots = nullptr;
    }  // every map is gone here

    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu_secs = double(std::clock() - cpu0) / CLOCKS_PER_SEC;  // all threads
    const std::int64_t live_nodes = g_live_nodes.load();
    const std::int64_t live_bytes = g_live_bytes.load();
    CHECK(live_nodes == 0, "live node counter is %" PRId64 " after every map was dropped", live_nodes);
    CHECK(live_bytes == 0, "live byte counter is %" PRId64 " after every map was dropped", live_bytes);
    CHECK(g_size_mismatches.load() == 0, "%" PRIu64 " deallocations were given a size other than the allocated one",
          g_size_mismatches.load());
    g_checks.fetch_add(t_checks);  // main's own checks

    std::printf("cpp_map_stress: %.2fs (cpu %.2fs), %" PRIu64 " versions made, %" PRIu64 " handoffs, %" PRIu64 " takes, %" PRIu64
                " node allocations, %" PRIu64 " checks, %" PRIu64 " failures\n",
                secs, cpu_secs, g_versions_made.load(), g_handoffs.load(), g_takes.load(), g_total_allocations.load(), g_checks.load(),
                g_failures.load());
    if (g_failures.load() != 0) {
        std::printf("cpp_map_stress: FAILED\n");
        return 1;
    }
    std::printf("cpp_map_stress: OK\n");
    return 0;
}
