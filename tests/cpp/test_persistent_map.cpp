// Unit tests of persistent_map: every operation, on ordinary and deliberately degenerate hashes.

#include "test_util.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using namespace pptest;
using pypersistent::default_policy;
using pypersistent::persistent_map;

struct cached_policy : default_policy {
    static constexpr bool cache_hash = true;
};

template <class Hash, class Policy = default_policy>
using int_map = persistent_map<int, int, Hash, std::equal_to<int>, std::equal_to<int>, Policy>;

using model_t = std::unordered_map<int, int>;

// ---- a battery run over many hash shapes, with and without cached hashes -----------------------

template <class Hash, bool Cache>
struct config {
    using hash = Hash;
    using map = int_map<Hash, std::conditional_t<Cache, cached_policy, default_policy>>;
};

template <class C>
class MapShapes : public ::testing::Test {};

using shape_configs =
    ::testing::Types<config<mix_hash, false>, config<mix_hash, true>, config<std::hash<int>, false>,
                     config<const_hash, false>, config<const_hash, true>, config<mod61_hash, false>,
                     config<shift_hash<40>, false>, config<shift_hash<40>, true>, config<shift_hash<59>, false>,
                     config<shift_hash<59>, true>, config<top4_hash, false>, config<top4_hash, true>,
                     config<few_hash, false>, config<clumpy_hash, true>>;

class shape_names {
public:
    template <class C>
    static std::string GetName(int i) {
        return std::to_string(i);
    }
};

TYPED_TEST_SUITE(MapShapes, shape_configs, shape_names);

TYPED_TEST(MapShapes, InsertFindEraseDownToZeroAndBack) {
    using map = typename TypeParam::map;
    const int n = 300;
    map m;
    model_t model;
    for (int k = 0; k < n; ++k) {
        const map before = m;
        m = m.set(k, k * 7 + 1);
        model[k] = k * 7 + 1;
        ASSERT_EQ(m.size(), model.size());
        ASSERT_EQ(before.size(), model.size() - 1);  // the old version did not change
        ASSERT_NE(m.find(k), nullptr);
        ASSERT_EQ(*m.find(k), k * 7 + 1);
        ASSERT_FALSE(before.contains(k));
        ASSERT_FALSE(m.contains(n + k));
        ASSERT_TRUE(well_formed(m));
    }
    ASSERT_TRUE(matches_model(m, model));
    // erase in an interleaved order, down to nothing
    std::vector<int> order;
    for (int k = 0; k < n; ++k) order.push_back((k * 37) % n);
    for (int k : order) {
        const map before = m;
        m = m.erase(k);
        model.erase(k);
        ASSERT_EQ(m.size(), model.size());
        ASSERT_FALSE(m.contains(k));
        ASSERT_TRUE(before.contains(k));
        ASSERT_TRUE(m.erase(k).identical(m));  // erasing an absent key
        ASSERT_TRUE(well_formed(m));
        if (model.size() % 50 == 0) {
            ASSERT_TRUE(matches_model(m, model));
        }
    }
    EXPECT_TRUE(m.empty());
    EXPECT_TRUE(m.begin() == m.end());
    EXPECT_TRUE(m == map());
    // and back up
    for (int k = n - 1; k >= 0; --k) {
        m = m.set(k, -k);
        model[k] = -k;
    }
    EXPECT_TRUE(matches_model(m, model));
    EXPECT_TRUE(well_formed(m));
}

TYPED_TEST(MapShapes, EqualMapsBuiltInDifferentOrders) {
    using map = typename TypeParam::map;
    std::vector<std::pair<int, int>> items;
    for (int k = 0; k < 300; ++k) items.emplace_back(k * 3, k);
    std::mt19937 rng(7);
    for (int round = 0; round < 4; ++round) {
        std::vector<std::pair<int, int>> a_items = items, b_items = items;
        std::shuffle(a_items.begin(), a_items.end(), rng);
        std::shuffle(b_items.begin(), b_items.end(), rng);
        map a, b;
        for (const auto& kv : a_items) a = a.set(kv.first, kv.second);
        for (const auto& kv : b_items) b = b.set(kv.first, kv.second);
        // b also goes through extra keys that are removed again
        for (int k = 1; k < 200; k += 3) b = b.set(k, 0);
        for (int k = 1; k < 200; k += 3) b = b.erase(k);
        ASSERT_TRUE(a == b);
        ASSERT_FALSE(a != b);
        ASSERT_FALSE(a.identical(b));
        ASSERT_TRUE(same_canonical_order(a, b));
        const map c = map::from_range(b_items.begin(), b_items.end());
        ASSERT_TRUE(a == c);
        ASSERT_TRUE(same_canonical_order(a, c));
        // one value differs
        const map d = a.set(items[round * 17].first, -1);
        EXPECT_TRUE(a != d);
        EXPECT_TRUE(d != a);
        // same size, one key differs
        const map e = a.erase(items[round * 5].first).set(100001, 5);
        EXPECT_EQ(e.size(), a.size());
        EXPECT_TRUE(a != e);
        EXPECT_TRUE(e != a);
        // a subset
        const map f = a.erase(items[round].first);
        EXPECT_TRUE(a != f);
        EXPECT_TRUE(f != a);
    }
}

