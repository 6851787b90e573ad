// Unit tests of persistent_vector and transient_vector:
//   - shapes around the 32 / 32*32 / 32^3 boundaries (tail full, root overflow, height growth,
//     and shrinking again on pop_back), checked node by node;
//   - every operation against std::vector, and a randomized differential run that keeps many
//     versions with their std::vector models and checks that none of them ever changes;
//   - iteration, equality (and that shared subtrees are skipped), slices, concatenation;
//   - transients: in-place edits, O(1) freezing, snapshots and bases that never change;
//   - exception injection at every allocation, value copy and comparison, with a counting
//     policy: the strong guarantee everywhere, and nodes, bytes and retain/release balanced;
//   - 16 threads sharing one vector and deriving versions from it and from each other (short,
//     for the ThreadSanitizer build).

#include "test_util.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using pypersistent::default_policy;
using pypersistent::persistent_vector;
using pypersistent::transient_vector;

// ---- policies ------------------------------------------------------------------------------

// Counts live nodes and bytes, and allocations, for one thread.
struct tracking_policy : default_policy {
    static inline long live_nodes = 0;
    static inline long live_bytes = 0;
    static inline long allocations = 0;
    static void* allocate(std::size_t bytes) {
        ++allocations;
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

using ivec = persistent_vector<int, tracking_policy>;
using itransient = transient_vector<int, tracking_policy>;
using model_t = std::vector<int>;

class VectorTest : public ::testing::Test {
protected:
    void SetUp() override {
        tracking_policy::live_nodes = 0;
        tracking_policy::live_bytes = 0;
    }
    void TearDown() override {
        EXPECT_EQ(tracking_policy::live_nodes, 0) << "nodes leaked";
        EXPECT_EQ(tracking_policy::live_bytes, 0) << "bytes leaked";
    }
};

// ---- structure ------------------------------------------------------------------------------

// The height a trie of `tree_size` elements must have: the lowest whose root can hold them.
inline unsigned expected_shift(std::size_t tree_size) {
    unsigned shift = 0;
    while ((std::size_t(1) << (shift + 5)) < tree_size) shift += 5;
    return shift;
}

// Checks a vector's nodes directly: the tail holds 1..32 elements, the trie holds the rest in
// full leaves, every non-last child is full, the root is as low as possible (at least two
// children), counts fit capacities, reference counts are positive.
template <class Trie>
class vector_shape_checker {
    using node = typename Trie::node;

public:
    ::testing::AssertionResult check(const typename Trie::parts& p) {
        if (p.size == 0) {
            if (p.root || p.tail || p.shift) return ::testing::AssertionFailure() << "empty vector with nodes";
            return ::testing::AssertionSuccess();
        }
        if (!p.tail) return ::testing::AssertionFailure() << "no tail, size " << p.size;
        const std::size_t tree = Trie::tail_offset(p.size);
        if (p.tail->count != p.size - tree) {
            return ::testing::AssertionFailure() << "tail holds " << unsigned(p.tail->count) << ", expected " << p.size - tree;
        }
        if (p.tail->count > p.tail->capacity || p.tail->refs.load() == 0) {
            return ::testing::AssertionFailure() << "bad tail header";
        }
        if (tree == 0) {
            if (p.root || p.shift) return ::testing::AssertionFailure() << "a root with everything in the tail";
            return ::testing::AssertionSuccess();
        }
        if (!p.root) return ::testing::AssertionFailure() << "no root for a trie of " << tree;
        if (p.shift != expected_shift(tree)) {
            return ::testing::AssertionFailure() << "shift " << p.shift << " for a trie of " << tree << " elements, expected "
                                                 << expected_shift(tree);
        }
        if (p.shift > 0 && p.root->count < 2) return ::testing::AssertionFailure() << "root with a single child";
        std::size_t elements = 0;
        if (!walk(p.root, p.shift, elements)) return ::testing::AssertionFailure() << error_;
        if (elements != tree) return ::testing::AssertionFailure() << "trie holds " << elements << ", expected " << tree;
        return ::testing::AssertionSuccess();
    }

private:
    bool fail(const std::string& what, unsigned shift) {
        error_ = what + " (at shift " + std::to_string(shift) + ")";
        return false;
    }
    bool walk(const node* n, unsigned shift, std::size_t& elements) {
        if (!n) return fail("null node", shift);
        if (n->refs.load() == 0) return fail("zero reference count", shift);
        if (n->count == 0 || n->count > n->capacity || n->capacity > 32) return fail("bad count or capacity", shift);
        if (shift == 0) {
            if (n->count != 32) return fail("trie leaf that is not full", shift);
            elements += 32;
            return true;
        }
        const auto* cs = Trie::children(n);
        for (unsigned i = 0; i < n->count; ++i) {
            const std::size_t before = elements;
            if (!walk(cs[i], shift - 5, elements)) return false;
            if (i + 1 < n->count && elements - before != std::size_t(1) << shift) {
                return fail("a child before the last that is not full", shift);
            }
        }
        return true;
    }
    std::string error_;
};

template <class Vec>
::testing::AssertionResult well_formed_vector(const Vec& v) {
    return vector_shape_checker<typename Vec::trie>().check(v.parts());
}

// `v` (persistent or transient) holds exactly `model`: size, indexing, at(), front/back,
// iteration (each element once, in order), shape.
template <class Vec, class T>
::testing::AssertionResult matches(const Vec& v, const std::vector<T>& model) {
    if (v.size() != model.size()) return ::testing::AssertionFailure() << "size " << v.size() << ", model " << model.size();
    if (v.empty() != model.empty()) return ::testing::AssertionFailure() << "empty() disagrees";
    for (std::size_t i = 0; i < model.size(); ++i) {
        if (!(v[i] == model[i])) return ::testing::AssertionFailure() << "[" << i << "] differs from the model";
    }
    std::size_t i = 0;
    for (auto it = v.begin(); it != v.end(); ++it, ++i) {
        if (i >= model.size()) return ::testing::AssertionFailure() << "iteration longer than the model";
        if (!(*it == model[i])) return ::testing::AssertionFailure() << "iteration differs at " << i;
    }
    if (i != model.size()) return ::testing::AssertionFailure() << "iteration visited " << i << " of " << model.size();
    if (!model.empty()) {
        if (!(v.front() == model.front()) || !(v.back() == model.back())) return ::testing::AssertionFailure() << "front/back";
        if (!(v.at(model.size() - 1) == model.back())) return ::testing::AssertionFailure() << "at(size - 1)";
    }
    try {
        (void)v.at(model.size());
        return ::testing::AssertionFailure() << "at(size) did not throw";
    } catch (const std::out_of_range&) {
    }
    return well_formed_vector(v);
}

model_t iota_model(std::size_t n, int start = 0) {
    model_t m(n);
    for (std::size_t i = 0; i < n; ++i) m[i] = start + static_cast<int>(i);
    return m;
}

ivec build(const model_t& m) { return ivec(m.begin(), m.end()); }

// Sizes next to every boundary up to the third level: the tail filling (32), the trie's first
// leaf (64), the root growing a level (32 + 32^2 = 1056, 32 + 32^3 = 32800).
const std::vector<std::size_t>& boundary_sizes() {
    static const std::vector<std::size_t> sizes{0,    1,    2,    31,   32,   33,    63,    64,    65,   95,
                                                96,   97,   1023, 1024, 1025, 1055,  1056,  1057,  1088, 1089,
                                                2080, 2081, 32767, 32768, 32769, 32799, 32800, 32801, 32833};
    return sizes;
}
bool is_boundary(std::size_t n) {
    const auto& s = boundary_sizes();
    return std::find(s.begin(), s.end(), n) != s.end();
}

// ---- basics -----------------------------------------------------------------------------------

TEST_F(VectorTest, Empty) {
    const ivec v;
    EXPECT_TRUE(v.empty());
    EXPECT_EQ(v.size(), 0u);
    EXPECT_TRUE(v.begin() == v.end());
    EXPECT_THROW((void)v.at(0), std::out_of_range);
    EXPECT_THROW((void)v.pop_back(), std::out_of_range);
    EXPECT_THROW((void)v.set(0, 1), std::out_of_range);
    EXPECT_TRUE(v.take(3).empty());
    EXPECT_TRUE(v.drop(3).empty());
    EXPECT_TRUE(v.slice(1, 4).empty());
    EXPECT_TRUE((v + v).empty());
    EXPECT_TRUE(v == ivec());
    EXPECT_TRUE(v.identical(ivec()));
    EXPECT_EQ(v.root(), nullptr);
    EXPECT_EQ(v.tail(), nullptr);
    EXPECT_EQ(tracking_policy::live_nodes, 0);
    itransient t;
    EXPECT_TRUE(t.empty());
    EXPECT_THROW(t.pop_back(), std::out_of_range);
    EXPECT_THROW(t.set(0, 1), std::out_of_range);
    EXPECT_TRUE(t.persistent().empty());
}

TEST_F(VectorTest, ConstructionAndAccess) {
    const ivec a{1, 2, 3};
    EXPECT_TRUE(matches(a, model_t{1, 2, 3}));
    const model_t big = iota_model(5000, 7);
    const ivec b(big.begin(), big.end());
    EXPECT_TRUE(matches(b, big));
    EXPECT_TRUE(matches(ivec::from_range(big.begin(), big.end()), big));
    // a single-pass input range
    std::istringstream in("4 5 6 7");
    const ivec c{std::istream_iterator<int>(in), std::istream_iterator<int>()};
    EXPECT_TRUE(matches(c, model_t{4, 5, 6, 7}));
    EXPECT_EQ(b.at(4999), 5006);
    EXPECT_THROW((void)b.at(5000), std::out_of_range);
    EXPECT_THROW((void)b.set(5000, 1), std::out_of_range);
}

TEST_F(VectorTest, CopyMoveAssign) {
    const model_t m = iota_model(100);
    ivec a = build(m);
    ivec b = a;
    EXPECT_TRUE(b.identical(a));
    ivec c = std::move(b);
    EXPECT_TRUE(b.empty());
    EXPECT_TRUE(c.identical(a));
    b = c;
    c = ivec{1};
    EXPECT_TRUE(matches(b, m));
    EXPECT_TRUE(matches(c, model_t{1}));
    b = std::move(c);
    EXPECT_TRUE(matches(b, model_t{1}));
    a.swap(b);
    EXPECT_TRUE(matches(a, model_t{1}));
    EXPECT_TRUE(matches(b, m));
    const ivec& self = b;
    b = self;  // self-assignment
    EXPECT_TRUE(matches(b, m));
}

// ---- boundaries ---------------------------------------------------------------------------------

constexpr std::size_t boundary_max = 32833;

// Every step checks the shape (cheap: it only visits the right spine's nodes... and all nodes, so
// only at boundaries) and a few elements; boundary sizes get a full check.
TEST_F(VectorTest, PersistentPushAndPopAcrossBoundaries) {
    std::vector<std::pair<ivec, model_t>> kept;
    ivec v;
    model_t m;
    for (std::size_t n = 0; n < boundary_max; ++n) {
        v = v.push_back(static_cast<int>(n) * 3);
        m.push_back(static_cast<int>(n) * 3);
        ASSERT_EQ(v.size(), m.size());
        ASSERT_EQ(v[n], m[n]);
        ASSERT_EQ(v[n / 2], m[n / 2]);
        ASSERT_EQ(v.shift(), expected_shift(ivec::trie::tail_offset(v.size())));
        if (is_boundary(v.size())) {
            ASSERT_TRUE(matches(v, m)) << "size " << v.size();
            kept.emplace_back(v, m);
        }
    }
    while (!v.empty()) {
        v = v.pop_back();
        m.pop_back();
        ASSERT_EQ(v.size(), m.size());
        ASSERT_EQ(v.shift(), expected_shift(ivec::trie::tail_offset(v.size())));
        if (!m.empty()) { ASSERT_EQ(v.back(), m.back()); }
        if (is_boundary(v.size())) {
            ASSERT_TRUE(matches(v, m)) << "size " << v.size();
            kept.emplace_back(v, m);
        }
    }
    for (const auto& k : kept) ASSERT_TRUE(matches(k.first, k.second)) << "kept version of size " << k.second.size();
}

TEST_F(VectorTest, TransientPushAndPopAcrossBoundaries) {
    std::vector<std::pair<ivec, model_t>> snapshots;
    itransient t;
    model_t m;
    for (std::size_t n = 0; n < boundary_max; ++n) {
        t.push_back(static_cast<int>(n) + 11);
        m.push_back(static_cast<int>(n) + 11);
        ASSERT_EQ(t.size(), m.size());
        ASSERT_EQ(t[n], m[n]);
        ASSERT_EQ(t.shift(), expected_shift(ivec::trie::tail_offset(t.size())));
        if (is_boundary(t.size())) {
            ASSERT_TRUE(matches(t, m)) << "size " << t.size();
            snapshots.emplace_back(t.persistent(), m);  // and the transient goes on over it
        }
    }
    while (!t.empty()) {
        t.pop_back();
        m.pop_back();
        ASSERT_EQ(t.size(), m.size());
        ASSERT_EQ(t.shift(), expected_shift(ivec::trie::tail_offset(t.size())));
        if (!m.empty()) { ASSERT_EQ(t.back(), m.back()); }
        if (is_boundary(t.size())) {
            ASSERT_TRUE(matches(t, m)) << "size " << t.size();
            snapshots.emplace_back(t.persistent(), m);
        }
    }
    for (const auto& s : snapshots) ASSERT_TRUE(matches(s.first, s.second)) << "snapshot of size " << s.second.size();
    // Popping an owned transient without snapshots, through every boundary.
    itransient u;
    for (std::size_t n = 0; n < 2100; ++n) u.push_back(static_cast<int>(n));
    m = iota_model(2100);
    while (!u.empty()) {
        u.pop_back();
        m.pop_back();
        if (is_boundary(u.size()) || u.size() % 97 == 0) { ASSERT_TRUE(matches(u, m)); }
    }
}

TEST_F(VectorTest, SetAtEveryLevel) {
    for (std::size_t n : boundary_sizes()) {
        if (n == 0) continue;
        const model_t m = iota_model(n);
        const ivec v = build(m);
        for (std::size_t i : {std::size_t(0), n / 3, n / 2, n - 1, ivec::trie::tail_offset(n), ivec::trie::tail_offset(n) - 1}) {
            if (i >= n) continue;
            model_t m2 = m;
            m2[i] = -1;
            const ivec w = v.set(i, -1);
            ASSERT_TRUE(matches(w, m2)) << "n " << n << " i " << i;
            ASSERT_TRUE(v.set(i, m[i]).identical(v)) << "setting the same value returns the same vector";
            itransient shared = v.transient();
            shared.set(i, -1);
            ASSERT_TRUE(matches(shared, m2));
            shared.set(i, -2);  // now on nodes the transient owns
            m2[i] = -2;
            ASSERT_TRUE(matches(shared, m2));
        }
        ASSERT_TRUE(matches(v, m)) << "n " << n;
    }
}

// ---- iteration -------------------------------------------------------------------------------------

TEST_F(VectorTest, Iteration) {
    static_assert(std::is_same<std::iterator_traits<ivec::iterator>::iterator_category, std::forward_iterator_tag>::value, "");
    const model_t m = iota_model(2500, 1);
    const ivec v = build(m);
    EXPECT_EQ(static_cast<std::size_t>(std::distance(v.begin(), v.end())), m.size());
    EXPECT_TRUE(std::equal(v.begin(), v.end(), m.begin(), m.end()));
    for (std::size_t i = 0; i <= m.size(); i += (i < 70 || i > 2400 ? 1 : 13)) {
        auto it = v.iterator_at(i);
        ASSERT_TRUE(std::equal(it, v.end(), m.begin() + static_cast<std::ptrdiff_t>(i), m.end())) << "from " << i;
    }
    EXPECT_TRUE(v.iterator_at(m.size()) == v.end());
    EXPECT_TRUE(v.iterator_at(m.size() + 5) == v.end());
    auto it = v.begin();
    auto old = it++;
    EXPECT_EQ(*old, 1);
    EXPECT_EQ(*it, 2);
    EXPECT_EQ(*++it, 3);
    EXPECT_TRUE(v.iterator_at(40) == v.iterator_at(40));
    EXPECT_TRUE(v.iterator_at(40) != v.iterator_at(41));
    // Iterators of a copy walk the same nodes.
    const ivec copy = v;
    EXPECT_TRUE(copy.iterator_at(33) == v.iterator_at(33));
    // a transient's iterators
    itransient t = v.transient();
    t.push_back(0);
    model_t m2 = m;
    m2.push_back(0);
    EXPECT_TRUE(std::equal(t.begin(), t.end(), m2.begin(), m2.end()));
    struct pair_value {
        int a;
        int b;
        bool operator==(const pair_value& o) const { return a == o.a && b == o.b; }
    };
    const persistent_vector<pair_value> pv{{1, 2}, {3, 4}};
    EXPECT_EQ(pv.begin()->b, 2);
}

// ---- equality -------------------------------------------------------------------------------------

struct counting_equal {
    static inline long calls = 0;
    bool operator()(int a, int b) const {
        ++calls;
        return a == b;
    }
};

TEST_F(VectorTest, Equality) {
    for (std::size_t n : boundary_sizes()) {
        if (n > 3000) continue;
        const model_t m = iota_model(n);
        const ivec a = build(m);
        const ivec b = build(m);  // no shared nodes
        EXPECT_TRUE(a == b) << n;
        EXPECT_FALSE(a != b) << n;
        EXPECT_FALSE(a.identical(b) && n > 0);
        EXPECT_FALSE(a == a.push_back(0));
        if (n == 0) continue;
        EXPECT_FALSE(a == a.pop_back());
        for (std::size_t i : {std::size_t(0), n / 2, n - 1}) {
            EXPECT_FALSE(a == b.set(i, -5)) << n << " " << i;
            EXPECT_TRUE(a == b.set(i, -5).set(i, m[i])) << n << " " << i;
        }
    }
}

TEST_F(VectorTest, EqualitySkipsSharedSubtrees) {
    const ivec a = build(iota_model(100000));
    counting_equal::calls = 0;
    EXPECT_TRUE(a.equal(a, counting_equal()));
    EXPECT_EQ(counting_equal::calls, 0);
    // Only the leaf on the path to element 70000 and nothing else differs by pointer.
    const ivec b = a.set(70000, 1).set(70000, 70000);
    counting_equal::calls = 0;
    EXPECT_TRUE(a.equal(b, counting_equal()));
    EXPECT_EQ(counting_equal::calls, 32);
    // Same trie, a rebuilt tail.
    const ivec c = a.pop_back().push_back(a.back());
    EXPECT_EQ(c.root(), a.root());
    counting_equal::calls = 0;
    EXPECT_TRUE(a.equal(c, counting_equal()));
    EXPECT_EQ(counting_equal::calls, static_cast<long>(ivec::trie::tail_count(100000)));
    // A rebuilt right spine over the same leaves, the tail among them.
    const ivec e = a.push_back(5).pop_back();
    EXPECT_NE(e.root(), a.root());
    EXPECT_EQ(e.tail(), a.tail());
    counting_equal::calls = 0;
    EXPECT_TRUE(a.equal(e, counting_equal()));
    EXPECT_EQ(counting_equal::calls, 0);
    // The first difference ends the comparison.
    const ivec d = a.set(3, -1);
    counting_equal::calls = 0;
    EXPECT_FALSE(a.equal(d, counting_equal()));
    EXPECT_EQ(counting_equal::calls, 4);
    // Different sizes: no comparison at all.
    counting_equal::calls = 0;
    EXPECT_FALSE(a.equal(a.pop_back(), counting_equal()));
    EXPECT_EQ(counting_equal::calls, 0);
}

// ---- slices and concatenation ------------------------------------------------------------------

TEST_F(VectorTest, Take) {
    const std::size_t n = 2200;
    const model_t m = iota_model(n);
    const ivec v = build(m);
    for (std::size_t k = 0; k <= n + 2; ++k) {
        const ivec t = v.take(k);
        ASSERT_TRUE(matches(t, model_t(m.begin(), m.begin() + static_cast<std::ptrdiff_t>(std::min(k, n))))) << k;
    }
    EXPECT_TRUE(v.take(n).identical(v));
    EXPECT_TRUE(matches(v, m));
    // O(log n): a prefix of a 3-level vector allocates a new tail and the trimmed right spine.
    const ivec big = build(iota_model(40000));
    for (std::size_t k : {std::size_t(1), std::size_t(33), std::size_t(1057), std::size_t(20000), std::size_t(33000), std::size_t(39990)}) {
        const long before = tracking_policy::allocations;
        const ivec t = big.take(k);
        EXPECT_LE(tracking_policy::allocations - before, 4) << k;
        EXPECT_TRUE(matches(t, iota_model(k))) << k;
    }
}

TEST_F(VectorTest, DropAndSlice) {
    const std::size_t n = 1300;
    const model_t m = iota_model(n, 3);
    const ivec v = build(m);
    std::mt19937_64 rng(5);
    for (int round = 0; round < 300; ++round) {
        std::size_t a = rng() % (n + 5), b = rng() % (n + 5);
        if (round % 7 == 0) a = 0;
        const ivec s = v.slice(a, b);
        const std::size_t hi = std::min(b, n), lo = std::min(a, hi);
        ASSERT_TRUE(matches(s, model_t(m.begin() + static_cast<std::ptrdiff_t>(lo), m.begin() + static_cast<std::ptrdiff_t>(hi))))
            << a << ".." << b;
        const ivec d = v.drop(a);
        ASSERT_TRUE(matches(d, model_t(m.begin() + static_cast<std::ptrdiff_t>(std::min(a, n)), m.end()))) << a;
    }
    EXPECT_TRUE(v.drop(0).identical(v));
    EXPECT_TRUE(matches(v, m));
}

TEST_F(VectorTest, Concat) {
    const std::vector<std::size_t> sizes{0, 1, 31, 32, 33, 64, 1000, 1056, 1100};
    for (std::size_t x : sizes) {
        for (std::size_t y : sizes) {
            const model_t mx = iota_model(x), my = iota_model(y, 100000);
            const ivec a = build(mx), b = build(my);
            model_t both = mx;
            both.insert(both.end(), my.begin(), my.end());
            const ivec c = a + b;
            ASSERT_TRUE(matches(c, both)) << x << " + " << y;
            ASSERT_TRUE(matches(a, mx));
            ASSERT_TRUE(matches(b, my));
            if (y == 0) { EXPECT_TRUE(c.identical(a)); }
            if (x == 0) { EXPECT_TRUE(c.identical(b)); }
        }
    }
}

// ---- transients -------------------------------------------------------------------------------------

TEST_F(VectorTest, TransientFreezesInConstantTime) {
    itransient t;
    for (int i = 0; i < 5000; ++i) t.push_back(i);
    const long before = tracking_policy::allocations;
    const long live = tracking_policy::live_nodes;
    const ivec p = t.persistent();
    EXPECT_EQ(tracking_policy::allocations, before);
    EXPECT_EQ(tracking_policy::live_nodes, live);
    EXPECT_EQ(p.root(), t.root());
    EXPECT_EQ(p.tail(), t.tail());
    // The next edit copies only the path it touches.
    t.set(10, -1);
    EXPECT_LE(tracking_policy::allocations - before, 3);
    EXPECT_TRUE(matches(p, iota_model(5000)));
}

TEST_F(VectorTest, TransientEditsOwnedNodesInPlace) {
    itransient t;
    for (int i = 0; i < 3000; ++i) t.push_back(i);
    const long before = tracking_policy::allocations;
    for (int i = 0; i < 3000; i += 7) t.set(static_cast<std::size_t>(i), -i);
    for (int i = 0; i < 20; ++i) t.pop_back();
    EXPECT_EQ(tracking_policy::allocations, before) << "edits of owned nodes must not allocate";
    // One allocation per 32 pushes once the tail is owned (plus the trie nodes it needs).
    const long before_push = tracking_policy::allocations;
    for (int i = 0; i < 3200; ++i) t.push_back(i);
    EXPECT_LE(tracking_policy::allocations - before_push, 3200 / 32 + 10);
}

TEST_F(VectorTest, BasesAndSnapshotsNeverChange) {
    std::mt19937_64 rng(11);
    const model_t base_model = iota_model(3000);
    const ivec base = build(base_model);
    itransient t = base.transient();
    model_t m = base_model;
    std::vector<std::pair<ivec, model_t>> snapshots;
    for (int step = 0; step < 6000; ++step) {
        const unsigned op = static_cast<unsigned>(rng() % 10);
        if (op < 4) {
            t.push_back(step);
            m.push_back(step);
        } else if (op < 7 && !m.empty()) {
            const std::size_t i = rng() % m.size();
            t.set(i, -step);
            m[i] = -step;
        } else if (op < 9 && !m.empty()) {
            t.pop_back();
            m.pop_back();
        } else {
            snapshots.emplace_back(t.persistent(), m);
        }
        if (step % 500 == 0) { ASSERT_TRUE(matches(t, m)); }
    }
    ASSERT_TRUE(matches(t, m));
    ASSERT_TRUE(matches(base, base_model));
    for (const auto& s : snapshots) ASSERT_TRUE(matches(s.first, s.second));
}

TEST_F(VectorTest, TransientMoves) {
    itransient a;
    for (int i = 0; i < 100; ++i) a.push_back(i);
    itransient b(std::move(a));
    EXPECT_TRUE(a.empty());
    a.push_back(1);  // the moved-from transient stays usable
    EXPECT_TRUE(matches(a, model_t{1}));
    EXPECT_TRUE(matches(b, iota_model(100)));
    a = std::move(b);
    EXPECT_TRUE(matches(a, iota_model(100)));
    EXPECT_TRUE(b.empty());
    b.push_back(2);
    a = std::move(b);
    EXPECT_TRUE(matches(a, model_t{2}));
    // A persistent snapshot of a moved transient is independent of later edits.
    const ivec p = a.persistent();
    itransient c(std::move(a));
    c.set(0, 9);
    EXPECT_TRUE(matches(p, model_t{2}));
    EXPECT_TRUE(matches(c, model_t{9}));
}

TEST_F(VectorTest, LowLevelParts) {
    const model_t m = iota_model(1000);
    ivec v = build(m);
    const auto* root = v.root();
    const auto* tail = v.tail();
    EXPECT_EQ(v.shift(), 5u);
    ivec::parts_type raw = v.release_parts();
    EXPECT_TRUE(v.empty());
    EXPECT_EQ(raw.root, root);
    EXPECT_EQ(raw.tail, tail);
    const ivec back = ivec::adopt(raw);
    EXPECT_TRUE(matches(back, m));
}

TEST_F(VectorTest, NonTrivialValues) {
    using svec = persistent_vector<std::string>;
    std::vector<std::string> m;
    svec v;
    for (int i = 0; i < 1200; ++i) {
        m.push_back("value number " + std::to_string(i) + std::string(static_cast<std::size_t>(i % 40), 'x'));
        v = v.push_back(m.back());
    }
    EXPECT_TRUE(matches(v, m));
    const svec w = v.set(700, "changed").pop_back().take(900);
    std::vector<std::string> m2(m.begin(), m.begin() + 900);
    m2[700] = "changed";
    EXPECT_TRUE(matches(w, m2));
    EXPECT_TRUE(matches(v, m));
    auto t = w.transient();
    for (int i = 0; i < 100; ++i) {
        t.push_back(std::to_string(i));
        m2.push_back(std::to_string(i));
    }
    t.set(0, "first");
    m2[0] = "first";
    t.pop_back();
    m2.pop_back();
    EXPECT_TRUE(matches(t, m2));
    EXPECT_TRUE(matches(w + v.drop(1100), [&] {
        std::vector<std::string> r(m2.begin(), m2.begin() + 900);
        r[0] = m[0];
        r.insert(r.end(), m.begin() + 1100, m.end());
        return r;
    }()));
}

// ---- randomized differential test against std::vector ------------------------------------------

class differential_run {
public:
    explicit differential_run(std::uint64_t seed) : rng_(seed) { versions_.emplace_back(ivec(), model_t()); }

    void run(int steps) {
        for (int i = 0; i < steps; ++i) {
            for (const auto& v : versions_) largest = std::max(largest, v.second.size());
            step();
            if (::testing::Test::HasFatalFailure() || ::testing::Test::HasFailure()) return;
            if (i % 150 == 0) verify_all();
        }
        verify_all();
    }

private:
    std::size_t pick() { return static_cast<std::size_t>(rng_() % versions_.size()); }
    int value() { return static_cast<int>(rng_() % 100000); }
    std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rng_() % n); }

