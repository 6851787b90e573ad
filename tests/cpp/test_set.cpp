// Tests of persistent_set and transient_set:
//   - unit tests of every operation, on ordinary and deliberately degenerate hashes;
//   - a differential random test against std::set for every operation, the set algebra included,
//     on versions derived from each other (shared structure) and built apart, over colliding
//     hashes (key % 7, equal whole hashes: collision nodes), checking canonical shape, that
//     results reuse an input whenever they equal it, and that old versions never change;
//   - the structural claims: KeyEqual is called at most once per pair of entries and Hash never
//     (cached hashes); `s.op(s.insert(x))` on 100,000 keys makes O(log n) comparisons;
//   - exception safety: KeyEqual (and allocation) throwing at the n-th call, for every n, in
//     every algebra operation and in insert/erase, persistent and transient; a counting policy
//     checks that every retain has its release and no node is left behind;
//   - 16 threads sharing sets and deriving versions (run under TSan by run-cpp-sanitizers.sh).

#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace pptest;
using namespace pptest::faults;
using pypersistent::default_policy;
using pypersistent::persistent_set;
using pypersistent::transient_set;

struct cached_policy : default_policy {
    static constexpr bool cache_hash = true;
};

// Seven hashes in all: keys with equal residues share their whole 64-bit hash.
struct mod7_hash {
    hash_t operator()(int k) const noexcept { return ukey(k) % 7; }
};

using model_t = std::set<int>;

inline int id_of(int k) { return k; }

// `s` holds exactly the model: size, one visit per key in iteration, lookups, canonical shape.
template <class S>
::testing::AssertionResult holds(const S& s, const model_t& model) {
    if (s.size() != model.size()) return ::testing::AssertionFailure() << "size " << s.size() << ", model " << model.size();
    if (s.empty() != model.empty()) return ::testing::AssertionFailure() << "empty() disagrees";
    model_t seen;
    for (const auto& e : s) {
        const int id = id_of(e.first);
        if (!model.count(id)) return ::testing::AssertionFailure() << "iteration yields " << id << ", not in the model";
        if (!seen.insert(id).second) return ::testing::AssertionFailure() << id << " visited twice";
    }
    if (seen.size() != model.size()) return ::testing::AssertionFailure() << "iteration visited " << seen.size();
    using K = typename S::key_type;
    for (int k : model) {
        if (!s.contains(K(k))) return ::testing::AssertionFailure() << "contains(" << k << ") false";
    }
    for (int k : {-1, -7, 1 << 20}) {
        if (s.contains(K(k))) return ::testing::AssertionFailure() << "contains(" << k << ") true";
    }
    return well_formed(s);
}

template <class S>
S build(const model_t& model) {
    typename S::transient_type t;
    for (int k : model) t.insert(typename S::key_type(k));
    return t.persistent();
}

model_t model_union(const model_t& a, const model_t& b) {
    model_t r;
    std::set_union(a.begin(), a.end(), b.begin(), b.end(), std::inserter(r, r.end()));
    return r;
}
model_t model_intersection(const model_t& a, const model_t& b) {
    model_t r;
    std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::inserter(r, r.end()));
    return r;
}
model_t model_difference(const model_t& a, const model_t& b) {
    model_t r;
    std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::inserter(r, r.end()));
    return r;
}
model_t model_symmetric_difference(const model_t& a, const model_t& b) {
    model_t r;
    std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::inserter(r, r.end()));
    return r;
}

model_t range_model(int from, int to, int step = 1) {
    model_t m;
    for (int k = from; k < to; k += step) m.insert(k);
    return m;
}

// ---- unit tests over many hash shapes ------------------------------------------------------------

template <class Hash, bool Cache>
struct config {
    using set = persistent_set<int, Hash, std::equal_to<int>, std::conditional_t<Cache, cached_policy, default_policy>>;
};

template <class C>
class SetShapes : public ::testing::Test {};