TYPED_TEST(MapShapes, MergeAgreesWithSequentialSets) {
    using map = typename TypeParam::map;
    std::mt19937 rng(11);
    for (int round = 0; round < 20; ++round) {
        map a, b;
        model_t model;
        const int na = static_cast<int>(rng() % 200), nb = static_cast<int>(rng() % 200);
        for (int i = 0; i < na; ++i) {
            const int k = static_cast<int>(rng() % 300), v = static_cast<int>(rng() % 5);
            a = a.set(k, v);
            model[k] = v;
        }
        const map a_before = a;
        const model_t a_model = model;
        map sequential = a;
        for (int i = 0; i < nb; ++i) {
            const int k = static_cast<int>(rng() % 300), v = static_cast<int>(rng() % 5);
            b = b.set(k, v);
        }
        const map b_before = b;
        model_t b_model;
        for (const auto& e : b) {
            sequential = sequential.set(e.first, e.second);
            model[e.first] = e.second;
            b_model[e.first] = e.second;
        }
        const map merged = a.merge(b);
        ASSERT_TRUE(matches_model(merged, model));
        ASSERT_TRUE(merged == sequential);
        ASSERT_TRUE(same_canonical_order(merged, sequential));
        ASSERT_TRUE(well_formed(merged));
        // the inputs did not change
        ASSERT_TRUE(matches_model(a, a_model));
        ASSERT_TRUE(matches_model(b, b_model));
        ASSERT_TRUE(a.identical(a_before));
        ASSERT_TRUE(b.identical(b_before));
        // merging what is already there changes nothing
        EXPECT_TRUE(merged.merge(b).identical(merged));
        EXPECT_TRUE(merged.merge(merged).identical(merged));
    }
}

TYPED_TEST(MapShapes, MergeWithADerivedVersion) {
    using map = typename TypeParam::map;
    map base;
    model_t model;
    for (int k = 0; k < 300; ++k) {
        base = base.set(k, k);
        model[k] = k;
    }
    map derived = base;
    for (int k : {3, 77, 150, 299, 1000, 1001}) {
        derived = derived.set(k, -k);
        model[k] = -k;
    }
    const map merged = base.merge(derived);
    EXPECT_TRUE(matches_model(merged, model));
    EXPECT_TRUE(merged == derived);
    EXPECT_TRUE(well_formed(merged));
    // The other direction: base's values win back.
    const map back = derived.merge(base);
    model_t back_model = model;
    for (int k : {3, 77, 150, 299}) back_model[k] = k;
    EXPECT_TRUE(matches_model(back, back_model));
    // Erasing from the other side and merging changes nothing.
    EXPECT_TRUE(base.merge(base.erase(150)).identical(base));
    EXPECT_TRUE(base.merge(base.erase(150).erase(151).erase(5)).identical(base));
}

TYPED_TEST(MapShapes, IteratorVisitsEachEntryOnce) {
    using map = typename TypeParam::map;
    map m;
    model_t model;
    for (int k = 0; k < 1000; k += 2) {
        m = m.set(k, k + 1);
        model[k] = k + 1;
    }
    std::unordered_map<int, int> seen;
    std::size_t count = 0;
    for (auto it = m.begin(); it != m.end(); it++) {
        ++seen[it->first];
        EXPECT_EQ(it->second, it->first + 1);
        ++count;
    }
    EXPECT_EQ(count, m.size());
    EXPECT_EQ(seen.size(), model.size());
    for (const auto& kv : seen) EXPECT_EQ(kv.second, 1);
    // iterators are forward iterators: copies advance independently
    auto it = m.begin();
    auto copy = it;
    ++it;
    EXPECT_TRUE(copy != it);
    EXPECT_EQ(static_cast<std::size_t>(std::distance(m.begin(), m.end())), m.size());
}