    void verify_all() {
        for (const auto& v : versions_) ASSERT_TRUE(matches(v.first, v.second)) << "a kept version changed";
    }

    void add(ivec v, model_t m) {
        ASSERT_EQ(v.size(), m.size());
        ASSERT_TRUE(well_formed_vector(v));
        // Spot checks here; all versions are compared in full every 150 steps.
        for (int k = 0; k < 8 && !m.empty(); ++k) {
            const std::size_t i = below(m.size());
            ASSERT_EQ(v[i], m[i]) << "index " << i;
        }
        if (v.size() > 40000) {  // keep sizes in range
            v = v.take(below(4000));
            m.resize(v.size());
        }
        if (versions_.size() < 40) {
            versions_.emplace_back(std::move(v), std::move(m));
        } else {
            versions_[pick()] = {std::move(v), std::move(m)};
        }
    }

    void step() {
        const std::size_t i = pick();
        const ivec& v = versions_[i].first;
        const model_t& m = versions_[i].second;
        const unsigned op = static_cast<unsigned>(rng_() % 16);
        switch (op) {
            case 0:
            case 1: {
                const int x = value();
                model_t m2 = m;
                m2.push_back(x);
                return add(v.push_back(x), std::move(m2));
            }
            case 2: {
                if (m.empty()) return;
                const std::size_t k = below(m.size());
                const int x = value();
                model_t m2 = m;
                m2[k] = x;
                return add(v.set(k, x), std::move(m2));
            }
            case 3: {
                if (m.empty()) {
                    ASSERT_THROW((void)v.pop_back(), std::out_of_range);
                    return;
                }
                model_t m2 = m;
                m2.pop_back();
                return add(v.pop_back(), std::move(m2));
            }
            case 4: {
                const std::size_t k = below(m.size() + 3);
                return add(v.take(k), model_t(m.begin(), m.begin() + static_cast<std::ptrdiff_t>(std::min(k, m.size()))));
            }
            case 5: {
                const std::size_t k = below(m.size() + 3);
                return add(v.drop(k), model_t(m.begin() + static_cast<std::ptrdiff_t>(std::min(k, m.size())), m.end()));
            }
            case 6: {
                const std::size_t a = below(m.size() + 2), b = below(m.size() + 2);
                const std::size_t hi = std::min(b, m.size()), lo = std::min(a, hi);
                return add(v.slice(a, b), model_t(m.begin() + static_cast<std::ptrdiff_t>(lo), m.begin() + static_cast<std::ptrdiff_t>(hi)));
            }
            case 7: {
                const std::size_t j = pick();
                if (m.size() + versions_[j].second.size() > 45000) return;
                model_t m2 = m;
                m2.insert(m2.end(), versions_[j].second.begin(), versions_[j].second.end());
                return add(v + versions_[j].first, std::move(m2));
            }
            case 8: {  // bulk push through a transient, sometimes past the third level
                const std::size_t k = rng_() % 20 == 0 ? 33000 : below(1500);
                itransient t = v.transient();
                model_t m2 = m;
                for (std::size_t x = 0; x < k; ++x) {
                    const int y = value();
                    t.push_back(y);
                    m2.push_back(y);
                }
                return add(t.persistent(), std::move(m2));
            }
            case 9:
            case 10: {  // a transient session, with snapshots
                itransient t = v.transient();
                model_t m2 = m;
                const int ops = 1 + static_cast<int>(rng_() % 300);
                for (int s = 0; s < ops; ++s) {
                    const unsigned what = static_cast<unsigned>(rng_() % 10);
                    if (what < 4) {
                        const int y = value();
                        t.push_back(y);
                        m2.push_back(y);
                    } else if (what < 7 && !m2.empty()) {
                        const std::size_t k = below(m2.size());
                        const int y = value();
                        t.set(k, y);
                        m2[k] = y;
                    } else if (what < 9 && !m2.empty()) {
                        t.pop_back();
                        m2.pop_back();
                    } else if (what == 9) {
                        add(t.persistent(), m2);
                        if (::testing::Test::HasFailure()) return;
                    }
                    if (!m2.empty()) {
                        const std::size_t k = below(m2.size());
                        ASSERT_EQ(t[k], m2[k]);
                    }
                }
                ASSERT_TRUE(matches(t, m2));
                return add(t.persistent(), std::move(m2));
            }
            case 11: {  // equality between versions, and with a rebuilt copy
                const std::size_t j = pick();
                const bool eq = v == versions_[j].first;
                ASSERT_EQ(eq, m == versions_[j].second);
                ASSERT_EQ(v != versions_[j].first, !eq);
                ASSERT_TRUE(v == build(m));
                return;
            }
            case 12: {  // setting the same value changes nothing
                if (m.empty()) return;
                const std::size_t k = below(m.size());
                ASSERT_TRUE(v.set(k, m[k]).identical(v));
                return;
            }
            case 13: {  // iteration from the middle
                const std::size_t k = below(m.size() + 1);
                ASSERT_TRUE(std::equal(v.iterator_at(k), v.end(), m.begin() + static_cast<std::ptrdiff_t>(k), m.end()));
                return;
            }
            case 14: {  // drop a version
                if (versions_.size() > 1) versions_.erase(versions_.begin() + static_cast<std::ptrdiff_t>(i));
                return;
            }
            default: {  // a long persistent push/pop walk
                ivec w = v;
                model_t m2 = m;
                const int n = static_cast<int>(rng_() % 100);
                for (int s = 0; s < n; ++s) {
                    if (rng_() % 3 == 0 && !m2.empty()) {
                        w = w.pop_back();
                        m2.pop_back();
                    } else {
                        const int y = value();
                        w = w.push_back(y);
                        m2.push_back(y);
                    }
                }
                return add(std::move(w), std::move(m2));
            }
        }
    }