using shape_configs =
    ::testing::Types<config<mix_hash, false>, config<mix_hash, true>, config<std::hash<int>, false>,
                     config<const_hash, false>, config<const_hash, true>, config<mod7_hash, false>,
                     config<mod7_hash, true>, config<mod61_hash, false>, config<shift_hash<40>, true>,
                     config<shift_hash<59>, false>, config<top4_hash, true>, config<few_hash, false>,
                     config<clumpy_hash, true>>;

class shape_names {
public:
    template <class C>
    static std::string GetName(int i) {
        return std::to_string(i);
    }
};

TYPED_TEST_SUITE(SetShapes, shape_configs, shape_names);

TYPED_TEST(SetShapes, InsertContainsEraseDownToZeroAndBack) {
    using S = typename TypeParam::set;
    S s;
    model_t m;
    EXPECT_TRUE(holds(s, m));
    std::vector<S> versions{s};
    std::vector<model_t> models{m};
    for (int k = 0; k < 300; ++k) {
        S next = s.insert(k * 3);
        m.insert(k * 3);
        EXPECT_TRUE(next.insert(k * 3).identical(next)) << "inserting a present key returns this very set";
        s = next;
        if (k % 37 == 0) {
            versions.push_back(s);
            models.push_back(m);
        }
    }
    ASSERT_TRUE(holds(s, m));
    EXPECT_TRUE(s.erase(1).identical(s)) << "erasing an absent key returns this very set";
    for (int k = 0; k < 300; k += 2) {
        s = s.erase(k * 3);
        m.erase(k * 3);
    }
    ASSERT_TRUE(holds(s, m));
    for (int k = 0; k < 300; ++k) {
        s = s.erase(k * 3);
        m.erase(k * 3);
    }
    ASSERT_TRUE(holds(s, m));
    EXPECT_EQ(s.root(), nullptr);
    for (std::size_t i = 0; i < versions.size(); ++i) EXPECT_TRUE(holds(versions[i], models[i])) << "old version " << i;
}

TYPED_TEST(SetShapes, AlgebraMatchesTheModel) {
    using S = typename TypeParam::set;
    const model_t ma = range_model(0, 400, 2), mb = range_model(100, 700, 3);
    const S a = build<S>(ma), b = build<S>(mb);
    EXPECT_TRUE(holds(a.set_union(b), model_union(ma, mb)));
    EXPECT_TRUE(holds(a.set_intersection(b), model_intersection(ma, mb)));
    EXPECT_TRUE(holds(a.set_difference(b), model_difference(ma, mb)));
    EXPECT_TRUE(holds(b.set_difference(a), model_difference(mb, ma)));
    EXPECT_TRUE(holds(a.set_symmetric_difference(b), model_symmetric_difference(ma, mb)));
    EXPECT_FALSE(a.is_subset_of(b));
    EXPECT_TRUE(a.set_intersection(b).is_subset_of(b));
    EXPECT_TRUE(a.set_union(b).is_superset_of(a));
    EXPECT_FALSE(a.is_disjoint_from(b));
    EXPECT_TRUE(a.set_difference(b).is_disjoint_from(b));
    EXPECT_TRUE(a.set_union(b) == build<S>(model_union(ma, mb)));
    EXPECT_TRUE(same_canonical_order(a.set_union(b), build<S>(model_union(ma, mb))));
    // Identities with the empty set and with itself.
    const S e;
    EXPECT_TRUE(a.set_union(e).identical(a));
    EXPECT_TRUE(e.set_union(a).identical(a));
    EXPECT_TRUE(a.set_union(a).identical(a));
    EXPECT_TRUE(a.set_intersection(a).identical(a));
    EXPECT_TRUE(a.set_intersection(e).empty());
    EXPECT_TRUE(a.set_difference(a).empty());
    EXPECT_TRUE(a.set_difference(e).identical(a));
    EXPECT_TRUE(a.set_symmetric_difference(a).empty());
    EXPECT_TRUE(a.set_symmetric_difference(e).identical(a));
    EXPECT_TRUE(e.is_subset_of(a) && a.is_subset_of(a) && !a.is_subset_of(e));
    EXPECT_TRUE(a.is_disjoint_from(e) && !a.is_disjoint_from(a));
}