// ---- specific operations -----------------------------------------------------------------------

using mmap = int_map<mix_hash>;

TEST(PersistentMap, EmptyMap) {
    const mmap m;
    EXPECT_EQ(m.size(), 0u);
    EXPECT_TRUE(m.empty());
    EXPECT_TRUE(m.begin() == m.end());
    EXPECT_FALSE(m.begin() != m.end());
    EXPECT_EQ(m.find(1), nullptr);
    EXPECT_FALSE(m.contains(1));
    EXPECT_THROW((void)m.at(1), std::out_of_range);
    EXPECT_TRUE(m.erase(1).identical(m));
    EXPECT_TRUE(m.erase(1).empty());
    EXPECT_TRUE(m.merge(mmap()).identical(m));
    EXPECT_TRUE(m.merge(mmap()).empty());
    EXPECT_TRUE(m == mmap());
    EXPECT_TRUE(m.identical(mmap()));
    EXPECT_EQ(m.root(), nullptr);
    EXPECT_TRUE(m != (mmap{{1, 1}}));
    EXPECT_TRUE((mmap{{1, 1}}) != m);
    EXPECT_TRUE(mmap::from_range(static_cast<std::pair<int, int>*>(nullptr), static_cast<std::pair<int, int>*>(nullptr)).empty());
    EXPECT_EQ(m.find_hashed(1, mix_hash{}(1)), nullptr);
    EXPECT_TRUE(m.erase_hashed(1, mix_hash{}(1)).identical(m));
}

TEST(PersistentMap, OneElement) {
    const mmap empty;
    const mmap one = empty.set(5, 50);
    EXPECT_EQ(one.size(), 1u);
    EXPECT_FALSE(one.empty());
    EXPECT_TRUE(empty.empty());
    ASSERT_NE(one.find(5), nullptr);
    EXPECT_EQ(*one.find(5), 50);
    EXPECT_EQ(one.at(5), 50);
    EXPECT_THROW((void)one.at(6), std::out_of_range);
    EXPECT_FALSE(one.contains(6));
    auto it = one.begin();
    ASSERT_TRUE(it != one.end());
    EXPECT_EQ(it->first, 5);
    EXPECT_EQ((*it).second, 50);
    ++it;
    EXPECT_TRUE(it == one.end());
    EXPECT_TRUE(one.erase(6).identical(one));
    const mmap none = one.erase(5);
    EXPECT_TRUE(none.empty());
    EXPECT_TRUE(none == empty);
    EXPECT_TRUE(none.identical(empty));  // both have no root
    EXPECT_EQ(one.size(), 1u);
    EXPECT_TRUE(one.merge(empty).identical(one));
    EXPECT_TRUE(empty.merge(one).identical(one));
    EXPECT_TRUE(one.merge(one).identical(one));
    EXPECT_TRUE(one == (mmap{{5, 50}}));
    EXPECT_TRUE(one != (mmap{{5, 51}}));
    EXPECT_TRUE(one != (mmap{{6, 50}}));
    EXPECT_TRUE(well_formed(one));
}

TEST(PersistentMap, SetInsertsAndAssigns) {
    const mmap a{{1, 10}, {2, 20}};
    const mmap b = a.set(3, 30);  // insert
    EXPECT_EQ(b.size(), 3u);
    EXPECT_EQ(a.size(), 2u);
    EXPECT_FALSE(a.contains(3));
    const mmap c = b.set(2, 21);  // assign
    EXPECT_EQ(c.size(), 3u);
    EXPECT_EQ(c.at(2), 21);
    EXPECT_EQ(b.at(2), 20);
    EXPECT_FALSE(c.identical(b));
    // assigning the same value returns the very same map
    EXPECT_TRUE(c.set(2, 21).identical(c));
    EXPECT_TRUE(c.set(1, 10).identical(c));
    EXPECT_FALSE(c.set(1, 11).identical(c));
}

TEST(PersistentMap, SetSameValueIsIdenticalDeepInTheTrie) {
    int_map<const_hash> coll;
    int_map<shift_hash<40>> deep;
    for (int k = 0; k < 50; ++k) {
        coll = coll.set(k, k);
        deep = deep.set(k, k);
    }
    for (int k = 0; k < 50; ++k) {
        EXPECT_TRUE(coll.set(k, k).identical(coll));
        EXPECT_TRUE(deep.set(k, k).identical(deep));
    }
}

