// Randomized differential test against std::unordered_map. Fixed seeds; deliberately weak
// hashes force deep single-child chains, crowded nodes and collision nodes. Every batch of
// operations (persistent sets/erases, transient batches with snapshots, persistent and transient
// merges, rebuilds) is followed by a full check of the current version, a comparison with a
// version rebuilt from the model in a different order (== and the canonical iteration order),
// and a re-check of a sample of saved older versions, which must never change.

#include "test_util.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <random>
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
struct single_thread_cached_policy : pypersistent::single_thread_policy {
    static constexpr bool cache_hash = true;
};

template <class V>
V make_value(std::uint64_t r);
template <>
int make_value<int>(std::uint64_t r) {
    return static_cast<int>(r % 8);  // few distinct values: many assignments of an equal value
}
template <>
std::string make_value<std::string>(std::uint64_t r) {
    return std::string(static_cast<std::size_t>(r % 3) * 12 + 1, static_cast<char>('a' + r % 5));
}

struct stats {
    std::size_t ops = 0;   // single set/erase calls, persistent and transient
    std::size_t bulk = 0;  // entries taken in by merges and rebuilds
    std::size_t batches = 0;
    std::size_t max_size = 0;
};

template <class Hash, class Policy, class V>
class differential {
public:
    using map = persistent_map<int, V, Hash, std::equal_to<int>, std::equal_to<V>, Policy>;
    using transient = typename map::transient_type;
    using model_t = std::unordered_map<int, V>;

    differential(std::uint64_t seed, int keyspace)
        : rng_(seed), keyspace_(keyspace), target_size_(static_cast<std::size_t>(keyspace) / 2) {}

    void run(std::size_t target_ops) {
        while (stats_.ops < target_ops) {
            if (rng_() % 40 == 0) target_size_ = static_cast<std::size_t>(rng_() % static_cast<std::uint64_t>(keyspace_));
            const unsigned kind = static_cast<unsigned>(rng_() % 20);
            if (kind < 7) {
                persistent_batch();
            } else if (kind < 14) {
                transient_batch();
            } else if (kind < 16) {
                persistent_merge();
            } else if (kind < 18) {
                transient_merge();
            } else if (kind < 19) {
                revert_to_saved();
            } else {
                rebuild();
            }
            ++stats_.batches;
            stats_.max_size = std::max(stats_.max_size, model_.size());
            check_batch();
            if (::testing::Test::HasFatalFailure() || ::testing::Test::HasNonfatalFailure()) return;
        }
    }

    const stats& result() const { return stats_; }

private:
    int random_key() { return static_cast<int>(rng_() % static_cast<std::uint64_t>(keyspace_)); }
    V random_value() { return make_value<V>(rng_()); }
    bool want_insert() {
        // Drift towards the current target size so that sizes sweep up and down.
        const std::uint64_t p = model_.size() < target_size_ ? 75 : 35;
        return rng_() % 100 < p;
    }

    void persistent_batch() {
        const int n = 1 + static_cast<int>(rng_() % 160);
        for (int i = 0; i < n; ++i) {
            const int k = random_key();
            ++stats_.ops;
            if (want_insert()) {
                const V v = random_value();
                const map next = current_.set(k, v);
                auto it = model_.find(k);
                const bool same = it != model_.end() && it->second == v;
                EXPECT_EQ(next.identical(current_), same) << "set of an equal value must return the same map";
                EXPECT_EQ(next.size(), model_.size() + (it == model_.end() ? 1 : 0));
                model_[k] = v;
                current_ = next;
            } else {
                const map next = current_.erase(k);
                const bool present = model_.erase(k) == 1;
                EXPECT_EQ(next.identical(current_), !present) << "erase of an absent key must return the same map";
                EXPECT_EQ(next.size(), model_.size());
                current_ = next;
            }
            if (rng_() % 8 == 0) {
                const int q = random_key();
                const V* found = current_.find(q);
                auto it = model_.find(q);
                ASSERT_EQ(found != nullptr, it != model_.end()) << "find(" << q << ")";
                if (found) {
                    ASSERT_EQ(*found, it->second);
                }
                ASSERT_EQ(current_.contains(q), found != nullptr);
            }
        }
        maybe_save();
    }

