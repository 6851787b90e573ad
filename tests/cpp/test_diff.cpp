// Tests of persistent_map::diff and persistent_set::diff:
//   - a differential random test against a brute-force diff of two std::maps, on versions
//     derived from each other (shared structure) and built apart, over good and degenerate
//     hashes (few distinct hashes: collision nodes; shift hashes: long single-child chains);
//   - the structural claim: two 100,000-key versions that differ in k keys are diffed with
//     O(k log n) key comparisons and value comparisons, and identical subtrees never visited;
//   - a visitor that throws leaves both maps unchanged (diff is read-only).

#include "test_util.hpp"

#include <algorithm>
#include <cstddef>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "pypersistent/persistent_map.hpp"
#include "pypersistent/persistent_set.hpp"

namespace {

using namespace pptest;
using pypersistent::persistent_map;
using pypersistent::persistent_set;

struct recorded {
    std::set<std::pair<int, int>> added, removed;
    std::set<std::tuple<int, int, int>> changed;  // key, old value, new value
};

struct recorder {
    recorded& r;
    template <class E>
    void added(const E& e) {
        EXPECT_TRUE(r.added.emplace(e.first, e.second).second) << "added twice: " << e.first;
    }
    template <class E>
    void removed(const E& e) {
        EXPECT_TRUE(r.removed.emplace(e.first, e.second).second) << "removed twice: " << e.first;
    }
    template <class E>
    void changed(const E& a, const E& b) {
        EXPECT_EQ(a.first, b.first);
        EXPECT_TRUE(r.changed.emplace(a.first, a.second, b.second).second) << "changed twice: " << a.first;
    }
};

recorded brute_force(const std::map<int, int>& a, const std::map<int, int>& b) {
    recorded r;
    for (const auto& [k, v] : a) {
        auto it = b.find(k);
        if (it == b.end()) r.removed.emplace(k, v);
        else if (it->second != v) r.changed.emplace(k, v, it->second);
    }
    for (const auto& [k, v] : b) {
        if (!a.count(k)) r.added.emplace(k, v);
    }
    return r;
}

template <class Hash>
void differential(unsigned seed) {
    using map = persistent_map<int, int, Hash>;
    std::mt19937 rng(seed);
    for (int round = 0; round < 60; ++round) {
        const int n = std::uniform_int_distribution<int>(0, round < 30 ? 40 : 3000)(rng);
        const int universe = std::max(8, n * 2);
        std::uniform_int_distribution<int> key(0, universe);
        std::map<int, int> model_a;
        map a;
        for (int i = 0; i < n; ++i) {
            const int k = key(rng), v = key(rng) % 5;
            a = a.set(k, v);
            model_a[k] = v;
        }
        // b derived from a (sharing most nodes), or built apart from the same or other data.
        map b;
        std::map<int, int> model_b;
        const int how = round % 3;
        if (how == 0 || how == 1) {
            b = a;
            model_b = model_a;
            const int edits = std::uniform_int_distribution<int>(0, how == 0 ? 5 : n + 5)(rng);
            for (int i = 0; i < edits; ++i) {
                const int k = key(rng);
                if (rng() % 3 == 0) {
                    b = b.erase(k);
                    model_b.erase(k);
                } else {
                    const int v = key(rng) % 5;
                    b = b.set(k, v);
                    model_b[k] = v;
                }
            }
        } else {
            for (const auto& [k, v] : model_a) {
                if (rng() % 4 == 0) continue;
                const int nv = rng() % 4 == 0 ? v + 1 : v;
                model_b[k] = nv;
            }
            for (int i = 0; i < 10; ++i) model_b[key(rng)] = 7;
            std::vector<std::pair<int, int>> items(model_b.begin(), model_b.end());
            std::shuffle(items.begin(), items.end(), rng);
            for (const auto& [k, v] : items) b = b.set(k, v);
        }
        const recorded want = brute_force(model_a, model_b);
        recorded got;
        a.diff(b, recorder{got});
        ASSERT_EQ(got.added, want.added) << "seed " << seed << " round " << round;
        ASSERT_EQ(got.removed, want.removed) << "seed " << seed << " round " << round;
        ASSERT_EQ(got.changed, want.changed) << "seed " << seed << " round " << round;
        // The other direction is the mirror image.
        recorded back;
        b.diff(a, recorder{back});
        ASSERT_EQ(back.added, want.removed);
        ASSERT_EQ(back.removed, want.added);
        ASSERT_EQ(back.changed.size(), want.changed.size());
        // A map against itself, or an equal map built apart: nothing.
        recorded none;
        a.diff(a, recorder{none});
        a.diff(map::from_range(model_a.begin(), model_a.end()), recorder{none});
        ASSERT_TRUE(none.added.empty() && none.removed.empty() && none.changed.empty());
    }
}

TEST(MapDiff, MatchesBruteForceWithGoodHashes) { differential<mix_hash>(1); }
TEST(MapDiff, MatchesBruteForceWithCollisionNodes) { differential<few_hash>(2); }
TEST(MapDiff, MatchesBruteForceWithCrowdedLowFragments) { differential<mod61_hash>(3); }
TEST(MapDiff, MatchesBruteForceWithLongChains) { differential<shift_hash<40>>(4); }
TEST(MapDiff, MatchesBruteForceWithSomeCollisionGroups) { differential<clumpy_hash>(5); }
TEST(MapDiff, MatchesBruteForceWithOneHash) { differential<const_hash>(6); }

TEST(MapDiff, EmptySides) {
    using map = persistent_map<int, int, mix_hash>;
    const map empty;
    const map some{{1, 10}, {2, 20}};
    recorded r;
    empty.diff(some, recorder{r});
    EXPECT_EQ(r.added, (std::set<std::pair<int, int>>{{1, 10}, {2, 20}}));
    recorded s;
    some.diff(empty, recorder{s});
    EXPECT_EQ(s.removed, (std::set<std::pair<int, int>>{{1, 10}, {2, 20}}));
    recorded t;
    empty.diff(empty, recorder{t});
    EXPECT_TRUE(t.added.empty() && t.removed.empty() && t.changed.empty());
}

// Key and value comparisons counted through the functors.
std::size_t key_compares = 0;
std::size_t value_compares = 0;
struct counting_key_equal {
    bool operator()(int a, int b) const {
        ++key_compares;
        return a == b;
    }
};
struct counting_value_equal {
    bool operator()(int a, int b) const {
        ++value_compares;
        return a == b;
    }
};

TEST(MapDiff, CostGrowsWithTheChangesNotTheSize) {
    using map = persistent_map<int, int, mix_hash, counting_key_equal, counting_value_equal>;
    map big;
    {
        auto t = big.transient();
        for (int i = 0; i < 100000; ++i) t.set(i, i);
        big = t.persistent();
    }
    for (int k : {0, 1, 10, 100}) {
        map other = big;
        for (int i = 0; i < k; ++i) other = other.set(i * 997, -1);       // changed
        for (int i = 0; i < k; ++i) other = other.erase(50000 + i * 13);  // removed
        for (int i = 0; i < k; ++i) other = other.set(200000 + i, 1);     // added
        key_compares = value_compares = 0;
        recorded r;
        big.diff(other, recorder{r});
        EXPECT_EQ(r.changed.size(), static_cast<std::size_t>(k));
        EXPECT_EQ(r.removed.size(), static_cast<std::size_t>(k));
        EXPECT_EQ(r.added.size(), static_cast<std::size_t>(k));
        // A path of at most 4 levels per change, each comparing at most 32 slots.
        EXPECT_LE(key_compares + value_compares, static_cast<std::size_t>(3 * k * 4 * 32)) << k << " changes";
    }
}

struct thrower {
    int left;
    void tick() {
        if (--left == 0) throw std::runtime_error("visitor");
    }
    template <class E> void added(const E&) { tick(); }
    template <class E> void removed(const E&) { tick(); }
    template <class E> void changed(const E&, const E&) { tick(); }
};

TEST(MapDiff, ThrowingVisitorLeavesBothMapsUnchanged) {
    using map = persistent_map<int, int, mix_hash>;
    map a, b;
    for (int i = 0; i < 1000; ++i) a = a.set(i, i);
    b = a.set(5, -5).erase(7).set(5000, 1);
    for (int n = 1; n <= 3; ++n) {
        EXPECT_THROW(a.diff(b, thrower{n}), std::runtime_error);
        EXPECT_EQ(a.size(), 1000u);
        EXPECT_EQ(b.size(), 1000u);
        EXPECT_EQ(*b.find(5), -5);
        EXPECT_TRUE(well_formed(a));
        EXPECT_TRUE(well_formed(b));
    }
}

struct key_sets {
    std::set<int> added, removed;
};
struct key_visitor {
    key_sets& k;
    template <class E> void added(const E& e) { EXPECT_TRUE(k.added.insert(e.first).second); }
    template <class E> void removed(const E& e) { EXPECT_TRUE(k.removed.insert(e.first).second); }
};

TEST(SetDiff, AddedAndRemovedKeys) {
    using set = persistent_set<int, few_hash>;
    std::mt19937 rng(7);
    set a;
    std::set<int> model_a;
    for (int i = 0; i < 2000; ++i) {
        const int k = static_cast<int>(rng() % 5000);
        a = a.insert(k);
        model_a.insert(k);
    }
    set b = a;
    std::set<int> model_b = model_a;
    for (int i = 0; i < 300; ++i) {
        const int k = static_cast<int>(rng() % 5000);
        if (i % 2) {
            b = b.erase(k);
            model_b.erase(k);
        } else {
            b = b.insert(k);
            model_b.insert(k);
        }
    }
    key_sets got;
    a.diff(b, key_visitor{got});
    std::set<int> want_added, want_removed;
    std::set_difference(model_b.begin(), model_b.end(), model_a.begin(), model_a.end(),
                        std::inserter(want_added, want_added.end()));
    std::set_difference(model_a.begin(), model_a.end(), model_b.begin(), model_b.end(),
                        std::inserter(want_removed, want_removed.end()));
    EXPECT_EQ(got.added, want_added);
    EXPECT_EQ(got.removed, want_removed);
}

}  // namespace