    std::mt19937_64 rng_;
    std::vector<std::pair<ivec, model_t>> versions_;

public:
    std::size_t largest = 0;
};

TEST_F(VectorTest, DifferentialAgainstStdVector) {
    for (std::uint64_t seed : {1u, 2u, 3u}) {
        differential_run r(seed);
        r.run(4000);
        if (HasFailure()) return;
        EXPECT_GT(r.largest, 32800u) << "the run never reached the trie's third level";
        RecordProperty("largest_" + std::to_string(seed), static_cast<int>(r.largest));
    }
}

// ---- exception injection ---------------------------------------------------------------------------
//
// Copying a value, comparing two values and allocating a node throw at chosen points: "the n-th
// injection point from now", swept over every point of one operation, or at random. Values are
// small handles (an int id); the policy counts retain/release per id, and live nodes and bytes
// (with each block's size, to catch a deallocation with the wrong size). After a failure every
// vector involved still equals its model, nothing is left behind, and a transient stays usable.

namespace inject {
enum source : unsigned { copy_src, alloc_src, equal_src, n_sources };
const char* const source_names[n_sources] = {"value copy", "allocation", "value equality"};

struct injected_error : std::exception {
    explicit injected_error(source s) : src(s) {}
    const char* what() const noexcept override { return source_names[src]; }
    source src;
};
struct injected_bad_alloc : std::bad_alloc {
    const char* what() const noexcept override { return "injected allocation failure"; }
};

inline bool active = false;  // on only around the operation under test
inline std::array<bool, n_sources> enabled{};
inline std::array<unsigned, n_sources> per_mille{};
inline long countdown = 0;  // > 0: throw at the countdown-th enabled point, then stop
inline std::mt19937_64 rng{1};
inline std::array<long, n_sources> thrown{};

inline void reset(std::uint64_t seed) {
    active = false;
    enabled.fill(false);
    per_mille.fill(0);
    countdown = 0;
    rng.seed(seed);
    thrown.fill(0);
}

inline void point(source s) {
    if (!active || !enabled[s]) return;
    bool fire = false;
    if (countdown > 0) {
        fire = --countdown == 0;
    } else if (per_mille[s] != 0) {
        fire = rng() % 1000 < per_mille[s];
    }
    if (!fire) return;
    ++thrown[s];
    if (s == alloc_src) throw injected_bad_alloc();
    throw injected_error(s);
}

struct pause {
    bool saved = active;
    pause() { active = false; }
    ~pause() { active = saved; }
};

template <class F>
std::optional<source> attempt(F&& f) {
    active = true;
    try {
        f();
    } catch (const injected_error& e) {
        active = false;
        return e.src;
    } catch (const injected_bad_alloc&) {
        active = false;
        return alloc_src;
    }
    active = false;
    return std::nullopt;
}
}  // namespace inject