    void transient_batch() {
        transient t = current_.transient();
        const map base = current_;
        const model_t base_model = model_;
        const int n = 1 + static_cast<int>(rng_() % 600);
        for (int i = 0; i < n; ++i) {
            const int k = random_key();
            ++stats_.ops;
            if (want_insert()) {
                const V v = random_value();
                const bool is_new = model_.find(k) == model_.end();
                ASSERT_EQ(t.set(k, v), is_new);
                model_[k] = v;
            } else {
                ASSERT_EQ(t.erase(k), model_.erase(k) == 1);
            }
            ASSERT_EQ(t.size(), model_.size());
            if (rng_() % 16 == 0) {
                const int q = random_key();
                const V* found = t.find(q);
                auto it = model_.find(q);
                ASSERT_EQ(found != nullptr, it != model_.end());
                if (found) {
                    ASSERT_EQ(*found, it->second);
                }
            }
            if (rng_() % 64 == 0) {
                // a snapshot in the middle of the batch; the transient goes on
                save(t.persistent(), model_);
            }
        }
        if (rng_() % 4 == 0) {
            ASSERT_TRUE(matches_model(t, model_));
        }
        current_ = t.persistent();
        // the base version the transient started from never changed
        ASSERT_TRUE(matches_model(base, base_model));
        maybe_save();
    }

    map random_small_map(model_t& out) {
        std::vector<std::pair<int, V>> items;
        const int n = static_cast<int>(rng_() % 40);
        for (int i = 0; i < n; ++i) items.emplace_back(random_key(), random_value());
        for (const auto& kv : items) out[kv.first] = kv.second;
        return map::from_range(items.begin(), items.end());
    }

    // Something to merge: a random small map, an old version, or the current version with a few
    // changes (so most subtrees are shared).
    map merge_source(model_t& other_model) {
        switch (rng_() % 3) {
            case 0:
                return random_small_map(other_model);
            case 1:
                if (!saved_.empty()) {
                    const auto& s = saved_[rng_() % saved_.size()];
                    other_model = s.second;
                    return s.first;
                }
                return random_small_map(other_model);
            default: {
                map derived = current_;
                other_model = model_;
                const int n = static_cast<int>(rng_() % 6);
                for (int i = 0; i < n; ++i) {
                    const int k = random_key();
                    if (rng_() % 3) {
                        const V v = random_value();
                        derived = derived.set(k, v);
                        other_model[k] = v;
                    } else {
                        derived = derived.erase(k);
                        other_model.erase(k);
                    }
                }
                return derived;
            }
        }
    }

    void persistent_merge() {
        model_t other_model;
        const map other = merge_source(other_model);
        const map other_copy = other;
        const map before = current_;
        const map merged = current_.merge(other);
        stats_.bulk += other.size();
        if (rng_() % 4 == 0) {
            // the other direction: this side's values win
            model_t reverse_model = model_;
            for (const auto& kv : other_model) reverse_model.emplace(kv.first, kv.second);
            ASSERT_TRUE(matches_model(other.merge(current_), reverse_model));
        }
        bool changes = false;
        for (const auto& kv : other_model) {
            auto it = model_.find(kv.first);
            if (it == model_.end() || !(it->second == kv.second)) changes = true;
            model_[kv.first] = kv.second;
        }
        // "Returns this very map when `other` changes nothing" (values compared with ==).
        if (!changes) {
            EXPECT_TRUE(merged.identical(before)) << "merge that changes nothing must return the same map";
        }
        ASSERT_TRUE(matches_model(other, other_model));
        ASSERT_TRUE(other.identical(other_copy));
        current_ = merged;
        maybe_save();
    }

    void transient_merge() {
        model_t other_model;
        const map other = merge_source(other_model);
        transient t = current_.transient();
        // some edits before and after, so the transient owns nodes when it merges
        const int pre = static_cast<int>(rng_() % 20), post = static_cast<int>(rng_() % 20);
        for (int i = 0; i < pre; ++i) {
            const int k = random_key();
            const V v = random_value();
            t.set(k, v);
            model_[k] = v;
        }
        t.merge(other);
        for (const auto& kv : other_model) model_[kv.first] = kv.second;
        ASSERT_EQ(t.size(), model_.size());
        for (int i = 0; i < post; ++i) {
            const int k = random_key();
            if (rng_() % 2) {
                t.erase(k);
                model_.erase(k);
            } else {
                const V v = random_value();
                t.set(k, v);
                model_[k] = v;
            }
        }
        stats_.ops += static_cast<std::size_t>(pre + post);
        stats_.bulk += other.size();
        current_ = t.persistent();
        ASSERT_TRUE(matches_model(other, other_model));
        maybe_save();
    }

    void revert_to_saved() {
        if (saved_.empty()) return;
        const auto& s = saved_[rng_() % saved_.size()];
        current_ = s.first;
        model_ = s.second;
    }

    void rebuild() {
        std::vector<std::pair<int, V>> items(model_.begin(), model_.end());
        std::shuffle(items.begin(), items.end(), rng_);
        if (rng_() % 2) {
            current_ = map::from_range(items.begin(), items.end());
        } else {
            map m;
            for (const auto& kv : items) m = m.set(kv.first, kv.second);
            current_ = m;
        }
        stats_.bulk += items.size();
    }