TEST(PersistentMap, EraseAbsentReturnsIdenticalMap) {
    mmap m;
    for (int k = 0; k < 100; ++k) m = m.set(k, k);
    for (int k = 100; k < 200; ++k) {
        const mmap e = m.erase(k);
        EXPECT_TRUE(e.identical(m));
        EXPECT_EQ(e.size(), 100u);
    }
    const mmap e = m.erase(50);
    EXPECT_FALSE(e.identical(m));
    EXPECT_EQ(e.size(), 99u);
    EXPECT_EQ(m.size(), 100u);
    EXPECT_TRUE(m.contains(50));
}

TEST(PersistentMap, AtThrowsOutOfRange) {
    const mmap m{{1, 2}};
    EXPECT_EQ(m.at(1), 2);
    try {
        (void)m.at(3);
        FAIL() << "at() did not throw";
    } catch (const std::out_of_range& e) {
        EXPECT_NE(std::string(e.what()).find("not found"), std::string::npos);
    }
}

// size() is stored, not counted: it neither hashes nor compares.
struct counting_hash {
    static inline long calls = 0;
    hash_t operator()(int k) const noexcept {
        ++calls;
        return mix64(ukey(k));
    }
};
struct counting_equal {
    static inline long calls = 0;
    bool operator()(int a, int b) const noexcept {
        ++calls;
        return a == b;
    }
};

TEST(PersistentMap, SizeIsConstantTime) {
    using cmap = persistent_map<int, int, counting_hash, counting_equal>;
    cmap m;
    for (int k = 0; k < 20000; ++k) m = m.set(k, k);
    counting_hash::calls = 0;
    counting_equal::calls = 0;
    std::size_t total = 0;
    for (int i = 0; i < 1000; ++i) total += m.size();
    EXPECT_EQ(total, 1000u * 20000u);
    EXPECT_EQ(counting_hash::calls, 0);
    EXPECT_EQ(counting_equal::calls, 0);
    EXPECT_FALSE(m.empty());
}

TEST(PersistentMap, FromRangeLaterDuplicatesWin) {
    const std::vector<std::pair<int, int>> items{{1, 1}, {2, 2}, {1, 3}, {4, 4}, {2, 5}};
    const mmap m = mmap::from_range(items.begin(), items.end());
    EXPECT_TRUE(matches_model(m, model_t{{1, 3}, {2, 5}, {4, 4}}));
    const std::map<int, int> ordered{{7, 70}, {8, 80}};
    const mmap m2 = mmap::from_range(ordered.begin(), ordered.end());
    EXPECT_TRUE(matches_model(m2, model_t{{7, 70}, {8, 80}}));
    EXPECT_TRUE(well_formed(m2));
    // from another map's iterators
    const mmap m3 = mmap::from_range(m.begin(), m.end());
    EXPECT_TRUE(m3 == m);
}

TEST(PersistentMap, InitializerList) {
    const mmap m{{1, 10}, {2, 20}, {1, 11}};
    EXPECT_TRUE(matches_model(m, model_t{{1, 11}, {2, 20}}));
    const mmap e{};
    EXPECT_TRUE(e.empty());
}

TEST(PersistentMap, CopyMoveAndSwap) {
    mmap a{{1, 1}, {2, 2}};
    mmap b = a;
    EXPECT_TRUE(b.identical(a));
    mmap c = std::move(b);
    EXPECT_TRUE(c.identical(a));
    EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move): moved-from maps are empty
    mmap d{{9, 9}};
    d.swap(c);
    EXPECT_TRUE(d.identical(a));
    EXPECT_EQ(c.size(), 1u);
    c = d;
    EXPECT_TRUE(c.identical(a));
    mmap& alias = c;
    c = alias;  // self-assignment
    EXPECT_TRUE(c.identical(a));
    c = mmap();
    EXPECT_TRUE(c.empty());
    EXPECT_TRUE(matches_model(a, model_t{{1, 1}, {2, 2}}));
}

TEST(PersistentMap, OldVersionsNeverChange) {
    std::mt19937 rng(3);
    std::vector<std::pair<mmap, model_t>> versions;
    mmap m;
    model_t model;
    for (int step = 0; step < 3000; ++step) {
        const int k = static_cast<int>(rng() % 400);
        switch (rng() % 4) {
            case 0:
            case 1:
                m = m.set(k, step);
                model[k] = step;
                break;
            case 2:
                m = m.erase(k);
                model.erase(k);
                break;
            default: {
                const mmap other{{k, step}, {k + 1, step}, {k + 2000, step}};
                m = m.merge(other);
                for (const auto& e : other) model[e.first] = e.second;
            }
        }
        if (step % 20 == 0) versions.emplace_back(m, model);
    }
    for (const auto& vm : versions) ASSERT_TRUE(matches_model(vm.first, vm.second));
}