constexpr int max_id = 4096;

struct val {
    int id;
    explicit val(int i) noexcept : id(i) {}
    val(const val& o) : id(o.id) { inject::point(inject::copy_src); }
    val(val&& o) noexcept : id(o.id) {}
    val& operator=(const val& o) {
        inject::point(inject::copy_src);
        id = o.id;
        return *this;
    }
    val& operator=(val&& o) noexcept {
        id = o.id;
        return *this;
    }
    // The policy's same_value and the checks use this one; it never throws.
    bool operator==(const val& o) const noexcept { return id == o.id; }
};

struct throwing_equal {
    bool operator()(const val& a, const val& b) const {
        inject::point(inject::equal_src);
        return a.id == b.id;
    }
};

struct counts {
    static inline std::array<long, max_id> retains{};
    static inline std::array<long, max_id> releases{};
    static inline long net_retained = 0;
    static inline long live_nodes = 0;
    static inline long live_bytes = 0;
    static inline long size_mismatches = 0;
    static inline std::unordered_map<const void*, std::size_t>* sizes = nullptr;

    static void reset() {
        retains.fill(0);
        releases.fill(0);
        net_retained = live_nodes = live_bytes = size_mismatches = 0;
        static std::unordered_map<const void*, std::size_t> table;
        table.clear();
        sizes = &table;
    }
};

