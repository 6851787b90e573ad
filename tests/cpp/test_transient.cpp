// Unit tests of transient_map: in-place editing, O(1) freezing, snapshots that never change,
// bases that never change, merge, move semantics.

#include "test_util.hpp"

#include <cstddef>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using namespace pptest;
using pypersistent::default_policy;
using pypersistent::persistent_map;
using pypersistent::transient_map;

// Counts node allocations, and hash calls, so O(1) operations can be checked.
struct counting_policy : default_policy {
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
struct cached_counting_policy : counting_policy {
    static constexpr bool cache_hash = true;
};

template <class Hash, class Policy = counting_policy>
using int_map = persistent_map<int, int, Hash, std::equal_to<int>, std::equal_to<int>, Policy>;
using model_t = std::unordered_map<int, int>;

template <class Hash, bool Cache>
struct config {
    using map = int_map<Hash, std::conditional_t<Cache, cached_counting_policy, counting_policy>>;
    using transient = typename map::transient_type;
};

template <class C>
class TransientShapes : public ::testing::Test {
protected:
    void TearDown() override { EXPECT_EQ(counting_policy::live, 0) << "nodes leaked"; }
};

using configs = ::testing::Types<config<mix_hash, false>, config<mix_hash, true>, config<const_hash, false>,
                                 config<const_hash, true>, config<mod61_hash, false>, config<shift_hash<40>, false>,
                                 config<shift_hash<59>, true>, config<top4_hash, false>, config<few_hash, true>,
                                 config<clumpy_hash, false>>;
class names {
public:
    template <class C>
    static std::string GetName(int i) {
        return std::to_string(i);
    }
};
TYPED_TEST_SUITE(TransientShapes, configs, names);

TYPED_TEST(TransientShapes, SetEraseFindContainsSize) {
    using map = typename TypeParam::map;
    using transient = typename TypeParam::transient;
    {
        transient t;
        model_t model;
        EXPECT_TRUE(t.empty());
        EXPECT_FALSE(t.erase(1));
        EXPECT_EQ(t.find(1), nullptr);
        EXPECT_TRUE(t.begin() == t.end());
        for (int k = 0; k < 400; ++k) {
            ASSERT_TRUE(t.set(k, k));
            model[k] = k;
            ASSERT_FALSE(t.set(k, k + 1));  // assign: not new
            model[k] = k + 1;
            ASSERT_TRUE(t.contains(k));
            ASSERT_EQ(*t.find(k), k + 1);
            ASSERT_EQ(t.size(), model.size());
        }
        EXPECT_TRUE(matches_model(t, model));
        for (int k = 0; k < 400; k += 3) {
            ASSERT_TRUE(t.erase(k));
            ASSERT_FALSE(t.erase(k));
            model.erase(k);
            ASSERT_FALSE(t.contains(k));
        }
        EXPECT_TRUE(matches_model(t, model));
        map p = t.persistent();
        EXPECT_TRUE(matches_model(p, model));
        EXPECT_TRUE(well_formed(p));
        // erase all, then refill
        for (int k = 0; k < 400; ++k) t.erase(k);
        EXPECT_TRUE(t.empty());
        EXPECT_EQ(t.root(), nullptr);
        EXPECT_TRUE(matches_model(p, model));  // the snapshot did not change
        for (int k = 0; k < 400; ++k) t.set(k, -k);
        model_t neg;
        for (int k = 0; k < 400; ++k) neg[k] = -k;
        EXPECT_TRUE(matches_model(t, neg));
        map q = t.persistent();
        EXPECT_TRUE(well_formed(q));
        EXPECT_TRUE(matches_model(p, model));
    }
}

TYPED_TEST(TransientShapes, SnapshotsNeverChange) {
    using map = typename TypeParam::map;
    using transient = typename TypeParam::transient;
    {
        std::mt19937 rng(5);
        transient t;
        model_t model;
        std::vector<std::pair<map, model_t>> snaps;
        for (int step = 0; step < 4000; ++step) {
            const int k = static_cast<int>(rng() % 300);
            if (rng() % 3 == 0) {
                ASSERT_EQ(t.erase(k), model.erase(k) == 1);
            } else {
                const bool is_new = model.find(k) == model.end();
                ASSERT_EQ(t.set(k, step), is_new);
                model[k] = step;
            }
            if (step % 97 == 0) {
                snaps.emplace_back(t.persistent(), model);
                ASSERT_TRUE(matches_model(snaps.back().first, model));
                ASSERT_TRUE(well_formed(snaps.back().first));
            }
        }
        EXPECT_TRUE(matches_model(t, model));
        for (const auto& s : snaps) ASSERT_TRUE(matches_model(s.first, s.second));
        // a snapshot of a rebuilt map is equal
        const map final_snap = t.persistent();
        std::vector<std::pair<int, int>> items(model.begin(), model.end());
        std::shuffle(items.begin(), items.end(), rng);
        const map rebuilt = map::from_range(items.begin(), items.end());
        EXPECT_TRUE(rebuilt == final_snap);
        EXPECT_TRUE(same_canonical_order(rebuilt, final_snap));
    }
}

TYPED_TEST(TransientShapes, TransientFromPersistentNeverChangesIt) {
    using map = typename TypeParam::map;
    {
        map base;
        model_t base_model;
        for (int k = 0; k < 300; ++k) {
            base = base.set(k, k);
            base_model[k] = k;
        }
        const map base_copy = base;
        auto t = base.transient();
        EXPECT_TRUE(matches_model(t, base_model));
        model_t model = base_model;
        std::mt19937 rng(9);
        for (int step = 0; step < 3000; ++step) {
            const int k = static_cast<int>(rng() % 400);
            if (rng() % 2) {
                t.erase(k);
                model.erase(k);
            } else {
                t.set(k, -step);
                model[k] = -step;
            }
        }
        EXPECT_TRUE(matches_model(t, model));
        EXPECT_TRUE(matches_model(base, base_model));
        EXPECT_TRUE(base.identical(base_copy));
        EXPECT_TRUE(well_formed(base));
        // a second transient from the same base is independent of the first
        auto t2 = base.transient();
        t2.set(1, 1000);
        EXPECT_EQ(*t2.find(1), 1000);
        EXPECT_EQ(base.at(1), 1);
        EXPECT_TRUE(matches_model(t, model));
    }
}

TYPED_TEST(TransientShapes, MergeOnATransient) {
    using map = typename TypeParam::map;
    using transient = typename TypeParam::transient;
    {
        map other;
        model_t other_model;
        for (int k = 100; k < 300; ++k) {
            other = other.set(k, -k);
            other_model[k] = -k;
        }
        // a fresh transient whose nodes are all its own
        transient t;
        model_t model;
        for (int k = 0; k < 200; ++k) {
            t.set(k, k);
            model[k] = k;
        }
        t.merge(other);
        for (const auto& kv : other_model) model[kv.first] = kv.second;
        EXPECT_TRUE(matches_model(t, model));
        const map after_merge = t.persistent();
        const model_t after_merge_model = model;
        EXPECT_TRUE(well_formed(after_merge));
        // Edit everywhere afterwards: neither `other` nor the snapshot may change.
        for (int k = 0; k < 400; ++k) {
            if (k % 2) {
                t.erase(k);
                model.erase(k);
            } else {
                t.set(k, k * 10);
                model[k] = k * 10;
            }
        }
        EXPECT_TRUE(matches_model(t, model));
        EXPECT_TRUE(matches_model(other, other_model));
        EXPECT_TRUE(matches_model(after_merge, after_merge_model));

        // merge without taking a snapshot first, then keep editing in place
        transient u;
        model_t umodel;
        for (int k = 0; k < 250; ++k) {
            u.set(k, 1);
            umodel[k] = 1;
        }
        u.merge(other);
        for (const auto& kv : other_model) umodel[kv.first] = kv.second;
        for (int k = 0; k < 350; ++k) {
            if (k % 3 == 0) {
                u.erase(k);
                umodel.erase(k);
            } else {
                u.set(k, 2);
                umodel[k] = 2;
            }
        }
        EXPECT_TRUE(matches_model(u, umodel));
        EXPECT_TRUE(matches_model(other, other_model));
        const map up = u.persistent();
        EXPECT_TRUE(well_formed(up));

        // merge into an empty transient, with an empty map, with itself
        transient e;
        e.merge(map());
        EXPECT_TRUE(e.empty());
        e.merge(other);
        EXPECT_TRUE(matches_model(e, other_model));
        e.merge(other);
        EXPECT_TRUE(matches_model(e, other_model));
        e.set(100, 5);
        EXPECT_EQ(other.at(100), -100);
        const map ep = e.persistent();
        e.merge(ep);
        EXPECT_EQ(e.size(), ep.size());
        EXPECT_TRUE(e.persistent() == ep);
    }
}

TYPED_TEST(TransientShapes, EraseDownToNothingAndBack) {
    using transient = typename TypeParam::transient;
    using map = typename TypeParam::map;
    {
        map base;
        for (int k = 0; k < 200; ++k) base = base.set(k, k);
        transient t(base);
        for (int k = 0; k < 200; ++k) {
            ASSERT_TRUE(t.erase(k));
            if (k % 25 == 0) {
                const map snap = t.persistent();
                ASSERT_TRUE(well_formed(snap));
                ASSERT_EQ(snap.size(), static_cast<std::size_t>(199 - k));
            }
        }
        EXPECT_TRUE(t.empty());
        EXPECT_EQ(base.size(), 200u);
        for (int k = 0; k < 200; ++k) ASSERT_TRUE(t.set(k, k));
        EXPECT_TRUE(t.persistent() == base);
    }
}

// ---- specific behaviour ------------------------------------------------------------------------

using mmap = int_map<mix_hash>;
using mtrans = mmap::transient_type;

TEST(Transient, PersistentIsConstantTime) {
    {
        mtrans t;
        for (int k = 0; k < 50000; ++k) t.set(k, k);
        const long before = counting_policy::allocations;
        const mmap a = t.persistent();
        const mmap b = t.persistent();
        EXPECT_EQ(counting_policy::allocations, before);  // nothing is copied
        EXPECT_TRUE(a.identical(b));
        EXPECT_EQ(a.size(), 50000u);
        // the first edit after freezing copies only one path, not the map
        t.set(1, -1);
        EXPECT_LE(counting_policy::allocations - before, 6);
        EXPECT_EQ(a.at(1), 1);
        EXPECT_EQ(*t.find(1), -1);
        // later edits on the same path are in place
        const long after_first = counting_policy::allocations;
        t.set(1, -2);
        EXPECT_EQ(counting_policy::allocations, after_first);
    }
    EXPECT_EQ(counting_policy::live, 0);
}

TEST(Transient, EditsInPlaceWhenOwned) {
    {
        mtrans t;
        for (int k = 0; k < 1000; ++k) t.set(k, k);
        const long before = counting_policy::allocations;
        for (int k = 0; k < 1000; ++k) t.set(k, k + 1);  // assignments: all in place
        EXPECT_EQ(counting_policy::allocations, before);
    }
    EXPECT_EQ(counting_policy::live, 0);
}

TEST(Transient, MoveSemantics) {
    {
        mtrans a;
        for (int k = 0; k < 100; ++k) a.set(k, k);
        const mmap snap = a.persistent();
        a.set(5, 500);  // owned nodes again
        mtrans b(std::move(a));
        EXPECT_EQ(b.size(), 100u);
        EXPECT_EQ(*b.find(5), 500);
        EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move)
        EXPECT_EQ(a.root(), nullptr);
        // the moved-from transient is usable and independent
        a.set(1, 1);
        EXPECT_EQ(a.size(), 1u);
        b.set(6, 600);
        EXPECT_EQ(*b.find(6), 600);
        EXPECT_EQ(b.size(), 100u);
        // move assignment releases the old contents
        mtrans c;
        for (int k = 1000; k < 1100; ++k) c.set(k, k);
        c = std::move(b);
        EXPECT_EQ(c.size(), 100u);
        EXPECT_EQ(*c.find(5), 500);
        EXPECT_FALSE(c.contains(1000));
        EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
        b.set(7, 7);
        c.set(7, 70);
        EXPECT_EQ(*b.find(7), 7);
        EXPECT_EQ(*c.find(7), 70);
        mtrans& alias = c;
        c = std::move(alias);  // self-move-assignment keeps the contents
        EXPECT_EQ(c.size(), 100u);
        // the snapshot taken before all this is unchanged
        EXPECT_EQ(snap.at(5), 5);
        EXPECT_FALSE(snap.contains(1000));
        EXPECT_EQ(snap.size(), 100u);
        const mmap cp = c.persistent();
        EXPECT_EQ(cp.at(6), 600);
        EXPECT_TRUE(well_formed(cp));
    }
    EXPECT_EQ(counting_policy::live, 0);
}