TEST(SetTest, KeyOnlyEntriesHaveNoValueSlot) {
    using pypersistent::no_value;
    using pypersistent::detail::map_entry;
    static_assert(sizeof(map_entry<void*, no_value, true>) == 2 * sizeof(void*), "a pointer key and its hash");
    static_assert(sizeof(map_entry<int, no_value, false>) == sizeof(int), "the key alone");
    const persistent_set<int> one{7};
    const auto& e = *one.begin();
    EXPECT_EQ(e.first, 7);
    EXPECT_TRUE(e.second == no_value{});
}

TEST(SetTest, ConstructionIterationAndEquality) {
    const persistent_set<int, mix_hash> s{1, 2, 3, 2, 1};
    EXPECT_TRUE(holds(s, {1, 2, 3}));
    const std::vector<int> keys{5, 6, 7, 5};
    const auto r = persistent_set<int, mix_hash>::from_range(keys.begin(), keys.end());
    EXPECT_TRUE(holds(r, {5, 6, 7}));
    EXPECT_TRUE(r == (persistent_set<int, mix_hash>{7, 6, 5}));
    EXPECT_TRUE(r != s);
    EXPECT_TRUE(same_exact_order(r, persistent_set<int, mix_hash>{7, 5, 6}));
    persistent_set<int, mix_hash> moved = std::move(const_cast<persistent_set<int, mix_hash>&>(r));
    EXPECT_TRUE(holds(moved, {5, 6, 7}));
    persistent_set<int, mix_hash> copy;
    copy = moved;
    EXPECT_TRUE(copy.identical(moved));
    auto* root = copy.release_root();
    EXPECT_TRUE(copy.empty());
    const auto adopted = persistent_set<int, mix_hash>::adopt(root, 3);
    EXPECT_TRUE(adopted.identical(moved));
}

TEST(SetTest, TransientEditsInPlaceAndFreezes) {
    using S = persistent_set<int, mix_hash>;
    const S base = build<S>(range_model(0, 1000));
    auto t = base.transient();
    model_t m = range_model(0, 1000);
    for (int k = 0; k < 2000; k += 3) {
        EXPECT_EQ(t.insert(k), m.insert(k).second);
    }
    for (int k = 0; k < 2000; k += 5) {
        EXPECT_EQ(t.erase(k), m.erase(k) == 1);
    }
    EXPECT_EQ(t.size(), m.size());
    for (int k = 0; k < 2000; ++k) EXPECT_EQ(t.contains(k), m.count(k) == 1) << k;
    const S frozen = t.persistent();
    EXPECT_TRUE(holds(frozen, m));
    EXPECT_TRUE(holds(base, range_model(0, 1000))) << "the base never changes";
    t.insert(5000);  // the transient stays usable; the frozen set does not see it
    EXPECT_TRUE(holds(frozen, m));
    EXPECT_TRUE(t.contains(5000) && t.contains_hashed(5000, mix_hash{}(5000)));
    transient_set<int, mix_hash, std::equal_to<int>, default_policy> moved(std::move(t));
    EXPECT_EQ(moved.size(), m.size() + 1);
    EXPECT_TRUE(t.empty());
}

// ---- differential ----------------------------------------------------------------------------------

template <class S>
class differential_run {
public:
    explicit differential_run(std::uint32_t seed, int key_range) : rng_(seed), range_(key_range) {}