struct counting_policy : default_policy {
    using refcount = pypersistent::single_thread_refcount;
    static void retain(const val& v) noexcept {
        ++counts::retains[static_cast<std::size_t>(v.id)];
        ++counts::net_retained;
    }
    static void release(const val& v) noexcept {
        ++counts::releases[static_cast<std::size_t>(v.id)];
        --counts::net_retained;
    }
    static void* allocate(std::size_t bytes) {
        inject::point(inject::alloc_src);
        void* p = ::operator new(bytes);
        ++counts::live_nodes;
        counts::live_bytes += static_cast<long>(bytes);
        inject::pause no_injection;
        (*counts::sizes)[p] = bytes;
        return p;
    }
    static void deallocate(void* p, std::size_t bytes) noexcept {
        --counts::live_nodes;
        counts::live_bytes -= static_cast<long>(bytes);
        auto it = counts::sizes->find(p);
        if (it == counts::sizes->end() || it->second != bytes) ++counts::size_mismatches;
        if (it != counts::sizes->end()) counts::sizes->erase(it);
        ::operator delete(p);
    }
};

using hvec = persistent_vector<val, counting_policy>;
using htransient = transient_vector<val, counting_policy>;

::testing::AssertionResult everything_released() {
    if (counts::live_nodes != 0) return ::testing::AssertionFailure() << counts::live_nodes << " nodes leaked";
    if (counts::live_bytes != 0) return ::testing::AssertionFailure() << counts::live_bytes << " bytes leaked";
    if (counts::size_mismatches != 0) return ::testing::AssertionFailure() << counts::size_mismatches << " deallocations with a wrong size";
    long total = 0;
    for (std::size_t id = 0; id < max_id; ++id) {
        if (counts::retains[id] != counts::releases[id]) {
            return ::testing::AssertionFailure() << "value " << id << ": " << counts::retains[id] << " retains, "
                                                 << counts::releases[id] << " releases";
        }
        total += counts::retains[id];
    }
    if (total == 0) return ::testing::AssertionFailure() << "nothing was ever retained (counting policy not used?)";
    return ::testing::AssertionSuccess();
}

struct net_state {
    long nodes = counts::live_nodes;
    long bytes = counts::live_bytes;
    long retained = counts::net_retained;
    bool operator==(const net_state& o) const { return nodes == o.nodes && bytes == o.bytes && retained == o.retained; }
};

// Ids 0..max_id-1; the models hold ids.
template <class Vec>
::testing::AssertionResult holds(const Vec& v, const model_t& model) {
    inject::pause no_injection;
    if (v.size() != model.size()) return ::testing::AssertionFailure() << "size " << v.size() << ", model " << model.size();
    std::size_t i = 0;
    for (const val& x : v) {
        if (i >= model.size() || x.id != model[i]) return ::testing::AssertionFailure() << "differs at " << i;
        ++i;
    }
    if (i != model.size()) return ::testing::AssertionFailure() << "iteration too short";
    for (std::size_t k = 0; k < model.size(); k += 1 + model.size() / 64) {
        if (v[k].id != model[k]) return ::testing::AssertionFailure() << "[" << k << "] differs";
    }
    return well_formed_vector(v);
}

hvec hbuild(const model_t& m) {
    inject::pause no_injection;
    htransient t;
    for (int id : m) t.push_back(val(id));
    return t.persistent();
}

model_t id_model(std::size_t n, int salt) {
    model_t m(n);
    for (std::size_t i = 0; i < n; ++i) m[i] = static_cast<int>((i * 7 + static_cast<std::size_t>(salt)) % max_id);
    return m;
}

class VectorExceptions : public ::testing::Test {
protected:
    void SetUp() override {
        counts::reset();
        inject::reset(1);
    }
    void TearDown() override {
        inject::reset(1);
        EXPECT_TRUE(everything_released());
    }
};

// Runs `op` with a failure at injection point 1, 2, 3, ... until it completes; after each
// failure, `verify(state, source, before)`. Returns the number of points swept.
template <class Setup, class Op, class Verify>
long sweep(Setup setup, Op op, Verify verify) {
    for (long n = 1; n < 100000; ++n) {
        auto state = setup();
        const net_state before;
        inject::countdown = n;
        auto err = inject::attempt([&] { op(state); });
        inject::countdown = 0;
        if (!err) return n - 1;
        verify(state, *err, before);
        if (::testing::Test::HasFailure()) {
            ADD_FAILURE() << "at injection point " << n << " (" << inject::source_names[*err] << ")";
            return n;
        }
    }
    ADD_FAILURE() << "operation never completed";
    return 0;
}

// Sizes at which the operations take their different paths (tail with room or full, trie
// growing or shrinking a level, root a leaf).
const std::vector<std::size_t>& sweep_sizes() {
    static const std::vector<std::size_t> sizes{1, 2, 31, 32, 33, 63, 64, 65, 97, 1055, 1056, 1057, 1088, 32800, 32801};
    return sizes;
}