// ---- merge -------------------------------------------------------------------------------------

TEST(PersistentMap, MergeOtherWins) {
    const mmap a{{1, 1}, {2, 2}, {3, 3}};
    const mmap b{{3, 30}, {4, 40}};
    const mmap ab = a.merge(b);
    EXPECT_TRUE(matches_model(ab, model_t{{1, 1}, {2, 2}, {3, 30}, {4, 40}}));
    const mmap ba = b.merge(a);
    EXPECT_TRUE(matches_model(ba, model_t{{1, 1}, {2, 2}, {3, 3}, {4, 40}}));
}

TEST(PersistentMap, MergeWithEmpty) {
    const mmap a{{1, 1}, {2, 2}};
    const mmap e;
    EXPECT_TRUE(a.merge(e).identical(a));
    EXPECT_TRUE(e.merge(a).identical(a));
    EXPECT_TRUE(e.merge(e).empty());
}

// Counts live nodes so structure sharing can be observed.
struct alloc_counting_policy : default_policy {
    static inline long allocations = 0;
    static inline long live = 0;
    static void* allocate(std::size_t bytes) {
        ++allocations;
        ++live;
        return ::operator new(bytes);
    }
    static void deallocate(void* p, std::size_t) noexcept {
        --live;
        ::operator delete(p);
    }
};

TEST(PersistentMap, MergeWithDerivedVersionReusesStructure) {
    using amap = int_map<mix_hash, alloc_counting_policy>;
    {
        amap base;
        for (int k = 0; k < 20000; ++k) base = base.set(k, k);
        amap derived = base.set(17, -1).set(4242, -2).set(30000, -3);
        const long before = alloc_counting_policy::allocations;
        const amap merged = base.merge(derived);
        const long used = alloc_counting_policy::allocations - before;
        // Only the nodes on the three changed paths are rebuilt (depth is about 3 here).
        EXPECT_LE(used, 3 * 6);
        EXPECT_TRUE(merged == derived);
        EXPECT_TRUE(same_exact_order(merged, derived));
        // Untouched root children are shared with both inputs by pointer.
        using trie = amap::trie;
        const auto* mr = merged.root();
        const auto* br = base.root();
        ASSERT_EQ(mr->nodemap, br->nodemap);
        unsigned shared = 0;
        for (unsigned i = 0; i < trie::child_count(mr); ++i) shared += trie::children(mr)[i] == trie::children(br)[i];
        EXPECT_GE(shared, trie::child_count(mr) - 3);
        model_t model;
        for (int k = 0; k < 20000; ++k) model[k] = k;
        model[17] = -1;
        model[4242] = -2;
        model[30000] = -3;
        EXPECT_TRUE(matches_model(merged, model));
        // Merging the base back over the derived version only rebuilds those paths as well.
        const long before2 = alloc_counting_policy::allocations;
        const amap back = derived.merge(base);
        EXPECT_LE(alloc_counting_policy::allocations - before2, 3 * 6);
        EXPECT_EQ(back.size(), 20001u);
        EXPECT_EQ(back.at(17), 17);
        EXPECT_EQ(back.at(30000), -3);
    }
    EXPECT_EQ(alloc_counting_policy::live, 0);
}

TEST(PersistentMap, TransientFromRangeAndPersistentCostNothingExtra) {
    using amap = int_map<mix_hash, alloc_counting_policy>;
    {
        amap m;
        for (int k = 0; k < 1000; ++k) m = m.set(k, k);
        const long before = alloc_counting_policy::allocations;
        amap copy = m;
        auto t = m.transient();
        const amap back = t.persistent();
        EXPECT_EQ(alloc_counting_policy::allocations, before);
        EXPECT_TRUE(back.identical(m));
        EXPECT_TRUE(copy.identical(m));
    }
    EXPECT_EQ(alloc_counting_policy::live, 0);
}

// ---- non-trivial keys and values -----------------------------------------------------------------