    void run(int steps) {
        add(build<S>(random_model(range_ / 2)));
        for (int step = 0; step < steps && !::testing::Test::HasFatalFailure(); ++step) {
            const unsigned what = rng_() % 10;
            const std::size_t i = pick();
            if (what < 2) {
                const int k = key();
                const S s = versions_[i].insert(k);
                ASSERT_EQ(s.identical(versions_[i]), models_[i].count(k) == 1);
                model_t m = models_[i];
                m.insert(k);
                add(s, std::move(m));
            } else if (what < 4) {
                const int k = rng_() % 2 ? key() : any_key(models_[i]);
                const S s = versions_[i].erase(k);
                ASSERT_EQ(s.identical(versions_[i]), models_[i].count(k) == 0);
                model_t m = models_[i];
                m.erase(k);
                add(s, std::move(m));
            } else if (what == 4) {
                auto t = versions_[i].transient();
                model_t m = models_[i];
                for (int n = static_cast<int>(rng_() % 20); n > 0; --n) {
                    const int k = key();
                    if (rng_() % 2) {
                        ASSERT_EQ(t.insert(k), m.insert(k).second);
                    } else {
                        ASSERT_EQ(t.erase(k), m.erase(k) == 1);
                    }
                }
                add(t.persistent(), std::move(m));
            } else if (what == 5) {
                add(build<S>(random_model(static_cast<int>(rng_() % static_cast<unsigned>(range_)))));
            } else {
                algebra(i, pick());
            }
            if (versions_.size() > 24) {
                const std::size_t gone = pick();
                versions_[gone] = versions_.back();
                models_[gone] = models_.back();
                versions_.pop_back();
                models_.pop_back();
            }
        }
        for (std::size_t i = 0; i < versions_.size(); ++i) ASSERT_TRUE(holds(versions_[i], models_[i])) << "version " << i;
    }

private:
    void algebra(std::size_t i, std::size_t j) {
        // Copies: add() below grows the vectors.
        const S a = versions_[i];
        const S b = versions_[j];
        const model_t ma = models_[i];
        const model_t mb = models_[j];
        ASSERT_TRUE(holds(a, ma));
        ASSERT_TRUE(holds(b, mb));
        ASSERT_EQ(a == b, ma == mb);
        ASSERT_EQ(a.is_subset_of(b), std::includes(mb.begin(), mb.end(), ma.begin(), ma.end()));
        ASSERT_EQ(a.is_superset_of(b), std::includes(ma.begin(), ma.end(), mb.begin(), mb.end()));
        const model_t mi = model_intersection(ma, mb);
        ASSERT_EQ(a.is_disjoint_from(b), mi.empty());
        const S results[4] = {a.set_union(b), a.set_intersection(b), a.set_difference(b), a.set_symmetric_difference(b)};
        const model_t expected[4] = {model_union(ma, mb), mi, model_difference(ma, mb), model_symmetric_difference(ma, mb)};
        for (int op = 0; op < 4; ++op) {
            ASSERT_TRUE(holds(results[op], expected[op])) << "operation " << op;
            ASSERT_TRUE(same_canonical_order(results[op], build<S>(expected[op]))) << "operation " << op;
            // A result equal to an input is that input (the symmetric difference only when a side
            // is empty: otherwise it differs from both).
            if (op < 3 || ma.empty() || mb.empty()) {
                if (expected[op] == ma) {
                    ASSERT_TRUE(results[op].identical(a) || (results[op].identical(b) && ma == mb)) << "operation " << op;
                } else if (expected[op] == mb) {
                    ASSERT_TRUE(results[op].identical(b)) << "operation " << op;
                }
            }
            add(results[op], expected[op]);
        }
    }

    model_t random_model(int n) {
        model_t m;
        for (int k = 0; k < n; ++k) m.insert(key());
        return m;
    }
    int key() { return static_cast<int>(rng_() % static_cast<unsigned>(range_)); }
    int any_key(const model_t& m) {
        if (m.empty()) return key();
        auto it = m.begin();
        std::advance(it, static_cast<long>(rng_() % m.size()));
        return *it;
    }
    std::size_t pick() { return rng_() % versions_.size(); }
    void add(const S& s) { add(s, contents(s)); }
    void add(const S& s, model_t m) {
        versions_.push_back(s);
        models_.push_back(std::move(m));
    }
    static model_t contents(const S& s) {
        model_t m;
        for (const auto& e : s) m.insert(e.first);
        return m;
    }

    std::mt19937 rng_;
    int range_;
    std::vector<S> versions_;
    std::vector<model_t> models_;
};

template <class C>
class SetDifferential : public ::testing::Test {};
TYPED_TEST_SUITE(SetDifferential, shape_configs, shape_names);

TYPED_TEST(SetDifferential, RandomVersionsAgainstStdSet) {
    using S = typename TypeParam::set;
    for (std::uint32_t seed = 1; seed <= 3; ++seed) {
        differential_run<S>(seed, 200).run(300);
        differential_run<S>(seed + 100, 1000).run(40);
    }
}