TEST_F(VectorExceptions, EveryInjectionPointOfPersistentOperations) {
    inject::enabled.fill(true);
    long points = 0;
    for (std::size_t n : sweep_sizes()) {
        const model_t m = id_model(n, 1);
        const hvec base = hbuild(m);
        // Equal contents: built separately (every value compared, so only for small sizes: the
        // sweep is quadratic in the points of one operation), or sharing all but one path.
        const hvec twin = [&] {
            inject::pause no_injection;
            return n <= 1100 ? hbuild(m) : base.set(n / 2, val(m[n / 2] + 1)).set(n / 2, val(m[n / 2]));
        }();
        const model_t small = id_model(5, 3000);
        const hvec small_vec = hbuild(small);
        const std::size_t tree = hvec::trie::tail_offset(n);
        const auto unchanged = [&](hvec& v, inject::source, const net_state& before) {
            EXPECT_TRUE(v.identical(base));
            EXPECT_TRUE(holds(v, m)) << "size " << n;
            EXPECT_TRUE(net_state() == before) << "a failed operation leaked or freed something, size " << n;
        };
        // Each operation runs on a copy of base; its result must be right once it completes.
        const auto check = [&](const char* what, auto&& op, const model_t& expected) {
            std::optional<hvec> out;
            points += sweep([&] { return hvec(base); }, [&](hvec& v) { out.emplace(op(v)); }, unchanged);
            EXPECT_TRUE(out && holds(*out, expected)) << what << ", size " << n;
        };
        {
            model_t e = m;
            e.push_back(77);
            check("push_back", [](const hvec& v) { return v.push_back(val(77)); }, e);
        }
        for (std::size_t i : {std::size_t(0), n / 2, tree > 0 ? tree - 1 : 0, n - 1}) {
            model_t e = m;
            e[i] = 78;
            check("set", [i](const hvec& v) { return v.set(i, val(78)); }, e);
        }
        check("pop_back", [](const hvec& v) { return v.pop_back(); }, model_t(m.begin(), m.end() - 1));
        for (std::size_t k : {std::size_t(1), n / 2, tree, n - 1}) {
            if (k == 0) continue;
            check("take", [k](const hvec& v) { return v.take(k); }, model_t(m.begin(), m.begin() + static_cast<std::ptrdiff_t>(k)));
        }
        if (n <= 2000) {
            check("drop", [](const hvec& v) { return v.drop(1); }, model_t(m.begin() + 1, m.end()));
            model_t e = m;
            e.insert(e.end(), small.begin(), small.end());
            check("concat", [&](const hvec& v) { return v + small_vec; }, e);
            e = small;
            e.insert(e.end(), m.begin(), m.end());
            check("concat (other side)", [&](const hvec& v) { return small_vec + v; }, e);
            check("from_range", [&](const hvec&) {
                std::vector<val> items;
                {
                    inject::pause no_injection;
                    for (int id : m) items.emplace_back(id);
                }
                return hvec::from_range(items.begin(), items.end());
            }, m);
        }
        // equality with a separately built twin and with a version that differs at the end
        for (const hvec* other : {&twin, static_cast<const hvec*>(nullptr)}) {
            const hvec different = [&] {
                inject::pause no_injection;
                return base.set(n - 1, val(m[n - 1] + 1));
            }();
            const hvec& against = other ? *other : different;
            bool eq = !other;
            points += sweep([&] { return hvec(base); }, [&](hvec& v) { eq = v.equal(against, throwing_equal()); }, unchanged);
            EXPECT_EQ(eq, other != nullptr) << "size " << n;
        }
        if (HasFailure()) return;
    }
    EXPECT_GT(points, 2000);
    RecordProperty("injection_points", static_cast<int>(points));
}

// A transient holding `m` on nodes it shares with `base` (shared), on nodes it made itself
// (owned), or a mix: the paths to a few elements copied, the rest shared.
enum class ownership { shared, owned, mixed };
const char* const ownership_names[] = {"shared", "owned", "mixed"};

htransient transient_of(const hvec& base, const model_t& m, ownership o) {
    inject::pause no_injection;
    if (o == ownership::owned) {
        htransient t;
        for (int id : m) t.push_back(val(id));
        return t;
    }
    htransient t = base.transient();
    if (o == ownership::mixed) {
        for (std::size_t i : {std::size_t(0), m.size() / 2, m.size() - 1}) t.set(i, val(m[i]));  // no change: same_value
        // same_value leaves nodes alone; touch them for real and back
        for (std::size_t i : {std::size_t(0), m.size() / 2, m.size() - 1}) {
            t.set(i, val(m[i] + 1));
            t.set(i, val(m[i]));
        }
    }
    return t;
}

TEST_F(VectorExceptions, EveryInjectionPointOfTransientOperations) {
    inject::enabled[inject::copy_src] = true;
    inject::enabled[inject::alloc_src] = true;
    long points = 0;
    for (std::size_t n : sweep_sizes()) {
        const model_t m = id_model(n, 2);
        const hvec base = hbuild(m);
        const std::size_t tree = hvec::trie::tail_offset(n);
        for (ownership o : {ownership::shared, ownership::owned, ownership::mixed}) {
            const std::string where = "size " + std::to_string(n) + ", " + ownership_names[static_cast<int>(o)];
            // After a failure: unchanged, nothing leaked, and still usable.
            const auto unchanged = [&](htransient& t, inject::source s, const net_state& before) {
                EXPECT_TRUE(holds(t, m)) << where << ", " << inject::source_names[s];
                EXPECT_TRUE(net_state() == before) << where << ": a failed edit changed the counts";
                EXPECT_TRUE(holds(base, m)) << where << ": the base changed";
                inject::pause no_injection;
                t.push_back(val(5));
                t.pop_back();
                if (n > 0) {
                    t.set(n - 1, val(6));
                    t.set(n - 1, val(m[n - 1]));
                }
                EXPECT_TRUE(holds(t, m)) << where << ": unusable after a failure";
            };
            const auto check = [&](const char* what, auto&& op, const model_t& expected) {
                std::optional<hvec> frozen;
                points += sweep([&] { return transient_of(base, m, o); },
                                [&](htransient& t) {
                                    op(t);
                                    inject::pause no_injection;
                                    EXPECT_TRUE(holds(t, expected)) << what << ", " << where;
                                    frozen.emplace(t.persistent());
                                },
                                unchanged);
                EXPECT_TRUE(frozen && holds(*frozen, expected)) << what << ", " << where;
            };
            {
                model_t e = m;
                e.push_back(90);
                check("push_back", [](htransient& t) { t.push_back(val(90)); }, e);
            }
            for (std::size_t i : {std::size_t(0), n / 2, tree > 0 ? tree - 1 : 0, n - 1}) {
                model_t e = m;
                e[i] = 91;
                check("set", [i](htransient& t) { t.set(i, val(91)); }, e);
            }
            check("pop_back", [](htransient& t) { t.pop_back(); }, model_t(m.begin(), m.end() - 1));
            if (HasFailure()) return;
        }
    }
    EXPECT_GT(points, 1000);
    RecordProperty("injection_points", static_cast<int>(points));
}

