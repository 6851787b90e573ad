// Unit tests of persistent_sorted_map and transient_sorted_map (the B+-tree in sorted_map.hpp):
//   - the B+-tree invariants checked node by node (fill bounds, separators are copies of the
//     first key of the subtree to their right, uniform depth, counts = size) after every step;
//   - a differential run against std::map (set/erase/find/lower_bound/upper_bound/floor/
//     ceiling/higher/lower/ranges/reverse iteration) at sizes from 0 to 100K, keeping old
//     versions and re-checking that none of them ever changes; the same through transients;
//   - equality across differently shaped trees, and that shared subtrees are not visited;
//   - transients: in-place edits, O(1) freezing, snapshots and bases that never change;
//   - exception injection at every comparison, key/value copy and allocation, with a counting
//     policy: the strong guarantee everywhere, nodes, bytes and retain/release balanced;
//   - hostile comparators (random answers, non-transitive, constant): no crash, valid trees,
//     size = number of entries, iteration terminates, everything released at the end;
//   - a comparator's own node search (node_bound): used, may decline, and never breaks a tree
//     whatever position it answers;
//   - 16 threads sharing maps and deriving versions from them and from each other's.

#include "test_util.hpp"

#include <pypersistent/sorted_map.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <cstdio>
#include <stdexcept>
#include <utility>
#include <vector>

namespace {

using namespace pptest::faults;
using pypersistent::default_policy;
using pypersistent::persistent_sorted_map;
using pypersistent::transient_sorted_map;

// ---- policies --------------------------------------------------------------------------------

// Counts live nodes and bytes (one thread), and the net retains of int keys and values.
struct tracking_policy : default_policy {
    using refcount = pypersistent::single_thread_refcount;
    static inline long live_nodes = 0;
    static inline long live_bytes = 0;
    static inline long net_retained = 0;
    static void retain(const int&) noexcept { ++net_retained; }
    static void release(const int&) noexcept { --net_retained; }
    static void* allocate(std::size_t bytes) {
        ++live_nodes;
        live_bytes += static_cast<long>(bytes);
        return ::operator new(bytes);
    }
    static void deallocate(void* p, std::size_t bytes) noexcept {
        --live_nodes;
        live_bytes -= static_cast<long>(bytes);
        ::operator delete(p);
    }
};

using imap = persistent_sorted_map<int, int, std::less<int>, tracking_policy>;
using itransient = transient_sorted_map<int, int, std::less<int>, tracking_policy>;
using model_t = std::map<int, int>;

class SortedMapTest : public ::testing::Test {
protected:
    void SetUp() override {
        tracking_policy::live_nodes = 0;
        tracking_policy::live_bytes = 0;
        tracking_policy::net_retained = 0;
    }
    void TearDown() override {
        EXPECT_EQ(tracking_policy::live_nodes, 0) << "nodes leaked";
        EXPECT_EQ(tracking_policy::live_bytes, 0) << "bytes leaked";
        EXPECT_EQ(tracking_policy::net_retained, 0) << "retains without releases";
    }
};

// ---- structure --------------------------------------------------------------------------------

inline int id_of(int k) { return k; }

// Walks a tree and checks the B+-tree invariants that hold whatever the comparator said:
// every leaf at depth `height`; fill bounds (root leaf 1..32, inner root 2..32 children, every
// other node 16..32); count <= capacity; positive reference counts; separator j of an inner node
// is a copy of the first key of child j + 1; the entries add up to `size`. With `ordered`, keys
// must also ascend strictly in iteration order.
template <class Tree>
class tree_checker {
    using node = typename Tree::node;

public:
    ::testing::AssertionResult check(const typename Tree::tree& t, bool ordered) {
        if (!t.root) {
            if (t.size != 0 || t.height != 0) return ::testing::AssertionFailure() << "empty root, size " << t.size;
            return ::testing::AssertionSuccess();
        }
        std::size_t entries = 0;
        if (!walk(t.root, t.height, true, entries)) return ::testing::AssertionFailure() << error_;
        if (entries != t.size) return ::testing::AssertionFailure() << "tree holds " << entries << ", size " << t.size;
        if (ordered) {
            for (std::size_t i = 1; i < keys_.size(); ++i) {
                if (!(keys_[i - 1] < keys_[i])) return ::testing::AssertionFailure() << "keys out of order at " << i;
            }
        }
        return ::testing::AssertionSuccess();
    }

private:
    bool fail(const std::string& what) {
        error_ = what;
        return false;
    }
    static int first_id(const node* n, unsigned h) { return id_of(Tree::leftmost_key(n, h)); }

    bool walk(const node* n, unsigned h, bool root, std::size_t& entries) {
        if (n->refs.load() == 0) return fail("zero reference count");
        if (n->count > n->capacity) return fail("count above capacity");
        const unsigned least = root ? (h == 0 ? 1 : 2) : Tree::min_slots;
        if (n->count < least || n->count > Tree::max_slots) {
            return fail("fill " + std::to_string(n->count) + " out of bounds at height " + std::to_string(h));
        }
        if (h == 0) {
            const auto* es = Tree::entries(n);
            for (unsigned i = 0; i < n->count; ++i) keys_.push_back(id_of(es[i].first));
            entries += n->count;
            return true;
        }
        const auto* cs = Tree::children(n);
        const auto* ks = Tree::seps(n);
        for (unsigned i = 0; i < n->count; ++i) {
            if (!cs[i]) return fail("null child");
            if (i > 0 && id_of(ks[i - 1]) != first_id(cs[i], h - 1)) return fail("separator is not its subtree's first key");
            if (!walk(cs[i], h - 1, false, entries)) return false;
        }
        return true;
    }