// ---- structural claims ---------------------------------------------------------------------------

struct call_counts {
    static inline long hashes = 0;
    static inline long equalities = 0;
    static inline std::set<std::pair<int, int>>* pairs = nullptr;  // pairs compared, when recording
    static inline long repeated_pairs = 0;
};

template <class Base>
struct counting_hash {
    hash_t operator()(int k) const noexcept {
        ++call_counts::hashes;
        return Base{}(k);
    }
};
struct counting_equal {
    bool operator()(int a, int b) const {
        ++call_counts::equalities;
        if (call_counts::pairs && !call_counts::pairs->emplace(std::min(a, b), std::max(a, b)).second) {
            ++call_counts::repeated_pairs;
        }
        return a == b;
    }
};

template <class Base, class Policy>
using counted_set = persistent_set<int, counting_hash<Base>, counting_equal, Policy>;

// Runs `f` counting the equality and hash calls it makes, and pairs compared twice.
template <class F>
void counted(F&& f, long& equalities, long& hashes, long& repeats) {
    std::set<std::pair<int, int>> pairs;
    call_counts::pairs = &pairs;
    call_counts::equalities = call_counts::hashes = call_counts::repeated_pairs = 0;
    f();
    call_counts::pairs = nullptr;
    equalities = call_counts::equalities;
    hashes = call_counts::hashes;
    repeats = call_counts::repeated_pairs;
}

template <class Base, class Policy>
void check_pairs_and_hashes(std::uint32_t seed) {
    using S = counted_set<Base, Policy>;
    std::mt19937 rng(seed);
    std::vector<S> sets;
    S base = build<S>(range_model(0, 300, 2));
    sets.push_back(base);
    for (int i = 0; i < 6; ++i) {
        S s = sets[rng() % sets.size()];
        for (int n = 0; n < 30; ++n) s = rng() % 2 ? s.insert(static_cast<int>(rng() % 400)) : s.erase(static_cast<int>(rng() % 400));
        sets.push_back(s);
    }
    sets.push_back(build<S>(range_model(1, 400, 3)));
    for (const S& a : sets) {
        for (const S& b : sets) {
            const std::pair<const char*, std::function<void()>> ops[] = {
                {"union", [&] { (void)a.set_union(b); }},
                {"intersection", [&] { (void)a.set_intersection(b); }},
                {"difference", [&] { (void)a.set_difference(b); }},
                {"symmetric difference", [&] { (void)a.set_symmetric_difference(b); }},
                {"subset", [&] { (void)a.is_subset_of(b); }},
                {"disjoint", [&] { (void)a.is_disjoint_from(b); }},
                {"equality", [&] { (void)(a == b); }},
            };
            for (const auto& [name, op] : ops) {
                long eq = 0, h = 0, rep = 0;
                counted(op, eq, h, rep);
                EXPECT_EQ(rep, 0) << name << " compared a pair twice";
                if (Policy::cache_hash) {
                    EXPECT_EQ(h, 0) << name << " called Hash";
                }
            }
        }
    }
}

TEST(SetStructural, EachPairComparedOnceAndCachedHashesNeverRecomputed) {
    check_pairs_and_hashes<mix_hash, cached_policy>(1);
    check_pairs_and_hashes<mod7_hash, cached_policy>(2);
    check_pairs_and_hashes<const_hash, cached_policy>(3);
    check_pairs_and_hashes<few_hash, cached_policy>(4);
    check_pairs_and_hashes<mix_hash, default_policy>(5);
    check_pairs_and_hashes<mod7_hash, default_policy>(6);
}