// Random failures of every source over a long mixed run: persistent versions and one transient,
// each with its model.
TEST_F(VectorExceptions, RandomFailuresEverywhere) {
    inject::enabled.fill(true);
    inject::per_mille[inject::copy_src] = 3;
    inject::per_mille[inject::alloc_src] = 8;
    inject::per_mille[inject::equal_src] = 5;
    std::mt19937_64 rng(42);
    std::vector<std::pair<hvec, model_t>> versions{{hvec(), model_t()}};
    htransient t;
    model_t tm;
    long failures = 0;
    const auto fresh = [&] { return static_cast<int>(rng() % max_id); };
    for (int step = 0; step < 6000 && !HasFailure(); ++step) {
        const std::size_t i = rng() % versions.size();
        const hvec& v = versions[i].first;
        const model_t& m = versions[i].second;
        const net_state before;
        const unsigned op = static_cast<unsigned>(rng() % 13);
        std::optional<hvec> out;
        model_t expected;
        std::optional<inject::source> err;
        {
            inject::pause no_injection;
            expected = m;
        }
        if (op < 5) {  // the transient
            const int x = fresh();
            const std::size_t k = tm.empty() ? 0 : rng() % tm.size();
            const unsigned what = op;
            err = inject::attempt([&] {
                if (what < 2) {
                    t.push_back(val(x));
                } else if (what < 3 && !tm.empty()) {
                    t.set(k, val(x));
                } else if (what < 4 && !tm.empty()) {
                    t.pop_back();
                } else if (what == 4) {
                    out.emplace(t.persistent());
                }
            });
            if (err) {
                ++failures;
                ASSERT_TRUE(net_state() == before) << "failed transient edit changed the counts";
                ASSERT_TRUE(holds(t, tm)) << "after a " << inject::source_names[*err] << " failure";
                continue;
            }
            if (what < 2) {
                tm.push_back(x);
            } else if (what < 3 && !tm.empty()) {
                tm[k] = x;
            } else if (what < 4 && !tm.empty()) {
                tm.pop_back();
            }
            if (out) {
                inject::pause no_injection;
                ASSERT_TRUE(holds(*out, tm));
                versions.emplace_back(std::move(*out), tm);
            }
            if (tm.size() > 5000) {
                inject::pause no_injection;
                t = htransient();
                tm.clear();
            }
        } else {
            const int x = fresh();
            const std::size_t k = m.empty() ? 0 : rng() % m.size();
            const std::size_t j = rng() % versions.size();
            bool eq = false;
            switch (op) {
                case 5:
                case 6:
                    err = inject::attempt([&] { out.emplace(v.push_back(val(x))); });
                    expected.push_back(x);
                    break;
                case 7:
                    if (m.empty()) continue;
                    err = inject::attempt([&] { out.emplace(v.set(k, val(x))); });
                    expected[k] = x;
                    break;
                case 8:
                    if (m.empty()) continue;
                    err = inject::attempt([&] { out.emplace(v.pop_back()); });
                    expected.pop_back();
                    break;
                case 9:
                    err = inject::attempt([&] { out.emplace(v.take(k)); });
                    expected.resize(std::min(k, m.size()));
                    break;
                case 10:
                    if (m.size() + versions[j].second.size() > 6000) continue;
                    if (rng() % 2) {
                        err = inject::attempt([&] { out.emplace(v + versions[j].first); });
                        inject::pause no_injection;
                        expected.insert(expected.end(), versions[j].second.begin(), versions[j].second.end());
                    } else {
                        err = inject::attempt([&] { out.emplace(v.drop(k)); });
                        inject::pause no_injection;
                        expected.erase(expected.begin(), expected.begin() + static_cast<std::ptrdiff_t>(k));
                    }
                    break;
                case 12: {  // bulk push through a transient; half of them without failures, to grow
                    if (m.size() > 6000) continue;
                    const std::size_t count = rng() % 1200;
                    const bool quiet = rng() % 2 == 0;
                    err = inject::attempt([&] {
                        std::optional<inject::pause> no_injection;
                        if (quiet) no_injection.emplace();
                        htransient bulk = v.transient();
                        for (std::size_t c = 0; c < count; ++c) bulk.push_back(val(static_cast<int>(c % max_id)));
                        out.emplace(bulk.persistent());
                    });
                    for (std::size_t c = 0; c < count; ++c) expected.push_back(static_cast<int>(c % max_id));
                    break;
                }
                case 11: {
                    // against another version, and against a copy that shares no node
                    const bool with_copy = rng() % 2 == 0;
                    const hvec copy = with_copy ? hbuild(m) : hvec();
                    const hvec& other = with_copy ? copy : versions[j].first;
                    err = inject::attempt([&] { eq = v.equal(other, throwing_equal()); });
                    if (!err) {
                        ASSERT_EQ(eq, with_copy || m == versions[j].second);
                    }
                    break;
                }
            }
            if (err) {
                ++failures;
                ASSERT_TRUE(net_state() == before) << "a failed persistent operation leaked or freed something";
                ASSERT_TRUE(holds(v, m));
                continue;
            }
            if (op == 11) continue;
            if (!out) continue;
            inject::pause no_injection;
            ASSERT_TRUE(holds(*out, expected)) << "op " << op;
            ASSERT_TRUE(holds(v, m));
            if (versions.size() < 16) {
                versions.emplace_back(std::move(*out), std::move(expected));
            } else {
                versions[rng() % versions.size()] = {std::move(*out), std::move(expected)};
            }
        }
        if (step % 500 == 0) {
            for (const auto& x : versions) ASSERT_TRUE(holds(x.first, x.second));
        }
    }
    for (const auto& x : versions) ASSERT_TRUE(holds(x.first, x.second));
    EXPECT_GT(failures, 200);
    for (unsigned s = 0; s < inject::n_sources; ++s) EXPECT_GT(inject::thrown[s], 0) << inject::source_names[s];
    std::size_t largest = tm.size();
    for (const auto& x : versions) largest = std::max(largest, x.second.size());
    RecordProperty("failures", static_cast<int>(failures));
    RecordProperty("largest", static_cast<int>(largest));
}

// ---- lent tail prefixes ----------------------------------------------------------------------------
//
// Under a policy with lend_tail_prefixes, a persistent push_back's new tail borrows the old
// tail's values instead of retaining them (vector_trie.hpp, "Lent prefixes"). Values are
// trivially copyable handles whose retains and releases are counted per id: every value a live
// vector holds must stay retained, chains of lenders stay short, leaves in the trie own their
// values, and everything balances when the vectors are gone, also when an allocation fails.

struct handle {
    int id;
    bool operator==(const handle& o) const noexcept { return id == o.id; }
};
static_assert(std::is_trivially_copyable<handle>::value, "the lending path needs trivially copyable values");

struct lend_counts {
    static inline std::array<long, max_id> net{};  // retains - releases, per id
    static inline long live_nodes = 0;
    static inline long fail_at = 0;  // > 0: the fail_at-th allocation from now throws
};

struct lending_policy : default_policy {
    using refcount = pypersistent::single_thread_refcount;
    static constexpr bool lend_tail_prefixes = true;
    static void retain(const handle& h) noexcept { ++lend_counts::net[static_cast<std::size_t>(h.id)]; }
    static void release(const handle& h) noexcept { --lend_counts::net[static_cast<std::size_t>(h.id)]; }
    static void* allocate(std::size_t bytes) {
        if (lend_counts::fail_at > 0 && --lend_counts::fail_at == 0) throw std::bad_alloc();
        ++lend_counts::live_nodes;
        return ::operator new(bytes);
    }
    static void deallocate(void* p, std::size_t) noexcept {
        --lend_counts::live_nodes;
        ::operator delete(p);
    }
};

using lvec = persistent_vector<handle, lending_policy>;
using ltrie = lvec::trie;
static_assert(ltrie::lending, "lending_policy takes the lending path");
static_assert(!ivec::trie::lending && !hvec::trie::lending, "other policies never lend");

class VectorLending : public ::testing::Test {
protected:
    void SetUp() override {
        lend_counts::net.fill(0);
        lend_counts::live_nodes = 0;
        lend_counts::fail_at = 0;
    }
    void TearDown() override {
        lend_counts::fail_at = 0;
        EXPECT_EQ(lend_counts::live_nodes, 0) << "nodes leaked";
        for (std::size_t id = 0; id < max_id; ++id) EXPECT_EQ(lend_counts::net[id], 0) << "value " << id << " unbalanced";
    }
};

::testing::AssertionResult lend_holds(const lvec& v, const model_t& m) {
    if (v.size() != m.size()) return ::testing::AssertionFailure() << "size " << v.size() << ", model " << m.size();
    std::size_t i = 0;
    for (const handle& h : v) {
        if (h.id != m[i]) return ::testing::AssertionFailure() << "differs at " << i;
        if (lend_counts::net[static_cast<std::size_t>(h.id)] <= 0) {
            return ::testing::AssertionFailure() << "value " << h.id << " at " << i << " is held but not retained";
        }
        ++i;
    }
    // The tail's chain of lenders is short, each lender a prefix of the borrower.
    if (const ltrie::node* tail = v.tail()) {
        unsigned chain = 1;
        for (const ltrie::node* n = tail; ltrie::lender_of(n); n = ltrie::lender_of(n), ++chain) {
            const ltrie::node* lender = ltrie::lender_of(n);
            if (lender->count >= n->count) return ::testing::AssertionFailure() << "a lender as long as its borrower";
            for (unsigned k = 0; k < lender->count; ++k) {
                if (ltrie::values(lender)[k].id != ltrie::values(n)[k].id) return ::testing::AssertionFailure() << "lender differs";
            }
        }
        if (chain > ltrie::lend_period) return ::testing::AssertionFailure() << "a chain of " << chain << " lenders";
        if (tail->count == ltrie::branches && ltrie::lender_of(tail)) return ::testing::AssertionFailure() << "full tail borrows";
    }
    // Leaves in the trie own their values.
    for (std::size_t start = 0; start < ltrie::tail_offset(v.size()); start += ltrie::branches) {
        if (ltrie::lender_of(ltrie::leaf_for(v.parts(), start))) return ::testing::AssertionFailure() << "a trie leaf borrows";
    }
    return well_formed_vector(v);
}

model_t retained_ids_of(const std::vector<std::pair<lvec, model_t>>& pool) {
    std::vector<long> expected(max_id, 0);
    model_t out;
    for (const auto& e : pool) {
        for (int id : e.second) {
            if (expected[static_cast<std::size_t>(id)]++ == 0) out.push_back(id);
        }
    }
    return out;
}

TEST_F(VectorLending, AppendsBorrowAndEveryHeldValueStaysRetained) {
    lvec v;
    model_t m;
    for (int i = 0; i < 3000; ++i) {
        lvec next = v.push_back(handle{i % max_id});
        m.push_back(i % max_id);
        if (i % 3 == 0) v = lvec();  // the old version dies first, or later
        v = std::move(next);
        ASSERT_TRUE(lend_holds(v, m)) << "after " << i + 1 << " appends";
    }
    // Dead versions leave nothing behind but the tail's short chain: the trie's nodes, the tail
    // and at most lend_period - 1 lenders.
    const long trie_nodes = 3000 / 32 + 3;  // leaves plus the inner nodes of 93 leaves
    EXPECT_LE(lend_counts::live_nodes, trie_nodes + long(ltrie::lend_period));
    // Each value is retained by one node only, however many tails copied it.
    for (int id = 0; id < 3000; ++id) EXPECT_EQ(lend_counts::net[static_cast<std::size_t>(id)], 1) << id;
}