TEST(PersistentMap, StringKeysAndValues) {
    using smap = persistent_map<std::string, std::string>;
    smap m;
    std::unordered_map<std::string, std::string> model;
    for (int i = 0; i < 2000; ++i) {
        const std::string k = "key-" + std::to_string(i % 700) + std::string(static_cast<std::size_t>(i % 40), 'x');
        const std::string v = "a fairly long value that does not fit in SSO #" + std::to_string(i);
        m = m.set(k, v);
        model[k] = v;
        if (i % 3 == 0) {
            const std::string gone = "key-" + std::to_string((i * 7) % 700) + std::string(static_cast<std::size_t>((i * 7) % 40), 'x');
            m = m.erase(gone);
            model.erase(gone);
        }
    }
    EXPECT_TRUE(matches_model(m, model));
    EXPECT_TRUE(well_formed(m));
    std::vector<std::pair<std::string, std::string>> items(model.begin(), model.end());
    std::reverse(items.begin(), items.end());
    const smap rebuilt = smap::from_range(items.begin(), items.end());
    EXPECT_TRUE(rebuilt == m);
    EXPECT_TRUE(same_exact_order(rebuilt, m));
    const std::string some_key = items.front().first;
    const std::string same_value = model[some_key];
    EXPECT_TRUE(m.set(some_key, same_value).identical(m));
    EXPECT_TRUE(m.set(some_key, same_value + "!") != m);
}

TEST(PersistentMap, IntToStringWithCollisions) {
    using smap = persistent_map<int, std::string, const_hash>;
    smap m;
    std::unordered_map<int, std::string> model;
    for (int k = 0; k < 100; ++k) {
        m = m.set(k, std::string(static_cast<std::size_t>(k + 20), 'v'));
        model[k] = std::string(static_cast<std::size_t>(k + 20), 'v');
    }
    for (int k = 0; k < 100; k += 3) {
        m = m.set(k, "changed");
        model[k] = "changed";
    }
    for (int k = 1; k < 100; k += 5) {
        m = m.erase(k);
        model.erase(k);
    }
    EXPECT_TRUE(matches_model(m, model));
    EXPECT_TRUE(well_formed(m));
}

// A value type with no operator==: same_value falls back to false, so assigning an equal value
// builds a new version (never the same map), and everything else still works.
struct opaque {
    int x;
    std::string s;
};

TEST(PersistentMap, ValueWithoutOperatorEquals) {
    struct opaque_equal {
        bool operator()(const opaque& a, const opaque& b) const { return a.x == b.x && a.s == b.s; }
    };
    using omap = persistent_map<int, opaque>;
    omap m;
    for (int k = 0; k < 100; ++k) m = m.set(k, opaque{k, std::to_string(k)});
    EXPECT_EQ(m.size(), 100u);
    EXPECT_EQ(m.at(42).s, "42");
    const omap again = m.set(42, opaque{42, "42"});
    EXPECT_FALSE(again.identical(m));  // no operator==: never "the same value"
    EXPECT_EQ(again.size(), 100u);
    EXPECT_EQ(again.at(42).x, 42);
    const omap changed = m.set(42, opaque{-1, "x"});
    EXPECT_EQ(changed.at(42).x, -1);
    EXPECT_EQ(m.at(42).x, 42);
    const omap merged = m.merge(changed);
    EXPECT_EQ(merged.at(42).x, -1);
    EXPECT_EQ(merged.size(), 100u);
    EXPECT_FALSE(m.merge(m.set(1, opaque{1, "1"})).identical(m));
    EXPECT_TRUE(m.merge(m).identical(m));  // same root: nothing to do
    EXPECT_EQ(m.erase(42).size(), 99u);
    // with an explicit ValueEqual, == works
    using emap = persistent_map<int, opaque, std::hash<int>, std::equal_to<int>, opaque_equal>;
    emap a, b;
    for (int k = 0; k < 50; ++k) {
        a = a.set(k, opaque{k, "v"});
        b = b.set(49 - k, opaque{49 - k, "v"});
    }
    EXPECT_TRUE(a == b);
    EXPECT_TRUE(a != b.set(3, opaque{3, "w"}));
}

// ---- degenerate hashes ---------------------------------------------------------------------------