TEST(Transient, HashedVariants) {
    mtrans t;
    for (int k = 0; k < 100; ++k) EXPECT_TRUE(t.set_hashed(k, k, mix_hash{}(k)));
    for (int k = 0; k < 100; ++k) ASSERT_NE(t.find_hashed(k, mix_hash{}(k)), nullptr);
    EXPECT_TRUE(t.erase_hashed(3, mix_hash{}(3)));
    EXPECT_FALSE(t.erase_hashed(3, mix_hash{}(3)));
    EXPECT_EQ(t.size(), 99u);
    mtrans e;
    EXPECT_FALSE(e.erase_hashed(1, mix_hash{}(1)));
    EXPECT_EQ(e.find_hashed(1, mix_hash{}(1)), nullptr);
}

// find_entry_matching on a transient finds what find finds (root entries, deep entries, collision
// nodes), also after in-place edits, and nothing for absent keys or a predicate that accepts none.
TEST(Transient, FindEntryMatchingAgreesWithFind) {
    mtrans t;
    EXPECT_EQ(t.find_entry_matching(mix_hash{}(1), [](const mmap::value_type&) { return true; }), nullptr);
    for (int k = 0; k < 5000; ++k) t.set(k, -k);
    for (int k = 0; k < 5000; k += 3) t.erase(k);
    expect_find_entry_matching_agrees_with_find<mix_hash>(t, -50, 5050);
    using cmap = int_map<const_hash>;
    auto colliding = cmap().transient();
    for (int k = 1; k <= 40; ++k) colliding.set(k, 2 * k);
    for (int k = 0; k <= 41; ++k) {
        const auto* e = colliding.find_entry_matching(const_hash{}(k), [k](const cmap::value_type& entry) { return entry.first == k; });
        ASSERT_EQ(e != nullptr, k >= 1 && k <= 40) << k;
        if (e) {
            EXPECT_EQ(e->second, 2 * k);
        }
    }
}