template <class Policy>
void check_logarithmic(int n) {
    using S = counted_set<mix_hash, Policy>;
    const S s = build<S>(range_model(0, n));
    const S plus = s.insert(n + 5), minus = s.erase(n / 2);
    long eq = 0, h = 0, rep = 0;
    const long bound = 100;
    auto expect_small = [&](const char* what) {
        EXPECT_LT(eq, bound) << what;
        if (Policy::cache_hash) {
            EXPECT_EQ(h, 0) << what;
        }
    };
    counted([&] { EXPECT_TRUE(s.set_union(plus).identical(plus)); }, eq, h, rep);
    expect_small("s | s.insert(x)");
    counted([&] { EXPECT_TRUE(plus.set_union(s).identical(plus)); }, eq, h, rep);
    expect_small("s.insert(x) | s");
    counted([&] { EXPECT_TRUE(s.set_union(minus).identical(s)); }, eq, h, rep);
    expect_small("s | s.erase(y)");
    counted([&] { EXPECT_TRUE(s.set_intersection(plus).identical(s)); }, eq, h, rep);
    expect_small("s & s.insert(x)");
    counted([&] { EXPECT_TRUE(plus.set_intersection(s).identical(s)); }, eq, h, rep);
    expect_small("s.insert(x) & s");
    counted([&] { EXPECT_TRUE(s.set_intersection(minus).identical(minus)); }, eq, h, rep);
    expect_small("s & s.erase(y)");
    counted([&] { EXPECT_TRUE(s.set_difference(plus).empty()); }, eq, h, rep);
    expect_small("s - s.insert(x)");
    S r;
    counted([&] { r = plus.set_difference(s); }, eq, h, rep);
    expect_small("s.insert(x) - s");
    EXPECT_TRUE(holds(r, {n + 5}));
    counted([&] { r = s.set_difference(minus); }, eq, h, rep);
    expect_small("s - s.erase(y)");
    EXPECT_TRUE(holds(r, {n / 2}));
    counted([&] { r = s.set_symmetric_difference(plus); }, eq, h, rep);
    expect_small("s ^ s.insert(x)");
    EXPECT_TRUE(holds(r, {n + 5}));
    counted([&] { r = minus.set_symmetric_difference(plus); }, eq, h, rep);
    expect_small("s.erase(y) ^ s.insert(x)");
    EXPECT_TRUE(holds(r, {n / 2, n + 5}));
    counted([&] { EXPECT_TRUE(s.is_subset_of(plus)); }, eq, h, rep);
    expect_small("s <= s.insert(x)");
    counted([&] { EXPECT_FALSE(plus.is_subset_of(s)); }, eq, h, rep);
    expect_small("s.insert(x) <= s");
    counted([&] { EXPECT_TRUE(minus.is_subset_of(s)); }, eq, h, rep);
    expect_small("s.erase(y) <= s");
    counted([&] { EXPECT_FALSE(s.is_disjoint_from(plus)); }, eq, h, rep);
    expect_small("disjoint(s, s.insert(x))");
    counted([&] { EXPECT_TRUE(s.set_difference(minus).is_disjoint_from(minus)); }, eq, h, rep);
    const S plus_again = s.insert(n + 5);
    counted([&] { EXPECT_TRUE(plus_again == plus); }, eq, h, rep);
    expect_small("s.insert(x) == s.insert(x)");
}

TEST(SetStructural, SharedSubtreesAreNotVisited) {
    check_logarithmic<default_policy>(100000);
    check_logarithmic<cached_policy>(100000);
}

// ---- exceptions and reference counting -------------------------------------------------------------
//
// The injection points, the ledger policy and sweep() are test_util.hpp's (pptest::faults).

// A key whose ids the ledger counts (0 .. ledger::max_id - 1).
struct key_h {
    int id;
    explicit key_h(int i) noexcept : id(i) {}
    bool operator==(const key_h& o) const noexcept { return id == o.id; }  // the checker's, never throws
};
[[maybe_unused]] void PrintTo(const key_h& k, std::ostream* os) { *os << "key#" << k.id; }
inline int id_of(const key_h& k) { return k.id; }

template <class Base>
struct key_hash {
    hash_t operator()(const key_h& k) const noexcept { return Base{}(k.id); }
};
struct throwing_equal {
    bool operator()(const key_h& a, const key_h& b) const {
        inject::point(inject::user_call);
        return a.id == b.id;
    }
};

template <class Base, bool Cache>
using hset = persistent_set<key_h, key_hash<Base>, throwing_equal, ledger_policy<Cache>>;