TEST(PersistentMap, AllKeysCollidingFormOneCollisionNodeAtDepth13) {
    using cmap = int_map<const_hash>;
    cmap m;
    model_t model;
    for (int k = 1; k <= 300; ++k) {
        m = m.set(k, k);
        model[k] = k;
        if (k >= 2) {
            ASSERT_EQ(collision_depth<cmap::trie>(m.root()), 13);
        }
        ASSERT_TRUE(well_formed(m));
        if (k % 37 == 0) {
            ASSERT_TRUE(matches_model(m, model));
        }
    }
    EXPECT_TRUE(matches_model(m, model));
    // assign in the collision node
    const cmap assigned = m.set(150, -150);
    EXPECT_EQ(assigned.at(150), -150);
    EXPECT_EQ(m.at(150), 150);
    EXPECT_TRUE(assigned != m);
    // equal in a different insertion order (collision nodes compare as sets)
    cmap rev;
    for (int k = 300; k >= 1; --k) rev = rev.set(k, k);
    EXPECT_TRUE(rev == m);
    EXPECT_TRUE(same_canonical_order(rev, m));
    // merge
    cmap other;
    for (int k = 250; k <= 350; ++k) other = other.set(k, -k);
    const cmap merged = m.merge(other);
    model_t merged_model = model;
    for (int k = 250; k <= 350; ++k) merged_model[k] = -k;
    EXPECT_TRUE(matches_model(merged, merged_model));
    EXPECT_TRUE(well_formed(merged));
    EXPECT_TRUE(m.merge(rev).identical(m));
    // erase down to 0: with one key left it moves back up to the root
    for (int k = 1; k <= 300; ++k) {
        m = m.erase(k);
        model.erase(k);
        ASSERT_TRUE(well_formed(m));
        if (m.size() == 1) {
            ASSERT_EQ(collision_depth<cmap::trie>(m.root()), -1);
        }
    }
    EXPECT_TRUE(m.empty());
    // and back
    for (int k = 1; k <= 300; ++k) m = m.set(k, k);
    EXPECT_TRUE(m == rev);
}

TEST(PersistentMap, CollisionNodesNextToOrdinaryKeys) {
    // Keys 0..99 share one hash; keys 1000.. have hashes whose first fragment equals the shared
    // hash's first fragment, so ordinary entries and the collision chain meet in the same nodes.
    struct h {
        hash_t operator()(int k) const noexcept {
            const hash_t shared = 0x0123456789ABCDEFull;
            return k < 1000 ? shared : (shared & 0xFFFFFull) | (mix64(ukey(k)) << 20);
        }
    };
    using hmap = int_map<h>;
    hmap m;
    model_t model;
    for (int k = 0; k < 100; ++k) {
        m = m.set(k, k);
        model[k] = k;
        m = m.set(1000 + k, k);
        model[1000 + k] = k;
    }
    EXPECT_TRUE(matches_model(m, model));
    EXPECT_TRUE(well_formed(m));
    for (int k = 0; k < 99; ++k) {
        m = m.erase(k);
        model.erase(k);
        ASSERT_TRUE(well_formed(m));
    }
    EXPECT_TRUE(matches_model(m, model));
    EXPECT_EQ(collision_depth<hmap::trie>(m.root()), -1);
}

TEST(PersistentMap, LongSharedPrefixes) {
    // k << 40: fragments 0..7 are 0 for every key; keys differ from bit 40 on.
    {
        using pmap = int_map<shift_hash<40>>;
        pmap m;
        model_t model;
        for (int k = 0; k < 500; ++k) {
            m = m.set(k, k);
            model[k] = k;
        }
        EXPECT_TRUE(matches_model(m, model));
        EXPECT_TRUE(well_formed(m));
        EXPECT_EQ(collision_depth<pmap::trie>(m.root()), -1);
        // the root has a single child (all first fragments are equal)
        EXPECT_EQ(m.root()->datamap, 0u);
        EXPECT_EQ(m.root()->nodemap, 1u);
        for (int k = 0; k < 499; ++k) m = m.erase(k);
        // the last key is back in the root
        EXPECT_EQ(m.size(), 1u);
        EXPECT_EQ(m.root()->nodemap, 0u);
        EXPECT_EQ(m.at(499), 499);
        EXPECT_TRUE(well_formed(m));
    }
    // k << 59: only bits 59..63 vary: 32 distinct hashes, the rest collide at depth 13.
    {
        using pmap = int_map<shift_hash<59>>;
        pmap m;
        model_t model;
        for (int k = 0; k < 32; ++k) {
            m = m.set(k, k);
            model[k] = k;
        }
        EXPECT_EQ(collision_depth<pmap::trie>(m.root()), -1);
        for (int k = 32; k < 200; ++k) {
            m = m.set(k, k);
            model[k] = k;
        }
        EXPECT_EQ(collision_depth<pmap::trie>(m.root()), 13);
        EXPECT_TRUE(matches_model(m, model));
        EXPECT_TRUE(well_formed(m));
        for (int k = 199; k >= 32; --k) {
            m = m.erase(k);
            model.erase(k);
        }
        EXPECT_EQ(collision_depth<pmap::trie>(m.root()), -1);
        EXPECT_TRUE(matches_model(m, model));
        EXPECT_TRUE(well_formed(m));
    }
}