    void save(const map& m, const model_t& model) {
        if (saved_.size() < 48) {
            saved_.emplace_back(m, model);
        } else {
            saved_[rng_() % saved_.size()] = {m, model};
        }
    }
    void maybe_save() {
        if (rng_() % 4 == 0) save(current_, model_);
    }

    void check_batch() {
        ASSERT_TRUE(matches_model(current_, model_)) << "after batch " << stats_.batches;
        ASSERT_TRUE(well_formed(current_)) << "after batch " << stats_.batches;
        // rebuilt from the model in another order: equal, and the same canonical order
        std::vector<std::pair<int, V>> items(model_.begin(), model_.end());
        std::shuffle(items.begin(), items.end(), rng_);
        const map rebuilt = map::from_range(items.begin(), items.end());
        ASSERT_TRUE(rebuilt == current_) << "after batch " << stats_.batches;
        ASSERT_TRUE(current_ == rebuilt);
        ASSERT_TRUE(same_canonical_order(rebuilt, current_)) << "after batch " << stats_.batches;
        // older versions never change; == agrees with the models' ==
        for (int i = 0; i < 2 && !saved_.empty(); ++i) {
            const auto& s = saved_[rng_() % saved_.size()];
            ASSERT_TRUE(matches_model(s.first, s.second)) << "saved version changed, batch " << stats_.batches;
            const bool models_equal = s.second == model_;
            ASSERT_EQ(s.first == current_, models_equal) << "batch " << stats_.batches;
            ASSERT_EQ(current_ != s.first, !models_equal);
        }
    }

    std::mt19937_64 rng_;
    int keyspace_;
    std::size_t target_size_;
    map current_;
    model_t model_;
    std::vector<std::pair<map, model_t>> saved_;
    stats stats_;
};

template <class Hash, class Policy, class V = int>
void run_differential(std::uint64_t seed, int keyspace, std::size_t ops) {
    differential<Hash, Policy, V> d(seed, keyspace);
    d.run(ops);
    const stats& s = d.result();
    ::testing::Test::RecordProperty("operations", static_cast<int>(s.ops));
    std::printf("seed %llu: %zu set/erase operations, %zu entries merged or rebuilt, %zu batches, max size %zu\n",
                static_cast<unsigned long long>(seed), s.ops, s.bulk, s.batches, s.max_size);
    EXPECT_GE(s.ops, ops);
    EXPECT_GT(s.max_size, static_cast<std::size_t>(keyspace) / 4) << "the sizes never grew";
}

// About 4.3 million single set/erase operations in all, plus about 2 million entries taken in
// by merges and rebuilds. Each test runs two or three seeds.

TEST(Differential, MixHash) {
    run_differential<mix_hash, default_policy>(1, 1000, 300000);
    run_differential<mix_hash, default_policy>(2, 2000, 250000);
}

TEST(Differential, MixHashCachedStringValues) {
    run_differential<mix_hash, cached_policy, std::string>(3, 800, 250000);
    run_differential<mix_hash, single_thread_cached_policy, std::string>(4, 200, 150000);
}

TEST(Differential, Mod61Hash) {
    run_differential<mod61_hash, default_policy>(5, 600, 250000);
    run_differential<mod61_hash, cached_policy>(6, 150, 200000);
}

TEST(Differential, FewDistinctHashesCollisionNodes) {
    run_differential<few_hash, default_policy>(7, 300, 200000);
    run_differential<few_hash, cached_policy>(8, 60, 200000);
}

TEST(Differential, ClumpyHashSomeCollisions) {
    run_differential<clumpy_hash, default_policy>(9, 1500, 300000);
    run_differential<clumpy_hash, cached_policy>(10, 500, 250000);
}

TEST(Differential, LongSharedPrefixes) {
    // k << 40: 8 shared low fragments, no collisions
    run_differential<shift_hash<40>, default_policy>(11, 800, 250000);
    // k << 54: keys equal modulo 1024 share the whole hash
    run_differential<shift_hash<54>, cached_policy>(12, 2048, 200000);
    // k << 59: 32 distinct hashes
    run_differential<shift_hash<59>, default_policy>(13, 160, 150000);
}

TEST(Differential, TopFourBitsOnly) {
    run_differential<top4_hash, default_policy>(14, 16, 100000);  // no collisions
    run_differential<top4_hash, cached_policy>(15, 100, 200000);  // collisions
}

TEST(Differential, AllKeysCollide) {
    run_differential<const_hash, default_policy>(16, 80, 150000);
    run_differential<const_hash, cached_policy, std::string>(17, 40, 100000);
}

}  // namespace