template <class C>
class SetExceptions : public ::testing::Test {
protected:
    void SetUp() override { ledger::reset(); }
    void TearDown() override { expect_ledger_balanced(); }
};

template <class Base, bool Cache>
struct xconfig {
    using set = hset<Base, Cache>;
};
// Small inputs: a sweep costs the square of an operation's injection points.
using exception_configs = ::testing::Types<xconfig<mix_hash, false>, xconfig<mix_hash, true>, xconfig<mod7_hash, true>,
                                           xconfig<few_hash, false>, xconfig<shift_hash<59>, true>>;
TYPED_TEST_SUITE(SetExceptions, exception_configs, shape_names);

TYPED_TEST(SetExceptions, AlgebraThrowingAtEveryComparisonAndAllocation) {
    using S = typename TypeParam::set;
    const model_t mbase = range_model(0, 80, 2);
    const S base = build<S>(mbase);
    std::vector<std::pair<S, model_t>> inputs{{base, mbase}};
    {
        S v = base;
        model_t m = mbase;
        for (int k = 1; k < 60; k += 7) {
            v = v.insert(key_h(k)).erase(key_h(k * 3 + 1));
            m.insert(k);
            m.erase(k * 3 + 1);
        }
        inputs.emplace_back(v, m);
        inputs.emplace_back(base.insert(key_h(301)), model_union(mbase, {301}));
        inputs.emplace_back(base.erase(key_h(40)), model_difference(mbase, {40}));
        inputs.emplace_back(build<S>(range_model(30, 130, 3)), range_model(30, 130, 3));
    }
    long total_failures = 0;
    for (const auto& [a, ma] : inputs) {
        for (const auto& [b, mb] : inputs) {
            auto intact = [&, &a = a, &b = b, &ma = ma, &mb = mb] {
                ASSERT_TRUE(holds(a, ma));
                ASSERT_TRUE(holds(b, mb));
            };
            const model_t expected[4] = {model_union(ma, mb), model_intersection(ma, mb), model_difference(ma, mb),
                                         model_symmetric_difference(ma, mb)};
            for (int op = 0; op < 4; ++op) {
                std::optional<S> result;
                total_failures += sweep(
                    [&, &a = a, &b = b] {
                        switch (op) {
                            case 0: result.emplace(a.set_union(b)); break;
                            case 1: result.emplace(a.set_intersection(b)); break;
                            case 2: result.emplace(a.set_difference(b)); break;
                            default: result.emplace(a.set_symmetric_difference(b)); break;
                        }
                    },
                    intact);
                ASSERT_TRUE(result && holds(*result, expected[op])) << "operation " << op;
            }
            bool answer = false;
            total_failures += sweep([&, &a = a, &b = b] { answer = a.is_subset_of(b); }, intact);
            EXPECT_EQ(answer, std::includes(mb.begin(), mb.end(), ma.begin(), ma.end()));
            total_failures += sweep([&, &a = a, &b = b] { answer = a.is_disjoint_from(b); }, intact);
            EXPECT_EQ(answer, model_intersection(ma, mb).empty());
            total_failures += sweep([&, &a = a, &b = b] { answer = a == b; }, intact);
            EXPECT_EQ(answer, ma == mb);
        }
    }
    EXPECT_GT(total_failures, 100) << "the injection points were not reached";
}