TEST(PersistentMap, HashesDifferingOnlyInTopFourBits) {
    using tmap = int_map<top4_hash>;
    tmap m;
    model_t model;
    for (int k = 0; k < 16; ++k) {
        m = m.set(k, k);
        model[k] = k;
        ASSERT_TRUE(well_formed(m));
    }
    // 16 distinct hashes, all separated at the last bitmap level (shift 60): no collision node,
    // one chain of 12 single-child nodes leading to a node with 16 entries.
    EXPECT_EQ(collision_depth<tmap::trie>(m.root()), -1);
    const tmap::node_type* n = m.root();
    int depth = 0;
    while (n->nodemap) {
        ASSERT_EQ(tmap::trie::child_count(n), 1u);
        n = tmap::trie::children(n)[0];
        ++depth;
    }
    EXPECT_EQ(depth, 12);
    EXPECT_EQ(tmap::trie::entry_count(n), 16u);
    EXPECT_TRUE(matches_model(m, model));
    // keys 16.. collide with keys 0..15 (the shift drops their high bits)
    for (int k = 16; k < 64; ++k) {
        m = m.set(k, k);
        model[k] = k;
    }
    EXPECT_EQ(collision_depth<tmap::trie>(m.root()), 13);
    EXPECT_TRUE(matches_model(m, model));
    EXPECT_TRUE(well_formed(m));
    tmap rebuilt;
    for (int k = 63; k >= 0; --k) rebuilt = rebuilt.set(k, k);
    EXPECT_TRUE(rebuilt == m);
    EXPECT_TRUE(same_canonical_order(rebuilt, m));
    for (int k = 0; k < 64; ++k) {
        m = m.erase(k);
        model.erase(k);
        ASSERT_TRUE(well_formed(m));
    }
    EXPECT_TRUE(m.empty());
}

TEST(PersistentMap, FindHashedAndSetHashed) {
    mmap m;
    for (int k = 0; k < 100; ++k) m = m.set_hashed(k, k, mix_hash{}(k));
    for (int k = 0; k < 100; ++k) {
        ASSERT_NE(m.find_hashed(k, mix_hash{}(k)), nullptr);
        EXPECT_EQ(*m.find(k), k);
    }
    m = m.erase_hashed(5, mix_hash{}(5));
    EXPECT_FALSE(m.contains(5));
    EXPECT_EQ(m.size(), 99u);
    EXPECT_TRUE(well_formed(m));
}

// find_entry_matching (a lookup by a predicate, for bindings) finds what find finds: at the root,
// deep in the trie, and in collision nodes (const_hash puts every key in one), and nothing for
// absent keys or a predicate that accepts no entry.
TEST(PersistentMap, FindEntryMatchingAgreesWithFind) {
    mmap m;
    for (int k = 0; k < 5000; ++k) m = m.set(k, -k);
    EXPECT_EQ(mmap().find_entry_matching(mix_hash{}(1), [](const mmap::value_type&) { return true; }), nullptr);
    expect_find_entry_matching_agrees_with_find<mix_hash>(m, -50, 5050);
    using cmap = int_map<const_hash>;
    cmap colliding;
    for (int k = 1; k <= 40; ++k) colliding = colliding.set(k, 2 * k);
    for (int k = 0; k <= 41; ++k) {
        const auto* e = colliding.find_entry_matching(const_hash{}(k), [k](const cmap::value_type& entry) { return entry.first == k; });
        ASSERT_EQ(e != nullptr, k >= 1 && k <= 40) << k;
        if (e) {
            EXPECT_EQ(e->second, 2 * k);
        }
    }
}

TEST(PersistentMap, ReleaseRootAndAdopt) {
    mmap m{{1, 1}, {2, 2}};
    const mmap keep = m;
    const std::size_t size = m.size();
    auto* root = m.release_root();
    EXPECT_TRUE(m.empty());
    EXPECT_EQ(m.root(), nullptr);
    const mmap back = mmap::adopt(root, size);
    EXPECT_TRUE(back.identical(keep));
    EXPECT_TRUE(back == keep);
}

}  // namespace