TEST(Transient, StringValues) {
    using smap = persistent_map<std::string, std::string>;
    auto t = smap().transient();
    std::unordered_map<std::string, std::string> model;
    std::vector<smap> snaps;
    std::vector<std::unordered_map<std::string, std::string>> models;
    for (int i = 0; i < 3000; ++i) {
        // Not `"k" + std::to_string(...)`: GCC 12 at -O3 -std=c++20 warns (-Wrestrict) about the
        // memcpy inside that operator+ (a false positive, GCC bug 105651).
        std::string k = "k";
        k += std::to_string(i % 500);
        if (i % 4 == 3) {
            t.erase(k);
            model.erase(k);
        } else {
            const std::string v(static_cast<std::size_t>(16 + i % 50), static_cast<char>('a' + i % 26));
            t.set(k, v);
            model[k] = v;
        }
        if (i % 300 == 0) {
            snaps.push_back(t.persistent());
            models.push_back(model);
        }
    }
    EXPECT_TRUE(matches_model(t, model));
    for (std::size_t i = 0; i < snaps.size(); ++i) EXPECT_TRUE(matches_model(snaps[i], models[i]));
}

TEST(Transient, FreshTransientsDoNotShareOwnership) {
    // Two transients from one frozen map: each copies the path it edits, never the other's.
    mtrans t;
    for (int k = 0; k < 500; ++k) t.set(k, k);
    const mmap frozen = t.persistent();
    mtrans a = frozen.transient();
    mtrans b = frozen.transient();
    for (int k = 0; k < 500; ++k) {
        a.set(k, 1);
        b.set(k, 2);
        t.set(k, 3);
    }
    for (int k = 0; k < 500; ++k) {
        ASSERT_EQ(*a.find(k), 1);
        ASSERT_EQ(*b.find(k), 2);
        ASSERT_EQ(*t.find(k), 3);
        ASSERT_EQ(frozen.at(k), k);
    }
}

}  // namespace