TYPED_TEST(SetExceptions, InsertAndEraseThrowingAtEveryPoint) {
    using S = typename TypeParam::set;
    const model_t m = range_model(0, 300, 3);
    const S s = build<S>(m);
    long total_failures = 0;
    for (int k : {0, 1, 3, 150, 151, 297, 299, 400}) {
        std::optional<S> result;
        auto intact = [&] { ASSERT_TRUE(holds(s, m)); };
        total_failures += sweep([&] { result.emplace(s.insert(key_h(k))); }, intact);
        ASSERT_TRUE(result && holds(*result, model_union(m, {k})));
        total_failures += sweep([&] { result.emplace(s.erase(key_h(k))); }, intact);
        ASSERT_TRUE(result && holds(*result, model_difference(m, {k})));
        // Transients: on the persistent set's nodes (shared), and on nodes of their own (owned).
        for (bool owned : {false, true}) {
            auto make_owned = [&] {
                typename S::transient_type fresh;
                for (int x : m) fresh.insert(key_h(x));
                return fresh;
            };
            auto t = owned ? make_owned() : s.transient();
            auto t_intact = [&] {
                ASSERT_EQ(t.size(), m.size());
                for (int x : m) ASSERT_TRUE(t.contains(key_h(x))) << x;
                ASSERT_TRUE(holds(s, m));
            };
            bool changed = false;
            total_failures += sweep([&] { changed = t.insert(key_h(k)); }, t_intact);
            EXPECT_EQ(changed, m.count(k) == 0);
            if (changed) {
                ASSERT_TRUE(t.erase(key_h(k)));
            }
            total_failures += sweep([&] { changed = t.erase(key_h(k)); }, t_intact);
            EXPECT_EQ(changed, m.count(k) == 1);
            EXPECT_TRUE(holds(t.persistent(), model_difference(m, {k})));
        }
    }
    EXPECT_GT(total_failures, 10);
}

// ---- threads ---------------------------------------------------------------------------------------

// 16 threads share sets and derive versions from them and from each other's versions (passed on
// a mutex-guarded board): inserts, erases, the algebra, iteration. Node reference counts are the
// only shared mutable state; ThreadSanitizer checks them (scripts/run-cpp-sanitizers.sh).
TEST(SetThreads, SixteenThreadsShareAndDeriveVersions) {
    using S = persistent_set<int, mix_hash>;
    const int n = 2000;
    const S all = build<S>(range_model(0, n));
    const S evens = build<S>(range_model(0, n, 2));
    const S low = all.set_difference(build<S>(range_model(n / 2, n)));
    std::mutex board_mutex;
    std::vector<std::pair<S, int>> board;  // a version and the extra key it holds
    std::atomic<int> failures{0};
    auto check = [&](bool ok) {
        if (!ok) failures.fetch_add(1, std::memory_order_relaxed);
    };
    std::vector<std::thread> threads;
    for (int id = 0; id < 16; ++id) {
        threads.emplace_back([&, id] {
            std::mt19937 rng(static_cast<std::uint32_t>(id));
            for (int round = 0; round < 40; ++round) {
                const int extra = n + id * 1000 + round;
                const int gone = static_cast<int>(rng() % static_cast<unsigned>(n));
                const S mine = all.insert(extra).erase(gone);
                check(mine.size() == static_cast<std::size_t>(n));
                check(mine.set_union(all).size() == static_cast<std::size_t>(n + 1));
                check(all.set_union(mine).size() == static_cast<std::size_t>(n + 1));
                check(mine.set_intersection(evens).size() == static_cast<std::size_t>(n / 2 - (gone % 2 == 0 ? 1 : 0)));
                check(mine.set_difference(all).size() == 1);
                check(all.set_symmetric_difference(mine).size() == 2);
                check(low.is_subset_of(all) && !mine.is_subset_of(all) && !mine.is_disjoint_from(evens));
                const S odd = all.set_difference(evens);
                check(odd.is_disjoint_from(evens) && odd.set_union(evens) == all);
                std::size_t visited = 0;
                for (const auto& e : mine) visited += e.first >= 0 ? 1 : 0;
                check(visited == mine.size());
                std::pair<S, int> theirs;
                {
                    std::lock_guard<std::mutex> lock(board_mutex);
                    board.emplace_back(mine, extra);
                    theirs = board[rng() % board.size()];
                    if (board.size() > 32) board.erase(board.begin());
                }
                const S both = mine.set_union(theirs.first);
                check(both.contains(extra) && both.contains(theirs.second));
                check(theirs.first.set_intersection(mine).is_subset_of(mine));
                auto t = theirs.first.transient();
                t.insert(-1 - id);
                t.erase(theirs.second);
                const S edited = t.persistent();
                check(edited.contains(-1 - id) && !edited.contains(theirs.second) && theirs.first.contains(theirs.second));
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(all.size(), static_cast<std::size_t>(n));
    EXPECT_TRUE(holds(evens, range_model(0, n, 2)));
}

}  // namespace