TEST_F(VectorLending, VersionsSharingChainsDieInAnyOrder) {
    std::mt19937_64 rng(7);
    std::vector<std::pair<lvec, model_t>> pool{{lvec(), model_t()}};
    for (int step = 0; step < 6000; ++step) {
        const auto& base = pool[rng() % pool.size()];
        lvec v;
        model_t m = base.second;
        const int x = static_cast<int>(rng() % max_id);
        switch (rng() % 8) {
            case 0:
            case 1:
            case 2:
            case 3:
                v = base.first.push_back(handle{x});
                m.push_back(x);
                break;
            case 4:
                if (m.empty()) continue;
                v = base.first.pop_back();
                m.pop_back();
                break;
            case 5: {
                if (m.empty()) continue;
                const std::size_t k = rng() % m.size();
                v = base.first.set(k, handle{x});
                m[k] = x;
                break;
            }
            case 6: {
                const std::size_t k = rng() % (m.size() + 1);
                v = base.first.take(k);
                m.resize(k);
                break;
            }
            default: {
                auto t = base.first.transient();
                for (int s = static_cast<int>(rng() % 40); s > 0; --s) {
                    t.push_back(handle{x});
                    m.push_back(x);
                }
                if (!m.empty() && rng() % 2) {
                    t.pop_back();
                    m.pop_back();
                }
                v = t.persistent();
                break;
            }
        }
        pool.emplace_back(std::move(v), std::move(m));
        if (pool.size() > 40) pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(rng() % pool.size()));
        for (const auto& e : pool) ASSERT_TRUE(lend_holds(e.first, e.second)) << "step " << step;
        // Nothing is retained that no live version holds.
        long held_ids = static_cast<long>(retained_ids_of(pool).size());
        long retained_ids = 0;
        for (long n : lend_counts::net) retained_ids += n > 0;
        ASSERT_EQ(retained_ids, held_ids) << "step " << step << ": values retained by no live version";
    }
}

TEST_F(VectorLending, AllocationFailureLeavesEverythingAsItWas) {
    for (std::size_t n : {0, 1, 2, 3, 4, 5, 7, 8, 30, 31, 32, 33, 63, 64, 65, 1055, 1056}) {
        lvec v;
        model_t m;
        for (std::size_t i = 0; i < n; ++i) {
            v = v.push_back(handle{static_cast<int>(i)});
            m.push_back(static_cast<int>(i));
        }
        for (long point = 1;; ++point) {
            const long nodes = lend_counts::live_nodes;
            const auto net = lend_counts::net;
            lend_counts::fail_at = point;
            try {
                lvec w = v.push_back(handle{4000});
                lend_counts::fail_at = 0;
                model_t mw = m;
                mw.push_back(4000);
                ASSERT_TRUE(lend_holds(w, mw));
                break;
            } catch (const std::bad_alloc&) {
                lend_counts::fail_at = 0;
                ASSERT_EQ(lend_counts::live_nodes, nodes) << "size " << n << ", failure at allocation " << point;
                ASSERT_TRUE(lend_counts::net == net) << "size " << n << ", failure at allocation " << point;
                ASSERT_TRUE(lend_holds(v, m));
            }
        }
    }
}

// ---- threads --------------------------------------------------------------------------------------
//
// 16 threads share one vector and derive versions from it; they also publish versions on a
// shared board and pick up each other's, so nodes made on one thread are shared, extended and
// finally freed on others. Short: it exists for the ThreadSanitizer build.

struct atomic_tracking_policy : default_policy {  // default_policy's atomic reference counts
    static inline std::atomic<long> live_nodes{0};
    static void* allocate(std::size_t bytes) {
        live_nodes.fetch_add(1, std::memory_order_relaxed);
        return ::operator new(bytes);
    }
    static void deallocate(void* p, std::size_t) noexcept {
        live_nodes.fetch_sub(1, std::memory_order_relaxed);
        ::operator delete(p);
    }
};

// The same with tails lending their values (counted: every retain is matched by a release).
struct atomic_lending_policy : atomic_tracking_policy {
    static constexpr bool lend_tail_prefixes = true;
    static inline std::atomic<long> net_retained{0};
    static void retain(const int&) noexcept { net_retained.fetch_add(1, std::memory_order_relaxed); }
    static void release(const int&) noexcept { net_retained.fetch_sub(1, std::memory_order_relaxed); }
};

template <class Policy>
void share_and_derive_on_sixteen_threads() {
    using tvec = persistent_vector<int, Policy>;
    using entry = std::pair<tvec, model_t>;
    {
        const model_t shared_model = iota_model(3000);
        const tvec shared(shared_model.begin(), shared_model.end());
        std::mutex board_mutex;
        std::vector<entry> board(8, entry(shared, shared_model));
        std::atomic<int> mismatches{0};
        const auto agrees = [](const tvec& v, const model_t& m, bool full) {
            if (v.size() != m.size()) return false;
            if (full) return std::equal(v.begin(), v.end(), m.begin(), m.end());
            for (std::size_t k = 0; k < m.size(); k += 1 + m.size() / 16) {
                if (v[k] != m[k]) return false;
            }
            return m.empty() || v.back() == m.back();
        };
        std::vector<std::thread> threads;
        for (int id = 0; id < 16; ++id) {
            threads.emplace_back([&, id] {
                std::mt19937_64 rng(static_cast<std::uint64_t>(id) + 100);
                std::vector<entry> mine{entry(shared, shared_model)};
                for (int step = 0; step < 150; ++step) {
                    entry base;
                    if (rng() % 4 == 0) {
                        std::lock_guard<std::mutex> lock(board_mutex);
                        base = board[rng() % board.size()];
                    } else {
                        base = mine[rng() % mine.size()];
                    }
                    tvec v;
                    model_t m = base.second;
                    const int x = static_cast<int>(rng() % 1000000);
                    switch (rng() % 7) {
                        case 0:
                            v = base.first.push_back(x);
                            m.push_back(x);
                            break;
                        case 1:
                            if (m.empty()) continue;
                            v = base.first.pop_back();
                            m.pop_back();
                            break;
                        case 2: {
                            if (m.empty()) continue;
                            const std::size_t k = rng() % m.size();
                            v = base.first.set(k, x);
                            m[k] = x;
                            break;
                        }
                        case 3: {
                            const std::size_t k = rng() % (m.size() + 1);
                            v = base.first.take(k);
                            m.resize(k);
                            break;
                        }
                        case 4: {
                            auto t = base.first.transient();
                            const int n = static_cast<int>(rng() % 200);
                            for (int s = 0; s < n; ++s) {
                                t.push_back(x + s);
                                m.push_back(x + s);
                            }
                            if (!m.empty()) {
                                t.set(0, x);
                                m[0] = x;
                            }
                            v = t.persistent();
                            break;
                        }
                        case 5: {
                            if (m.size() > 8000) continue;
                            const entry& other = mine[rng() % mine.size()];
                            v = base.first + other.first;
                            m.insert(m.end(), other.second.begin(), other.second.end());
                            break;
                        }
                        default:
                            if (!(base.first == shared) != !(base.second == shared_model)) ++mismatches;
                            continue;
                    }
                    if (!agrees(v, m, step % 10 == 0)) ++mismatches;
                    if (m.size() > 12000) continue;
                    entry out(std::move(v), std::move(m));
                    if (rng() % 3 == 0) {
                        std::lock_guard<std::mutex> lock(board_mutex);
                        std::swap(board[rng() % board.size()], out);  // the old one dies outside the lock
                    } else if (mine.size() < 6) {
                        mine.push_back(std::move(out));
                    } else {
                        mine[rng() % mine.size()] = std::move(out);
                    }
                }
                for (const entry& e : mine) {
                    if (!agrees(e.first, e.second, true)) ++mismatches;
                }
                if (!agrees(shared, shared_model, true)) ++mismatches;
            });
        }
        for (auto& th : threads) th.join();
        EXPECT_EQ(mismatches.load(), 0);
        for (const entry& e : board) EXPECT_TRUE(agrees(e.first, e.second, true));
        EXPECT_TRUE(agrees(shared, shared_model, true));
    }
    EXPECT_EQ(atomic_tracking_policy::live_nodes.load(), 0) << "nodes leaked";
}

TEST(VectorThreads, SixteenThreadsShareAndDeriveVersions) { share_and_derive_on_sixteen_threads<atomic_tracking_policy>(); }

TEST(VectorThreads, SixteenThreadsShareAndDeriveVersionsWithLentTails) {
    static_assert(persistent_vector<int, atomic_lending_policy>::trie::lending, "the lending path");
    atomic_lending_policy::net_retained = 0;
    share_and_derive_on_sixteen_threads<atomic_lending_policy>();
    EXPECT_EQ(atomic_lending_policy::net_retained.load(), 0) << "retains and releases do not balance";
}

}  // namespace