    std::string error_;
    std::vector<int> keys_;
};

template <class Map>
::testing::AssertionResult well_formed(const Map& m, bool ordered = true) {
    return tree_checker<typename Map::tree_type>().check(m.parts(), ordered);
}

// Everything a map answers against its model: size, iteration both ways, lookups of present and
// absent keys, bounds.
template <class Map>
::testing::AssertionResult matches(const Map& m, const model_t& model, std::mt19937* rng = nullptr, int probes = 0,
                                   int universe = 0) {
    auto ok = well_formed(m);
    if (!ok) return ok;
    if (m.size() != model.size() || m.empty() != model.empty()) {
        return ::testing::AssertionFailure() << "size " << m.size() << " vs model " << model.size();
    }
    auto it = m.begin();
    for (const auto& kv : model) {
        if (it == m.end()) return ::testing::AssertionFailure() << "iteration ended early";
        if (it->first != kv.first || it->second != kv.second) {
            return ::testing::AssertionFailure() << "iteration: " << it->first << "=" << it->second << ", model "
                                                 << kv.first << "=" << kv.second;
        }
        ++it;
    }
    if (it != m.end()) return ::testing::AssertionFailure() << "iteration too long";
    auto rit = model.rbegin();
    for (auto r = m.rbegin(); r != m.rend(); ++r, ++rit) {
        if (rit == model.rend() || r->first != rit->first) return ::testing::AssertionFailure() << "reverse iteration differs";
    }
    if (rit != model.rend()) return ::testing::AssertionFailure() << "reverse iteration too short";
    if (rng) {
        for (int i = 0; i < probes; ++i) {
            const int k = static_cast<int>((*rng)() % static_cast<unsigned>(universe + 2)) - 1;
            const int* v = m.find(k);
            auto f = model.find(k);
            if ((v != nullptr) != (f != model.end()) || (v && *v != f->second)) {
                return ::testing::AssertionFailure() << "find(" << k << ") differs";
            }
        }
    }
    return ::testing::AssertionSuccess();
}

imap build(const model_t& model) {
    itransient t;
    for (const auto& kv : model) t.set(kv.first, kv.second);
    return t.persistent();
}

model_t range_model(int from, int to, int step = 1) {
    model_t m;
    for (int k = from; k < to; k += step) m[k] = k * 10;
    return m;
}

// The navigation queries of a map against std::map.
template <class Map>
::testing::AssertionResult navigation_matches(const Map& m, const model_t& model, int k) {
    auto entry_is = [&](const typename Map::value_type* e, model_t::const_iterator want, const char* what) {
        if ((e == nullptr) != (want == model.end())) return ::testing::AssertionFailure() << what << "(" << k << ") presence";
        if (e && (e->first != want->first || e->second != want->second)) {
            return ::testing::AssertionFailure() << what << "(" << k << ") = " << e->first << ", model " << want->first;
        }
        return ::testing::AssertionSuccess();
    };
    auto lb = model.lower_bound(k);
    auto ub = model.upper_bound(k);
    auto r = entry_is(m.ceiling(k), lb, "ceiling");
    if (!r) return r;
    r = entry_is(m.higher(k), ub, "higher");
    if (!r) return r;
    r = entry_is(m.floor(k), ub == model.begin() ? model.end() : std::prev(ub), "floor");
    if (!r) return r;
    r = entry_is(m.lower(k), lb == model.begin() ? model.end() : std::prev(lb), "lower");
    if (!r) return r;
    r = entry_is(m.lower_bound(k).operator->(), lb, "lower_bound");
    if (!r) return r;
    r = entry_is(m.upper_bound(k).operator->(), ub, "upper_bound");
    if (!r) return r;
    r = entry_is(m.first(), model.begin(), "first");
    if (!r) return r;
    return entry_is(m.last(), model.empty() ? model.end() : std::prev(model.end()), "last");
}

// A range [lo, hi) of at most `limit` entries against the model.
template <class Map>
::testing::AssertionResult range_matches(const Map& m, const model_t& model, const int* lo, const int* hi) {
    auto b = lo ? model.lower_bound(*lo) : model.begin();
    auto e = hi ? model.lower_bound(*hi) : model.end();
    if (lo && hi && *hi < *lo) e = b;
    auto it = b;
    std::size_t n = 0;
    for (const auto& kv : m.range(lo, hi)) {
        if (it == e || kv.first != it->first) return ::testing::AssertionFailure() << "range entry " << n << " differs";
        ++it;
        ++n;
    }
    if (it != e) return ::testing::AssertionFailure() << "range too short after " << n;
    return ::testing::AssertionSuccess();
}

// ---- basics ----------------------------------------------------------------------------------

TEST_F(SortedMapTest, EmptyMap) {
    const imap m;
    EXPECT_TRUE(m.empty());
    EXPECT_EQ(m.size(), 0u);
    EXPECT_EQ(m.begin(), m.end());
    EXPECT_EQ(m.rbegin(), m.rend());
    EXPECT_EQ(m.find(1), nullptr);
    EXPECT_EQ(m.first(), nullptr);
    EXPECT_EQ(m.last(), nullptr);
    EXPECT_EQ(m.floor(1), nullptr);
    EXPECT_EQ(m.ceiling(1), nullptr);
    EXPECT_TRUE(m.range(nullptr, nullptr).empty());
    EXPECT_TRUE(m.erase(3).identical(m));
    EXPECT_THROW(m.at(1), std::out_of_range);
    EXPECT_TRUE(m == imap());
}

TEST_F(SortedMapTest, SetFindEraseAndVersions) {
    const imap a{{3, 30}, {1, 10}, {2, 20}};
    EXPECT_EQ(a.size(), 3u);
    EXPECT_EQ(a.at(2), 20);
    const imap b = a.set(2, 21);
    EXPECT_EQ(a.at(2), 20);
    EXPECT_EQ(b.at(2), 21);
    EXPECT_TRUE(b.set(2, 21).identical(b)) << "assigning the same value returns the same map";
    const imap c = b.erase(1);
    EXPECT_FALSE(c.contains(1));
    EXPECT_TRUE(b.contains(1));
    EXPECT_TRUE(c.erase(1).identical(c));
    std::vector<int> keys;
    for (const auto& e : b) keys.push_back(e.first);
    EXPECT_EQ(keys, (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(b.first()->first, 1);
    EXPECT_EQ(b.last()->first, 3);
    EXPECT_EQ(b.floor(0), nullptr);
    EXPECT_EQ(b.lower(1), nullptr);
    EXPECT_EQ(b.higher(3), nullptr);
    EXPECT_EQ(b.floor(5)->first, 3);
    EXPECT_EQ(b.ceiling(2)->first, 2);
    EXPECT_EQ(b.higher(2)->first, 3);
    EXPECT_EQ(b.lower(2)->first, 1);
    auto it = b.end();
    --it;
    EXPECT_EQ(it->first, 3);
}

// Sizes around the node widths: a root leaf, the first split, height 2 and 3, and back down.
TEST_F(SortedMapTest, GrowsAndShrinksThroughEveryHeight) {
    for (bool ascending : {true, false}) {
        imap m;
        model_t model;
        const int n = 40000;
        std::vector<imap> versions;
        for (int i = 0; i < n; ++i) {
            const int k = ascending ? i : n - i;
            m = m.set(k, i);
            model[k] = i;
            if (i < 1100 || i % 997 == 0) {
                ASSERT_TRUE(well_formed(m)) << i;
            }
        }
        ASSERT_TRUE(matches(m, model));
        EXPECT_GE(m.height(), 2u);
        std::mt19937 rng(7);
        std::vector<int> order;
        for (const auto& kv : model) order.push_back(kv.first);
        std::shuffle(order.begin(), order.end(), rng);
        for (std::size_t i = 0; i < order.size(); ++i) {
            m = m.erase(order[i]);
            model.erase(order[i]);
            if (i % 499 == 0 || model.size() < 1100) {
                ASSERT_TRUE(well_formed(m)) << i;
            }
        }
        EXPECT_TRUE(m.empty());
        EXPECT_EQ(m.root(), nullptr);
    }
}

// ---- differential ----------------------------------------------------------------------------

// Random operations on persistent maps (and transients, every so often) against std::map,
// keeping some versions to re-check at the end: none of them may have changed.
void differential(unsigned seed, int universe, int steps, int kept_every) {
    std::mt19937 rng(seed);
    imap m;
    model_t model;
    std::vector<std::pair<imap, model_t>> kept;
    int bursts = 0;
    auto key = [&] { return static_cast<int>(rng() % static_cast<unsigned>(universe)); };
    for (int step = 0; step < steps; ++step) {
        const unsigned op = rng() % 100;
        if (op < 50) {
            const int k = key(), v = static_cast<int>(rng());
            m = m.set(k, v);
            model[k] = v;
        } else if (op < 80) {
            const int k = key();
            m = m.erase(k);
            model.erase(k);
        } else if (op < 90) {
            const int k = key() - 1;
            ASSERT_TRUE(navigation_matches(m, model, k));
            const int* v = m.find(k);
            ASSERT_EQ(v != nullptr, model.count(k) == 1);
        } else if (op < 95) {
            int lo = key(), hi = lo + static_cast<int>(rng() % 100);
            if (rng() % 8 == 0) std::swap(lo, hi);
            const unsigned which = rng() % 4;
            ASSERT_TRUE(range_matches(m, model, which & 1 ? &lo : nullptr, which & 2 ? &hi : nullptr))
                << "lo " << lo << " hi " << hi;
        } else {
            // A burst through a transient; the base map must not change.
            const imap base = m;
            const std::size_t base_size = m.size();
            itransient t = m.transient();
            for (int j = 0, n = static_cast<int>(rng() % 200); j < n; ++j) {
                const int k = key();
                if (rng() % 3) {
                    const int v = static_cast<int>(rng());
                    ASSERT_EQ(t.set(k, v), model.count(k) == 0);
                    model[k] = v;
                } else {
                    ASSERT_EQ(t.erase(k), model.count(k) == 1);
                    model.erase(k);
                }
            }
            ASSERT_EQ(t.size(), model.size());
            m = t.persistent();
            ASSERT_TRUE(base.size() == base_size && (++bursts % 64 != 0 || well_formed(base)));
        }
        ASSERT_EQ(m.size(), model.size());
        if (kept_every && step % kept_every == 0) {
            ASSERT_TRUE(matches(m, model, &rng, 50, universe)) << "step " << step;
            kept.emplace_back(m, model);
        }
    }
    ASSERT_TRUE(matches(m, model, &rng, 200, universe));
    for (const auto& [v, vm] : kept) ASSERT_TRUE(matches(v, vm, &rng, 50, universe));
    // Maps built apart are equal to the versions (other shapes, same contents).
    for (std::size_t i = 0; i < kept.size(); i += 7) {
        EXPECT_TRUE(build(kept[i].second) == kept[i].first);
        EXPECT_TRUE(kept[i].first == build(kept[i].second));
    }
}

TEST_F(SortedMapTest, DifferentialTiny) {
    for (unsigned seed = 1; seed <= 6; ++seed) differential(seed, 40, 4000, 97);
}
TEST_F(SortedMapTest, DifferentialSmall) { differential(11, 2000, 30000, 1499); }
TEST_F(SortedMapTest, DifferentialMedium) { differential(12, 30000, 60000, 6007); }

// Up to 100K entries: built by a transient from random keys, then persistent updates and erases
// at random positions with versions kept, then a transient tears it down.
TEST_F(SortedMapTest, DifferentialHundredThousand) {
    std::mt19937 rng(99);
    const int universe = 1 << 20;
    model_t model;
    itransient t;
    while (model.size() < 100000) {
        const int k = static_cast<int>(rng() % universe), v = static_cast<int>(rng());
        ASSERT_EQ(t.set(k, v), model.count(k) == 0);
        model[k] = v;
    }
    imap m = t.persistent();
    ASSERT_TRUE(matches(m, model, &rng, 2000, universe));
    std::vector<std::pair<imap, model_t>> kept{{m, model}};
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 3000; ++i) {
            const int k = static_cast<int>(rng() % universe);
            if (rng() % 2) {
                m = m.set(k, i);
                model[k] = i;
            } else {
                auto it = model.lower_bound(k);
                if (it == model.end()) continue;
                m = m.erase(it->first);
                model.erase(it);
            }
        }
        for (int i = 0; i < 300; ++i) ASSERT_TRUE(navigation_matches(m, model, static_cast<int>(rng() % universe)));
        kept.emplace_back(m, model);
    }
    for (const auto& [v, vm] : kept) ASSERT_TRUE(matches(v, vm, &rng, 500, universe));
    EXPECT_FALSE(kept.front().first == kept.back().first);
    itransient down = m.transient();
    std::vector<int> keys;
    for (const auto& kv : model) keys.push_back(kv.first);
    std::shuffle(keys.begin(), keys.end(), rng);
    for (std::size_t i = 0; i < keys.size(); ++i) {
        ASSERT_TRUE(down.erase(keys[i]));
        if (i % 20011 == 0) {
            ASSERT_TRUE(well_formed(down));
        }
    }
    EXPECT_TRUE(down.empty());
    ASSERT_TRUE(matches(m, model));
}

// ---- equality --------------------------------------------------------------------------------

struct counting_equal {
    static inline long calls = 0;
    bool operator()(int a, int b) const {
        ++calls;
        return a == b;
    }
};

TEST_F(SortedMapTest, EqualityAcrossShapesAndSharedSubtreesSkipped) {
    const model_t model = range_model(0, 50000);
    const imap a = build(model);
    imap b;  // built persistently in another order: another shape
    for (auto it = model.rbegin(); it != model.rend(); ++it) b = b.set(it->first, it->second);
    EXPECT_TRUE(a == b);
    EXPECT_TRUE(b == a);
    EXPECT_FALSE(a == b.set(100, 1));
    EXPECT_FALSE(a == b.erase(100));
    EXPECT_FALSE(a == b.erase(100).set(100000, 1000000));

    const imap c = a.set(25000, -1);
    counting_equal::calls = 0;
    EXPECT_FALSE(a.equal(c, counting_equal(), counting_equal()));
    counting_equal::calls = 0;
    const imap d = c.set(25000, 250000);  // equal contents again, one path apart
    EXPECT_TRUE(a.equal(d, counting_equal(), counting_equal()));
    EXPECT_LE(counting_equal::calls, 2 * 2 * 32) << "only the leaf that differs should be compared";
    counting_equal::calls = 0;
    EXPECT_TRUE(a.equal(a, counting_equal(), counting_equal()));
    EXPECT_EQ(counting_equal::calls, 0);
}

// ---- transients ------------------------------------------------------------------------------

TEST_F(SortedMapTest, TransientEditsInPlaceAndFreezes) {
    itransient t;
    for (int k = 0; k < 5000; k += 2) EXPECT_TRUE(t.set(k, k));
    const auto* root = t.root();
    // Filling gaps in leaves with room, and assigning, reuses the transient's own nodes.
    const imap snap = t.persistent();
    for (int k = 1; k < 100; k += 2) t.set(k, -k);  // copies the first path, once
    const auto* after_copy = t.root();
    EXPECT_NE(after_copy, root);
    t.set(2, 7);
    t.erase(4);
    EXPECT_EQ(t.root(), after_copy) << "owned nodes are edited in place";
    model_t m = range_model(0, 5000, 2);
    for (auto& kv : m) kv.second = kv.first;
    EXPECT_TRUE(matches(snap, m)) << "a snapshot never changes";
    for (int k = 1; k < 100; k += 2) m[k] = -k;
    m[2] = 7;
    m.erase(4);
    EXPECT_TRUE(matches(t, m));
    const imap frozen = t.persistent();
    t.set(-5, 0);
    EXPECT_FALSE(frozen.contains(-5));
    EXPECT_TRUE(matches(frozen, m));
    itransient moved = std::move(t);
    EXPECT_TRUE(moved.contains(-5));
    EXPECT_TRUE(t.empty());
    t.set(1, 1);  // a moved-from transient is usable
    EXPECT_EQ(t.size(), 1u);
}

// ---- exceptions ------------------------------------------------------------------------------
//
// The injection points, the ledger policy and sweep() are test_util.hpp's (pptest::faults).

// A key (and value) whose copies may throw; ids are counted by the ledger.
struct tkey {
    int id;
    explicit tkey(int i) noexcept : id(i) {}
    tkey(const tkey& o) : id(o.id) { inject::point(inject::user_call); }
    tkey(tkey&& o) noexcept = default;
    tkey& operator=(const tkey& o) = default;
    tkey& operator=(tkey&& o) noexcept = default;
    bool operator==(const tkey& o) const noexcept { return id == o.id; }
};
inline int id_of(const tkey& k) { return k.id; }
[[maybe_unused]] void PrintTo(const tkey& k, std::ostream* os) { *os << "tkey#" << k.id; }

struct throwing_less {
    bool operator()(const tkey& a, const tkey& b) const {
        inject::point(inject::user_call);
        return a.id < b.id;
    }
};

using xmap = persistent_sorted_map<tkey, tkey, throwing_less, ledger_policy<>>;
using xtransient = xmap::transient_type;

// Values are the key's id + 8192 (another ledger slot), or a variant of it.
inline tkey value_for(int k, int variant = 0) { return tkey(8192 + (k + variant * 37) % 8192); }

class SortedMapExceptions : public ::testing::Test {
protected:
    void SetUp() override { ledger::reset(); }
    void TearDown() override {
        inject::active = false;
        inject::allocations_only = false;
        expect_ledger_balanced();
    }
};

template <class Map>
::testing::AssertionResult holds(const Map& m, const std::map<int, int>& model) {
    auto ok = well_formed(m);
    if (!ok) return ok;
    if (m.size() != model.size()) return ::testing::AssertionFailure() << "size " << m.size() << " vs " << model.size();
    auto it = model.begin();
    for (const auto& e : m) {
        if (e.first.id != it->first || e.second.id != it->second) {
            return ::testing::AssertionFailure() << "entry " << e.first.id << " differs from " << it->first;
        }
        ++it;
    }
    return ::testing::AssertionSuccess();
}

std::map<int, int> xmodel(int from, int to, int step) {
    std::map<int, int> m;
    for (int k = from; k < to; k += step) m[k] = value_for(k).id;
    return m;
}
xmap xbuild(const std::map<int, int>& m) {
    xtransient t;
    for (const auto& kv : m) t.set(tkey(kv.first), tkey(kv.second));
    return t.persistent();
}

void throwing_sweeps(bool allocations_only) {
    inject::allocations_only = allocations_only;
    // Three levels: 2000 entries in leaves of 16..32.
    const std::map<int, int> m = xmodel(0, 6000, 3);
    const xmap base = xbuild(m);
    ASSERT_GE(base.height(), 2u);
    // A version whose leaves are exactly half full along some paths, so erases merge.
    std::map<int, int> thin_model = m;
    xmap thin = base;
    for (int k = 0; k < 6000; k += 3) {
        if (k % 2 == 0 && thin_model.size() > 1100) {
            thin = thin.erase(tkey(k));
            thin_model.erase(k);
        }
    }
    long total = 0;
    const std::pair<const xmap*, const std::map<int, int>*> inputs[] = {{&base, &m}, {&thin, &thin_model}};
    for (const auto& [mp, mm] : inputs) {
        const xmap& s = *mp;
        const std::map<int, int>& model = *mm;
        auto intact = [&] { ASSERT_TRUE(holds(s, model)); };
        for (int k : {-1, 0, 1, 1000, 2997, 3001, 5999, 7000}) {
            std::optional<xmap> result;
            std::map<int, int> expect = model;
            expect[k] = value_for(k, 1).id;
            total += sweep([&] { result.emplace(s.set(tkey(k), value_for(k, 1))); }, intact);
            ASSERT_TRUE(result && holds(*result, expect)) << k;
            expect = model;
            expect.erase(k);
            total += sweep([&] { result.emplace(s.erase(tkey(k))); }, intact);
            ASSERT_TRUE(result && holds(*result, expect)) << k;
            // Lookups only compare: they may throw, nothing changes.
            total += sweep([&] { (void)s.floor(tkey(k)); }, intact);
            // Transients on shared nodes, and on nodes of their own.
            for (bool owned : {false, true}) {
                auto make = [&] {
                    if (!owned) return s.transient();
                    xtransient fresh;
                    for (const auto& kv : model) fresh.set(tkey(kv.first), tkey(kv.second));
                    return fresh;
                };
                xtransient t = make();
                std::map<int, int> tm = model;
                auto t_intact = [&] {
                    ASSERT_TRUE(holds(t, tm));
                    ASSERT_TRUE(holds(s, model));
                };
                for (int variant : {1, 2}) {
                    bool changed = false;
                    total += sweep([&] { changed = t.set(tkey(k), value_for(k, variant)); }, t_intact);
                    EXPECT_EQ(changed, tm.count(k) == 0);
                    tm[k] = value_for(k, variant).id;
                    ASSERT_TRUE(holds(t, tm));
                }
                bool removed = false;
                total += sweep([&] { removed = t.erase(tkey(k)); }, t_intact);
                EXPECT_TRUE(removed);
                tm.erase(k);
                // Runs of erases around k in the transient: merges of owned nodes.
                for (int j = k - 36; j < k + 36; j += 3) {
                    total += sweep([&] { removed = t.erase(tkey(j)); }, t_intact);
                    EXPECT_EQ(removed, tm.erase(j) == 1);
                }
                ASSERT_TRUE(holds(t.persistent(), tm));
            }
        }
    }
    EXPECT_GT(total, allocations_only ? 100 : 1000) << "the injection points were not reached";
}

TEST_F(SortedMapExceptions, EveryComparisonCopyAndAllocationMayThrow) { throwing_sweeps(false); }
TEST_F(SortedMapExceptions, AllocationFailuresLeaveEverythingUnchanged) { throwing_sweeps(true); }

// Random operations with a random injection point failing now and then, persistent and transient,
// keeping versions: everything stays consistent and balanced.
TEST_F(SortedMapExceptions, RandomFailuresDuringRandomOperations) {
    std::mt19937 rng(5);
    xmap m;
    std::map<int, int> model;
    xtransient t;
    std::map<int, int> tmodel;
    std::vector<std::pair<xmap, std::map<int, int>>> kept;
    long failures = 0;
    for (int step = 0; step < 20000; ++step) {
        const int k = static_cast<int>(rng() % 3000);
        const int variant = static_cast<int>(rng() % 5);
        const unsigned op = rng() % 4;
        inject::countdown = rng() % 4 == 0 ? static_cast<long>(rng() % 40) + 1 : 0;
        inject::active = true;
        try {
            switch (op) {
                case 0:
                    m = m.set(tkey(k), value_for(k, variant));
                    model[k] = value_for(k, variant).id;
                    break;
                case 1:
                    m = m.erase(tkey(k));
                    model.erase(k);
                    break;
                case 2:
                    t.set(tkey(k), value_for(k, variant));
                    tmodel[k] = value_for(k, variant).id;
                    break;
                default:
                    t.erase(tkey(k));
                    tmodel.erase(k);
                    break;
            }
        } catch (const std::exception&) {
            ++failures;
        }
        inject::active = false;
        inject::countdown = 0;
        if (step % 1000 == 0) {
            ASSERT_TRUE(holds(m, model));
            ASSERT_TRUE(holds(t, tmodel));
            kept.emplace_back(m, model);
            if (step % 3000 == 0) {
                const xmap frozen = t.persistent();
                kept.emplace_back(frozen, tmodel);
            }
        }
    }
    EXPECT_GT(failures, 500);
    for (const auto& [v, vm] : kept) ASSERT_TRUE(holds(v, vm));
    ASSERT_TRUE(holds(m, model));
    ASSERT_TRUE(holds(t, tmodel));
}

// Every stored copy retained exactly once: the ledger per id equals the copies in all live maps.
TEST_F(SortedMapExceptions, RetainsMatchStoredCopies) {
    std::map<int, int> model = xmodel(0, 3000, 1);
    xmap m = xbuild(model);
    auto count_copies = [](const xmap& x, std::vector<long>& copies) {
        // Entries, plus separators (copies of keys) in inner nodes.
        for (const auto& e : x) {
            ++copies[static_cast<std::size_t>(e.first.id)];
            ++copies[static_cast<std::size_t>(e.second.id)];
        }
        std::vector<std::pair<const xmap::node_type*, unsigned>> stack{{x.root(), x.height()}};
        while (!stack.empty()) {
            auto [n, h] = stack.back();
            stack.pop_back();
            if (!n || h == 0) continue;
            for (unsigned i = 0; i < n->count; ++i) {
                if (i > 0) ++copies[static_cast<std::size_t>(xmap::tree_type::seps(n)[i - 1].id)];
                stack.emplace_back(xmap::tree_type::children(n)[i], h - 1);
            }
        }
    };
    std::vector<long> copies(ledger::max_id, 0);
    count_copies(m, copies);
    for (int id = 0; id < ledger::max_id; ++id) ASSERT_EQ(ledger::retained(id), copies[static_cast<std::size_t>(id)]) << id;
    // After dropping everything, nothing stays retained (checked in TearDown); drop a middle
    // version too.
    xmap m2 = m.erase(tkey(1500)).set(tkey(1500), tkey(1));
    m = xmap();
    std::fill(copies.begin(), copies.end(), 0);
    count_copies(m2, copies);
    for (int id = 0; id < ledger::max_id; ++id) ASSERT_EQ(ledger::retained(id), copies[static_cast<std::size_t>(id)]) << id;
}

// ---- hostile comparators ---------------------------------------------------------------------

struct chaos {
    static inline std::uint64_t state = 1;
    static inline int mode = 0;
    static bool coin() {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return (state >> 33) & 1;
    }
};
// Mode 0: random answers. 1: non-transitive (rock-paper-scissors by id mod 3, ties by id).
// 2: always true. 3: always false. 4: consistent but each call may flip with 1/8 chance.
struct hostile_less {
    bool operator()(int a, int b) const {
        switch (chaos::mode) {
            case 0: return chaos::coin();
            case 1: {
                const int x = ((a % 3) + 3) % 3, y = ((b % 3) + 3) % 3;
                if (x == y) return a < b;
                return (x + 1) % 3 == y;
            }
            case 2: return true;
            case 3: return false;
            default: {
                const bool flip = chaos::coin() && chaos::coin() && chaos::coin();
                return flip ? !(a < b) : a < b;
            }
        }
    }
};
using hmap = persistent_sorted_map<int, int, hostile_less, tracking_policy>;

// Random updates, lookups and ranges under whatever the comparator answers; the trees (and the
// versions kept along the way) stay valid and iterate over exactly their entries.
template <class Map>
void hostile_session(unsigned seed) {
    std::mt19937 rng(seed);
    Map m;
    std::vector<Map> kept;
    typename Map::transient_type t;
    for (int step = 0; step < 12000; ++step) {
        const int k = static_cast<int>(rng() % 3000);
        switch (rng() % 6) {
            case 0:
            case 1: m = m.set(k, step); break;
            case 2: m = m.erase(k); break;
            case 3: t.set(k, step); break;
            case 4: t.erase(k); break;
            default: {
                (void)m.find(k);
                (void)m.floor(k);
                (void)m.higher(k);
                std::size_t n = 0;
                const int hi = k + 50;
                const auto r = m.range(&k, &hi);  // one search per bound: answers differ per call
                for (auto it = r.begin(); it != r.end() && n <= m.size(); ++it) ++n;
                ASSERT_LE(n, m.size());
                break;
            }
        }
        if (step % 500 == 0) {
            ASSERT_TRUE(well_formed(m, false)) << "seed " << seed << " step " << step;
            ASSERT_TRUE(well_formed(t, false)) << "seed " << seed << " step " << step;
            kept.push_back(m);
            if (step % 1500 == 0) kept.push_back(t.persistent());
        }
    }
    for (const auto& v : kept) {
        ASSERT_TRUE(well_formed(v, false));
        std::size_t forward = 0, backward = 0;
        for (auto it = v.begin(); it != v.end() && forward <= v.size(); ++it) ++forward;
        for (auto it = v.rbegin(); it != v.rend() && backward <= v.size(); ++it) ++backward;
        ASSERT_EQ(forward, v.size());
        ASSERT_EQ(backward, v.size());
        (void)(v == m);
    }
}

TEST_F(SortedMapTest, HostileComparatorsKeepTreesValid) {
    for (int mode = 0; mode <= 4; ++mode) {
        chaos::mode = mode;
        chaos::state = static_cast<std::uint64_t>(mode) + 17;
        hostile_session<hmap>(static_cast<unsigned>(mode));
    }
}

// A comparator with a node search of its own (has_node_search): mode 0 counts the keys below
// the probe by a linear scan; mode 1 does that but declines every other call (the tree's binary
// search answers); mode 2 answers a random position in 0..n (an inconsistent search, as a
// hostile comparator is). The tree must use it, fall back when it declines, and stay valid
// whatever it answers.
struct node_searching_less {
    static inline int mode = 0;
    static inline long searches = 0, declined = 0;
    bool operator()(int a, int b) const { return a < b; }
    template <bool Upper>
    static bool node_bound(const char* first, std::size_t stride, unsigned n, const int& key, unsigned& pos) noexcept {
        ++searches;
        if (mode == 1 && searches % 2 == 0) {
            ++declined;
            return false;
        }
        if (mode == 2) {
            pos = static_cast<unsigned>(chaos::coin() ? n : (chaos::state >> 40) % (n + 1u));
            return true;
        }
        unsigned count = 0;
        for (unsigned i = 0; i < n; ++i) {
            const int k = *reinterpret_cast<const int*>(first + i * stride);
            count += Upper ? k <= key : k < key;
        }
        pos = count;
        return true;
    }
};
static_assert(pypersistent::detail::has_node_search<node_searching_less, int>::value, "node_bound is found");
static_assert(!pypersistent::detail::has_node_search<std::less<int>, int>::value, "and only where it exists");
using nsmap = persistent_sorted_map<int, int, node_searching_less, tracking_policy>;

TEST_F(SortedMapTest, ComparatorNodeSearchIsUsedAndMayDecline) {
    for (int mode = 0; mode <= 1; ++mode) {
        node_searching_less::mode = mode;
        node_searching_less::searches = node_searching_less::declined = 0;
        std::mt19937 rng(static_cast<unsigned>(mode) + 3);
        nsmap m;
        nsmap::transient_type t;
        model_t model, tmodel;
        for (int step = 0; step < 20000; ++step) {
            const int k = static_cast<int>(rng() % 5000);
            if (rng() % 4 == 0) {
                m = m.erase(k);
                model.erase(k);
                t.erase(k);
                tmodel.erase(k);
            } else {
                m = m.set(k, step);
                model[k] = step;
                t.set(k, step);
                tmodel[k] = step;
            }
        }
        ASSERT_TRUE(well_formed(m)) << mode;
        const nsmap frozen = t.persistent();
        ASSERT_TRUE(well_formed(frozen)) << mode;
        ASSERT_EQ(m.size(), model.size());
        ASSERT_EQ(frozen.size(), tmodel.size());
        for (int k = -1; k <= 5001; ++k) {
            const int* v = m.find(k);
            const auto f = model.find(k);
            ASSERT_EQ(v != nullptr, f != model.end()) << k;
            if (v) {
                ASSERT_EQ(*v, f->second);
            }
            const auto* fl = m.floor(k);
            const auto up = model.upper_bound(k);
            ASSERT_EQ(fl != nullptr, up != model.begin()) << k;
            if (fl) {
                ASSERT_EQ(fl->first, std::prev(up)->first) << k;
            }
            const auto* ce = m.ceiling(k);
            const auto lo = model.lower_bound(k);
            ASSERT_EQ(ce != nullptr, lo != model.end()) << k;
            if (ce) {
                ASSERT_EQ(ce->first, lo->first) << k;
            }
            const int* tv = frozen.find(k);
            ASSERT_EQ(tv != nullptr, tmodel.count(k) == 1) << k;
        }
        EXPECT_GT(node_searching_less::searches, 100000) << "the tree used the comparator's node search";
        if (mode == 1) {
            EXPECT_GT(node_searching_less::declined, 50000);
        }
    }
}

TEST_F(SortedMapTest, InconsistentNodeSearchKeepsTreesValid) {
    node_searching_less::mode = 2;
    chaos::state = 99;
    hostile_session<nsmap>(5);
    node_searching_less::mode = 0;
}

// Random answers *and* random throws, persistent and transient: a failed operation leaves the
// map exactly as it was (same entries in the same order), and the trees stay valid.
struct chaos_throw_less {
    bool operator()(const tkey& a, const tkey& b) const {
        inject::point(inject::user_call);
        (void)a;
        (void)b;
        return chaos::coin();
    }
};
using cmap = persistent_sorted_map<tkey, tkey, chaos_throw_less, ledger_policy<>>;

template <class Map>
std::vector<std::pair<int, int>> entries_of(const Map& m) {
    std::vector<std::pair<int, int>> out;
    for (const auto& e : m) out.emplace_back(e.first.id, e.second.id);
    return out;
}

TEST_F(SortedMapExceptions, HostileAndThrowingComparatorStrongGuarantee) {
    chaos::state = 3;
    std::mt19937 rng(3);
    cmap m;
    cmap::transient_type t;
    std::vector<cmap> kept;
    long failures = 0;
    for (int step = 0; step < 6000; ++step) {
        const int k = static_cast<int>(rng() % 2000);
        const unsigned op = rng() % 4;
        const auto before_m = entries_of(m);
        const auto before_t = op >= 2 ? entries_of(t) : std::vector<std::pair<int, int>>();
        const ledger::snapshot before;
        inject::countdown = static_cast<long>(rng() % 16) + 1;
        inject::active = true;
        bool threw = false;
        try {
            switch (op) {
                case 0: m = m.set(tkey(k), value_for(k, step % 3)); break;
                case 1: m = m.erase(tkey(k)); break;
                case 2: t.set(tkey(k), value_for(k, step % 3)); break;
                default: t.erase(tkey(k)); break;
            }
        } catch (const std::exception&) {
            threw = true;
        }
        inject::active = false;
        inject::countdown = 0;
        if (threw) {
            ++failures;
            ASSERT_TRUE(ledger::snapshot() == before) << "step " << step;
            ASSERT_EQ(entries_of(m), before_m) << "step " << step;
            if (op >= 2) {
                ASSERT_EQ(entries_of(t), before_t) << "step " << step;
            }
        }
        if (step % 250 == 0) {
            ASSERT_TRUE(well_formed(m, false));
            ASSERT_TRUE(well_formed(t, false));
            kept.push_back(m);
            kept.push_back(t.persistent());
        }
    }
    EXPECT_GT(failures, 1000);
    for (const auto& v : kept) ASSERT_TRUE(well_formed(v, false));
}

// Keys and values with destructors and heap memory (std::string): ASan sees every lifetime.
TEST(SortedMapStrings, DifferentialWithStringKeysAndValues) {
    using smap = persistent_sorted_map<std::string, std::string>;
    std::mt19937 rng(21);
    smap m;
    std::map<std::string, std::string> model;
    std::vector<std::pair<smap, std::map<std::string, std::string>>> kept;
    auto key = [&] { return "key-with-some-length-" + std::to_string(rng() % 3000); };
    for (int step = 0; step < 20000; ++step) {
        const std::string k = key();
        switch (rng() % 4) {
            case 0:
            case 1: {
                const std::string v = "value-" + std::to_string(rng());
                m = m.set(k, v);
                model[k] = v;
                break;
            }
            case 2:
                m = m.erase(k);
                model.erase(k);
                break;
            default: {
                auto t = m.transient();
                for (int j = 0; j < 20; ++j) {
                    const std::string k2 = key();
                    if (rng() % 2) {
                        t.set(k2, k);
                        model[k2] = k;
                    } else {
                        t.erase(k2);
                        model.erase(k2);
                    }
                }
                m = t.persistent();
                break;
            }
        }
        if (step % 2000 == 0) kept.emplace_back(m, model);
    }
    kept.emplace_back(m, model);
    for (const auto& [v, vm] : kept) {
        ASSERT_EQ(v.size(), vm.size());
        auto it = vm.begin();
        for (const auto& e : v) {
            ASSERT_EQ(e.first, it->first);
            ASSERT_EQ(e.second, it->second);
            ++it;
        }
        const auto* f = v.floor("key-with-some-length-5");
        auto ub = vm.upper_bound("key-with-some-length-5");
        ASSERT_EQ(f == nullptr, ub == vm.begin());
        if (f) {
            ASSERT_EQ(f->first, std::prev(ub)->first);
        }
    }
}

// ---- threads ---------------------------------------------------------------------------------

struct atomic_tracking_policy : default_policy {  // default_policy's atomic reference counts
    static inline std::atomic<long> live_nodes{0};
    static inline std::atomic<long> net_retained{0};
    static void retain(const int&) noexcept { net_retained.fetch_add(1, std::memory_order_relaxed); }
    static void release(const int&) noexcept { net_retained.fetch_sub(1, std::memory_order_relaxed); }
    static void* allocate(std::size_t bytes) {
        live_nodes.fetch_add(1, std::memory_order_relaxed);
        return ::operator new(bytes);
    }
    static void deallocate(void* p, std::size_t) noexcept {
        live_nodes.fetch_sub(1, std::memory_order_relaxed);
        ::operator delete(p);
    }
};

// 16 threads share maps and derive versions from them and from each other's versions (passed on
// a mutex-guarded board): sets, erases, transients, lookups, ranges, equality. Node reference
// counts are the only shared mutable state; ThreadSanitizer checks them.
TEST(SortedMapThreads, SixteenThreadsShareAndDeriveVersions) {
    using tmap = persistent_sorted_map<int, int, std::less<int>, atomic_tracking_policy>;
    {
        const int n = 3000;
        tmap::transient_type build_all;
        for (int k = 0; k < n; ++k) build_all.set(k, k);
        const tmap all = build_all.persistent();
        std::mutex board_mutex;
        std::vector<std::pair<tmap, int>> board;  // a version and the extra key it holds
        std::atomic<int> failures{0};
        auto check = [&](bool ok) {
            if (!ok) failures.fetch_add(1, std::memory_order_relaxed);
        };
        std::vector<std::thread> threads;
        for (int id = 0; id < 16; ++id) {
            threads.emplace_back([&, id] {
                std::mt19937 rng(static_cast<std::uint32_t>(id));
                for (int round = 0; round < 30; ++round) {
                    const int extra = n + id * 1000 + round;
                    const int gone = static_cast<int>(rng() % static_cast<unsigned>(n));
                    const tmap mine = all.set(extra, id).erase(gone);
                    check(mine.size() == static_cast<std::size_t>(n));
                    check(mine.contains(extra) && !mine.contains(gone) && all.contains(gone));
                    check(gone == 0 ? !mine.floor(gone) : mine.floor(gone)->first == gone - 1);
                    check(mine.ceiling(gone) && mine.ceiling(gone)->first == (gone + 1 < n ? gone + 1 : extra));
                    std::size_t visited = 0;
                    int prev = -1;
                    for (const auto& e : mine) {
                        check(e.first > prev);
                        prev = e.first;
                        ++visited;
                    }
                    check(visited == mine.size());
                    std::size_t in_range = 0;
                    for (const auto& e : all.range(100, 200)) in_range += e.first >= 100 && e.first < 200 ? 1 : 0;
                    check(in_range == 100);
                    check(!(mine == all) && mine.set(gone, gone).erase(extra) == all);
                    std::pair<tmap, int> theirs;
                    {
                        std::lock_guard<std::mutex> lock(board_mutex);
                        board.emplace_back(mine, extra);
                        theirs = board[rng() % board.size()];
                        if (board.size() > 32) board.erase(board.begin());
                    }
                    check(theirs.first.contains(theirs.second));
                    auto t = theirs.first.transient();
                    for (int j = 0; j < 100; ++j) t.set(-1 - id * 100 - j, j);
                    t.erase(theirs.second);
                    for (int j = 0; j < 50; ++j) t.erase(static_cast<int>(rng() % static_cast<unsigned>(n)));
                    const tmap edited = t.persistent();
                    check(edited.contains(-1 - id * 100) && !edited.contains(theirs.second) &&
                          theirs.first.contains(theirs.second));
                    const tmap both = edited.set(extra, 1);
                    check(both.contains(extra) && both.size() == edited.size() + (edited.contains(extra) ? 0 : 1));
                }
            });
        }
        for (auto& th : threads) th.join();
        EXPECT_EQ(failures.load(), 0);
        EXPECT_EQ(all.size(), static_cast<std::size_t>(n));
    }
    EXPECT_EQ(atomic_tracking_policy::live_nodes.load(), 0);
    EXPECT_EQ(atomic_tracking_policy::net_retained.load(), 0);
}

// ---- diff ------------------------------------------------------------------------------------

// What a diff reported, in the order reported.
struct diff_log {
    std::vector<std::pair<int, int>> added, removed;
    std::vector<std::tuple<int, int, int>> changed;  // key, old value, new value
    std::vector<int> order;                          // every key reported, in order
    bool operator==(const diff_log& o) const {
        return added == o.added && removed == o.removed && changed == o.changed;
    }
};

template <class Id>
struct diff_recorder {
    diff_log& log;
    Id id;
    template <class E>
    void added(const E& e) {
        log.added.emplace_back(id(e.first), id(e.second));
        log.order.push_back(id(e.first));
    }
    template <class E>
    void removed(const E& e) {
        log.removed.emplace_back(id(e.first), id(e.second));
        log.order.push_back(id(e.first));
    }
    template <class E>
    void changed(const E& a, const E& b) {
        EXPECT_EQ(id(a.first), id(b.first));
        log.changed.emplace_back(id(a.first), id(a.second), id(b.second));
        log.order.push_back(id(a.first));
    }
};
struct int_id {
    int operator()(int k) const { return k; }
};
struct tkey_id {
    int operator()(const tkey& k) const { return k.id; }
};

diff_log brute_force_diff(const model_t& a, const model_t& b) {
    diff_log r;
    for (const auto& [k, v] : a) {
        auto it = b.find(k);
        if (it == b.end()) r.removed.emplace_back(k, v);
        else if (it->second != v) r.changed.emplace_back(k, v, it->second);
    }
    for (const auto& [k, v] : b) {
        if (!a.count(k)) r.added.emplace_back(k, v);
    }
    return r;
}

template <class Map>
::testing::AssertionResult diff_matches(const Map& a, const model_t& ma, const Map& b, const model_t& mb) {
    diff_log got;
    a.diff(b, diff_recorder<int_id>{got, {}});
    const diff_log want = brute_force_diff(ma, mb);
    if (!(got == want)) {
        return ::testing::AssertionFailure() << "diff differs: added " << got.added.size() << "/" << want.added.size()
                                             << ", removed " << got.removed.size() << "/" << want.removed.size()
                                             << ", changed " << got.changed.size() << "/" << want.changed.size();
    }
    if (!std::is_sorted(got.order.begin(), got.order.end()) ||
        std::adjacent_find(got.order.begin(), got.order.end()) != got.order.end()) {
        return ::testing::AssertionFailure() << "not reported once each in key order";
    }
    return ::testing::AssertionSuccess();
}

// Random versions against a brute-force diff of their models: versions derived from each other
// by random edits (persistent and transient, few and many: shared subtrees, other heights), and
// versions built apart (other shapes, nothing shared), both ways round.
TEST_F(SortedMapTest, DiffMatchesBruteForce) {
    std::mt19937 rng(31);
    for (int round = 0; round < 120; ++round) {
        const int n = static_cast<int>(rng() % (round < 60 ? 80u : 20000u));
        const int universe = std::max(16, n * 2);
        model_t ma;
        itransient ta;
        for (int i = 0; i < n; ++i) {
            const int k = static_cast<int>(rng() % static_cast<unsigned>(universe)), v = static_cast<int>(rng() % 4);
            ta.set(k, v);
            ma[k] = v;
        }
        const imap a = ta.persistent();
        model_t mb = ma;
        imap b = a;
        const unsigned how = rng() % 5;
        if (how < 3) {  // derived: a few edits, or many (other heights), persistently or not
            const int edits = static_cast<int>(how == 0 ? rng() % 4 : how == 1 ? rng() % 40 : rng() % (3u * n + 50u));
            itransient tb = a.transient();
            const bool transient = rng() % 2;
            for (int i = 0; i < edits; ++i) {
                const int k = static_cast<int>(rng() % static_cast<unsigned>(universe + universe / 4));
                if (rng() % 3 == 0) {
                    if (transient) tb.erase(k); else b = b.erase(k);
                    mb.erase(k);
                } else {
                    const int v = static_cast<int>(rng() % 4);
                    if (transient) tb.set(k, v); else b = b.set(k, v);
                    mb[k] = v;
                }
            }
            if (transient) b = tb.persistent();
        } else {  // built apart: the same entries in another order, or other entries
            mb.clear();
            const bool same = how == 3;
            if (same) {
                mb = ma;
            } else {
                for (int i = 0; i < n; ++i) {
                    const int k = static_cast<int>(rng() % static_cast<unsigned>(universe));
                    mb[k] = static_cast<int>(rng() % 4);
                }
            }
            b = imap();
            for (auto it = mb.rbegin(); it != mb.rend(); ++it) b = b.set(it->first, it->second);
        }
        ASSERT_TRUE(matches(b, mb));
        ASSERT_TRUE(diff_matches(a, ma, b, mb)) << "round " << round << " how " << how;
        ASSERT_TRUE(diff_matches(b, mb, a, ma)) << "round " << round << " how " << how;
        ASSERT_TRUE(diff_matches(a, ma, a, ma));
        ASSERT_TRUE(diff_matches(imap(), model_t(), b, mb));
        ASSERT_TRUE(diff_matches(b, mb, imap(), model_t()));
    }
}

// Key comparisons and value comparisons, counted.
struct counting_less {
    static inline long calls = 0;
    bool operator()(int a, int b) const {
        ++calls;
        return a < b;
    }
};
using counted_map = persistent_sorted_map<int, int, counting_less, tracking_policy>;

// Two versions of a million entries that differ in k keys (changed, removed and added in
// equal parts, spread over the key range) are diffed with O(k) comparisons: only the leaves on
// the k changed paths are merged, everything else is skipped by pointer. The same edits on a
// map 100 times smaller cost about as many comparisons; unrelated maps cost a full merge.
TEST_F(SortedMapTest, DiffCostGrowsWithTheChangesNotTheSize) {
    auto make = [](int n) {
        counted_map::transient_type t;
        for (int i = 0; i < n; ++i) t.set(2 * i, i);
        return t.persistent();
    };
    auto edited = [](const counted_map& m, int n, int k) {
        counted_map o = m;
        for (int i = 0; i < k; ++i) o = o.set(2 * ((i * 7919 + 1) % n), -1);        // changed
        for (int i = 0; i < k; ++i) o = o.erase(2 * ((i * 104729 + 5) % n));        // removed
        for (int i = 0; i < k; ++i) o = o.set(2 * ((i * 15485863 + 3) % n) + 1, 1);  // added
        return o;
    };
    auto cost = [](const counted_map& a, const counted_map& b, diff_log& log) {
        counting_less::calls = 0;
        counting_equal::calls = 0;
        a.diff(b, diff_recorder<int_id>{log, {}}, counting_equal());
        return counting_less::calls + counting_equal::calls;
    };
    const int big = 1000000, small = 10000;
    const counted_map m = make(big);
    ASSERT_GE(m.height(), 3u);
    for (int k : {0, 1, 10}) {
        const counted_map o = edited(m, big, k);
        diff_log log;
        const long c = cost(m, o, log);
        EXPECT_EQ(log.added.size() + log.removed.size() + log.changed.size(), static_cast<std::size_t>(3 * k));
        EXPECT_EQ(log.changed.size(), static_cast<std::size_t>(k));
        // At most 3k changed leaves (a change may also redistribute with a neighbour: count 3
        // leaves each), merged at <= 2 comparisons per entry of 2 leaves of <= 32 entries.
        EXPECT_LE(c, 3L * k * 3 * 2 * 2 * 32) << k << " changes in " << big;
        const counted_map ms = make(small);
        diff_log small_log;
        const long cs = cost(ms, edited(ms, small, k), small_log);
        EXPECT_LE(c, 2 * cs + 200) << "a million entries cost about as much as ten thousand";
        if (k == 10) {
            std::printf("diff of 1M-entry versions differing in %d keys: %ld comparisons (10K entries: %ld)\n",
                        3 * k, c, cs);
        }
    }
    // Unrelated trees (the same entries built apart): a merge of every entry.
    counted_map apart;
    {
        counted_map::transient_type t;
        for (int i = small - 1; i >= 0; --i) t.set(2 * i, i);
        apart = t.persistent();
    }
    const counted_map ms = make(small);
    diff_log log;
    const long c = cost(ms, apart, log);
    EXPECT_TRUE(log.added.empty() && log.removed.empty() && log.changed.empty());
    EXPECT_GE(c, small) << "built apart, nothing is shared";
}

// Compare (and copies: none happen) may throw at every point: nothing changes, nothing leaks,
// and once it completes, the diff is right. A visitor that throws likewise.
TEST_F(SortedMapExceptions, DiffWithAThrowingComparator) {
    const std::map<int, int> ma = xmodel(0, 3000, 3);
    const xmap a = xbuild(ma);
    std::map<int, int> mb = ma;
    xmap b = a;
    for (int k : {0, 1, 300, 301, 1500, 2999, 4000}) {
        b = b.set(tkey(k), value_for(k, 1));
        mb[k] = value_for(k, 1).id;
    }
    for (int k : {3, 6, 9, 12, 1200, 1203}) {
        b = b.erase(tkey(k));
        mb.erase(k);
    }
    const diff_log want = brute_force_diff(model_t(ma.begin(), ma.end()), model_t(mb.begin(), mb.end()));
    auto intact = [&] {
        ASSERT_TRUE(holds(a, ma));
        ASSERT_TRUE(holds(b, mb));
    };
    diff_log got;
    struct value_equal {
        bool operator()(const tkey& x, const tkey& y) const { return x.id == y.id; }
    };
    const long failures = sweep(
        [&] {
            got = diff_log();
            a.diff(b, diff_recorder<tkey_id>{got, {}}, value_equal());
        },
        intact);
    EXPECT_GT(failures, 50);
    EXPECT_TRUE(got == want);
    struct throwing_visitor {
        int left;
        void tick() {
            if (--left == 0) throw std::runtime_error("visitor");
        }
        void added(const xmap::value_type&) { tick(); }
        void removed(const xmap::value_type&) { tick(); }
        void changed(const xmap::value_type&, const xmap::value_type&) { tick(); }
    };
    for (int n = 1; n <= 5; ++n) {
        EXPECT_THROW(a.diff(b, throwing_visitor{n}, value_equal()), std::runtime_error);
        intact();
    }
}

// ---- bulk building and subseq ----------------------------------------------------------------

// from_sorted at every size around the fill boundaries (one leaf, two, a full level, one more):
// valid trees (the checker's fill bounds), every entry in order, and updatable afterwards.
TEST_F(SortedMapTest, FromSortedBuildsValidTreesAtEverySize) {
    std::vector<std::size_t> sizes;
    for (std::size_t n = 0; n <= 70; ++n) sizes.push_back(n);
    for (std::size_t n : {511u, 512u, 513u, 1023u, 1024u, 1025u, 1056u, 1057u, 16384u, 32767u, 32768u, 32769u,
                          100000u}) {
        sizes.push_back(n);
    }
    for (std::size_t n : sizes) {
        std::vector<std::pair<int, int>> items;
        model_t model;
        for (std::size_t i = 0; i < n; ++i) {
            items.emplace_back(static_cast<int>(3 * i), static_cast<int>(i));
            model[static_cast<int>(3 * i)] = static_cast<int>(i);
        }
        const imap m = imap::from_sorted(items.begin(), items.end());
        ASSERT_TRUE(matches(m, model)) << n;
        const imap r = imap::from_range(items.begin(), items.end());  // ascending: the same build
        ASSERT_TRUE(matches(r, model)) << n;
        ASSERT_EQ(r.height(), m.height());
        if (n > 0) {
            model[1] = -1;
            model.erase(static_cast<int>(3 * (n / 2)));
            ASSERT_TRUE(matches(m.set(1, -1).erase(static_cast<int>(3 * (n / 2))), model)) << n;
            itransient t = m.transient();
            t.set(1, -1);
            t.erase(static_cast<int>(3 * (n / 2)));
            ASSERT_TRUE(matches(t.persistent(), model)) << n;
        }
    }
}

// An input iterator (the category says: read once) over pairs.
struct read_once {
    using iterator_category = std::input_iterator_tag;
    using value_type = std::pair<int, int>;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;
    const value_type* p;
    reference operator*() const { return *p; }
    pointer operator->() const { return p; }
    read_once& operator++() {
        ++p;
        return *this;
    }
    bool operator!=(const read_once& o) const { return p != o.p; }
    bool operator==(const read_once& o) const { return p == o.p; }
};

// from_range: input out of order, or with duplicates (later ones win), goes through a
// transient; input iterators (read once) too.
TEST_F(SortedMapTest, FromRangeAnyOrder) {
    std::mt19937 rng(8);
    for (int round = 0; round < 40; ++round) {
        std::vector<std::pair<int, int>> items;
        model_t model;
        const int n = static_cast<int>(rng() % 3000);
        for (int i = 0; i < n; ++i) {
            const int k = static_cast<int>(rng() % 2000), v = static_cast<int>(rng());
            items.emplace_back(k, v);
            model[k] = v;
        }
        if (round % 3 == 0) {  // ascending, with duplicates
            std::sort(items.begin(), items.end());
            model.clear();
            for (const auto& [k, v] : items) model[k] = v;
        }
        ASSERT_TRUE(matches(imap::from_range(items.begin(), items.end()), model));
        ASSERT_TRUE(matches(imap::from_range(read_once{items.data()}, read_once{items.data() + items.size()}), model));
    }
}

// subseq(lo, hi) against the model's range, on random maps and bounds; the whole range is the
// same map.
TEST_F(SortedMapTest, SubseqMatchesTheRange) {
    std::mt19937 rng(17);
    for (int round = 0; round < 60; ++round) {
        const int n = static_cast<int>(rng() % (round < 30 ? 100u : 40000u));
        model_t model;
        itransient t;
        for (int i = 0; i < n; ++i) {
            const int k = static_cast<int>(rng() % static_cast<unsigned>(4 * n + 4)), v = static_cast<int>(rng());
            t.set(k, v);
            model[k] = v;
        }
        const imap m = t.persistent();
        for (int q = 0; q < 8; ++q) {
            const int a = static_cast<int>(rng() % static_cast<unsigned>(4 * n + 8)) - 2;
            const int b = static_cast<int>(rng() % static_cast<unsigned>(4 * n + 8)) - 2;
            const bool open_lo = rng() % 5 == 0, open_hi = rng() % 5 == 0;
            const imap sub = m.subseq(open_lo ? nullptr : &a, open_hi ? nullptr : &b);
            model_t want;
            for (const auto& [k, v] : model) {
                if ((open_lo || k >= a) && (open_hi || k < b)) want[k] = v;
            }
            ASSERT_TRUE(matches(sub, want)) << "round " << round;
        }
        EXPECT_TRUE(m.subseq(nullptr, nullptr).identical(m));
    }
}

// subseq on maps of many shapes (bulk built: full nodes; random inserts; thinned by erases:
// half-full nodes, so joins merge and even out) and sizes, at many bounds: valid trees holding
// exactly the range, which stay usable.
TEST_F(SortedMapTest, SubseqOnEveryShape) {
    std::mt19937 rng(23);
    for (int round = 0; round < 90; ++round) {
        const int n = round < 30 ? round * 3 : static_cast<int>(rng() % 12000);
        model_t model;
        imap m;
        if (round % 3 == 0) {
            model = range_model(0, 2 * n, 2);
            std::vector<std::pair<int, int>> items(model.begin(), model.end());
            m = imap::from_sorted(items.begin(), items.end());
        } else {
            itransient t;
            for (int i = 0; i < n; ++i) {
                const int k = static_cast<int>(rng() % static_cast<unsigned>(2 * n + 2));
                t.set(k, i);
                model[k] = i;
            }
            if (round % 3 == 2) {  // thin it out: erases that leave nodes half full
                for (auto it = model.begin(); it != model.end();) {
                    if (rng() % 3 != 0) {
                        t.erase(it->first);
                        it = model.erase(it);
                    } else {
                        ++it;
                    }
                }
            }
            m = t.persistent();
        }
        ASSERT_TRUE(well_formed(m));
        for (int q = 0; q < 40; ++q) {
            const int a = static_cast<int>(rng() % static_cast<unsigned>(2 * n + 6)) - 2;
            const int b = q % 4 == 0 ? a + static_cast<int>(rng() % 80)
                                     : static_cast<int>(rng() % static_cast<unsigned>(2 * n + 6)) - 2;
            const imap sub = m.subseq(&a, &b);
            model_t want;
            for (auto it = model.lower_bound(a); it != model.end() && it->first < b; ++it) want.insert(*it);
            ASSERT_TRUE(matches(sub, want)) << "round " << round << " [" << a << ", " << b << ")";
            if (!want.empty() && q % 8 == 0) {
                want.erase(want.begin());
                want[-5] = 5;
                ASSERT_TRUE(matches(sub.erase(sub.first()->first).set(-5, 5), want));
            }
        }
    }
}

// subseq shares every subtree wholly inside the range: a slice of a 100K-entry map costs a few
// dozen new nodes, whatever its length, and joins pieces of every height.
TEST_F(SortedMapTest, SubseqSharesTheInterior) {
    const imap m = build(range_model(0, 100000));
    ASSERT_GE(m.height(), 3u);
    std::mt19937 rng(4);
    long most = 0;
    for (int q = 0; q < 300; ++q) {
        int a = static_cast<int>(rng() % 100002) - 1, b = static_cast<int>(rng() % 100002) - 1;
        if (q % 3 == 0) b = a + static_cast<int>(rng() % 2000);  // short ranges: pieces of every height
        const long before = tracking_policy::live_nodes;
        const imap sub = m.subseq(&a, &b);
        const long fresh = tracking_policy::live_nodes - before;
        most = std::max(most, fresh);
        EXPECT_LE(fresh, 4L * (m.height() + 1) * (m.height() + 1)) << a << ".." << b;
        ASSERT_TRUE(well_formed(sub));
        const std::size_t want = a < b ? static_cast<std::size_t>(std::min(b, 100000) - std::max(a, 0)) : 0;
        ASSERT_EQ(sub.size(), a < b && b > 0 && a < 100000 ? want : 0u) << a << ".." << b;
        if (sub.size() > 0) {
            EXPECT_EQ(sub.first()->first, std::max(a, 0));
            EXPECT_EQ(sub.last()->first, std::min(b, 100000) - 1);
        }
    }
    std::printf("subseq of a 100K-entry map of height %u: at most %ld new nodes\n", m.height(), most);
}

// A key or value copy, or an allocation, that throws while building leaves nothing behind.
TEST_F(SortedMapExceptions, FromSortedAndSubseqReleaseEverythingOnFailure) {
    for (int n : {0, 1, 40, 1100, 5000}) {
        std::vector<std::pair<tkey, tkey>> items;
        std::map<int, int> model;
        for (int i = 0; i < n; ++i) {
            items.emplace_back(tkey(2 * i), value_for(2 * i));
            model[2 * i] = value_for(2 * i).id;
        }
        std::optional<xmap> built;
        sweep([&] { built.emplace(xmap::from_sorted(items.begin(), items.end())); }, [] {});
        ASSERT_TRUE(built && holds(*built, model)) << n;
        const xmap& m = *built;
        auto intact = [&] { ASSERT_TRUE(holds(m, model)); };
        const tkey lo(n / 3), hi(n + n / 2);
        std::map<int, int> want(model.lower_bound(n / 3), model.lower_bound(n + n / 2));
        std::optional<xmap> sub;
        const long failures = sweep([&] { sub.emplace(m.subseq(&lo, &hi)); }, intact);
        ASSERT_TRUE(sub && holds(*sub, want)) << n;
        if (n >= 40) {
            EXPECT_GT(failures, 10);
        }
    }
    // A map thinned out by erases (nodes about half full): slices whose joins merge nodes.
    std::map<int, int> model = xmodel(0, 9000, 1);
    xtransient t = xbuild(model).transient();
    for (int k = 0; k < 9000; ++k) {
        if (k % 3 != 0) {
            t.erase(tkey(k));
            model.erase(k);
        }
    }
    const xmap thin = t.persistent();
    auto intact = [&] { ASSERT_TRUE(holds(thin, model)); };
    std::mt19937 rng(2);
    for (int q = 0; q < 12; ++q) {
        const int a = static_cast<int>(rng() % 9000), b = a + static_cast<int>(rng() % (q % 2 ? 300 : 9000));
        const tkey lo(a), hi(b);
        std::map<int, int> want(model.lower_bound(a), model.lower_bound(b));
        std::optional<xmap> sub;
        sweep([&] { sub.emplace(thin.subseq(&lo, &hi)); }, intact);
        ASSERT_TRUE(sub && holds(*sub, want)) << a << ".." << b;
    }
}

}  // namespace
