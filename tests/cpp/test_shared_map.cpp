// shared_map (neutral_value.hpp, shared_map.hpp) and shared_cell_registry
// (shared_cell_registry.hpp): dict semantics over neutral keys, a differential random test
// against std::unordered_map with the same equality, versions derived from one map by 16
// threads, the C++ host conveniences, and the registry's lifetime rules. Every test checks that
// no neutral heap block is left alive.
#define PYPERSISTENT_NEUTRAL_COUNT_BLOCKS 1
#include <pypersistent/neutral_value.hpp>
#include <pypersistent/shared_cell_registry.hpp>
#include <pypersistent/shared_map.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using pypersistent::neutral_equal;
using pypersistent::neutral_hash;
using pypersistent::neutral_value;
using pypersistent::shared_cell_registry;
using pypersistent::shared_map;
using pypersistent::shared_transient;
using nv = neutral_value;

std::int64_t live() { return pypersistent::neutral_detail::live_blocks.load(); }

class SharedMap : public ::testing::Test {
protected:
    void SetUp() override { start_ = live(); }
    void TearDown() override { EXPECT_EQ(live(), start_) << "heap blocks leaked or freed twice"; }
    std::int64_t start_ = 0;
};
using SharedMapThreads = SharedMap;
using SharedRegistry = SharedMap;

using reference_map = std::unordered_map<nv, nv, neutral_hash, neutral_equal>;

void expect_matches(const shared_map& m, const reference_map& ref) {
    ASSERT_EQ(m.size(), ref.size());
    std::size_t seen = 0;
    for (const auto& e : m) {
        ++seen;
        auto it = ref.find(e.first);
        ASSERT_NE(it, ref.end()) << e.first.repr();
        EXPECT_TRUE(it->second.identical(e.second)) << e.first.repr() << ": " << e.second.repr();
    }
    EXPECT_EQ(seen, ref.size());
    for (const auto& kv : ref) {
        const nv* v = m.find(kv.first);
        ASSERT_NE(v, nullptr) << kv.first.repr();
        EXPECT_TRUE(v->identical(kv.second));
    }
}

// A pool of keys in which many are equal across kinds: ints, the equal floats and bools, big
// ints and the equal floats, strings, bytes, tuples of those, small nested maps.
std::vector<nv> key_pool() {
    std::vector<nv> keys;
    for (int i = -20; i < 60; ++i) {
        keys.emplace_back(i);
        keys.emplace_back(static_cast<double>(i));
        keys.emplace_back(i + 0.5);
        keys.emplace_back("s" + std::to_string(i));
        keys.push_back(nv::bytes("s" + std::to_string(i)));
        keys.push_back(nv::tuple({i, "t"}));
        keys.push_back(nv::tuple({static_cast<double>(i), "t"}));
    }
    keys.emplace_back(true);
    keys.emplace_back(false);
    keys.emplace_back(-0.0);
    keys.emplace_back(std::nan(""));
    keys.emplace_back();
    for (int e = 63; e < 140; e += 7) {
        keys.emplace_back(std::ldexp(1.0, e));
        keys.emplace_back(-std::ldexp(1.0, e));
        std::uint64_t limbs[3] = {0, 0, 0};
        limbs[e / 64] = std::uint64_t(1) << (e % 64);
        keys.push_back(nv::from_limbs(false, limbs, 3));
        keys.push_back(nv::from_limbs(true, limbs, 3));
    }
    keys.emplace_back("caf\xC3\xA9");
    keys.emplace_back("\xF0\x9F\x98\x80");
    keys.emplace_back(shared_map{{"a", 1}});
    keys.emplace_back(shared_map{{"a", 1.0}});
    keys.push_back(nv::tuple({shared_map{{1, 2}}, nv::tuple({})}));
    return keys;
}

TEST_F(SharedMap, DictSemantics) {
    shared_map m;
    m = m.set(1, "int");
    m = m.set(1.0, "float");
    m = m.set(true, "bool");
    EXPECT_EQ(m.size(), 1u);
    EXPECT_EQ(m.begin()->first.repr(), "1");  // the first key stays
    EXPECT_EQ(*m.find(1.0), nv("bool"));
    m = m.set(0, "zero").set(-0.0, "negzero").set(false, "false");
    EXPECT_EQ(m.size(), 2u);
    EXPECT_EQ(*m.find(0.0), nv("false"));
    // Assigning the identical value returns the very same map; an equal but different one not.
    const shared_map same = m.set(1, m.at(1));
    EXPECT_TRUE(same.identical(m));
    const shared_map m2 = m.set(2, 2);
    EXPECT_FALSE(m2.set(2, 2.0).identical(m2));
    EXPECT_EQ(m2.set(2, 2.0).at(2).repr(), "2.0");
    // Strings and bytes are different keys.
    m = m.set("k", 1).set(nv::bytes("k"), 2);
    EXPECT_EQ(m.size(), 4u);
    // Equality of maps by content.
    EXPECT_EQ((shared_map{{1, "a"}, {"b", 2}}), (shared_map{{"b", 2.0}, {1.0, "a"}}));
    EXPECT_NE((shared_map{{1, "a"}}), (shared_map{{1, "b"}}));
    EXPECT_EQ(m.erase(1.0).size(), 3u);
    EXPECT_EQ(m.erase(true).find(1), nullptr);
}

TEST_F(SharedMap, DifferentialAgainstUnorderedMap) {
    const std::vector<nv> keys = key_pool();
    std::vector<nv> values{nv(), 1, 1.0, "v", nv::bytes("v"), nv::tuple({1, 2})};
    std::mt19937_64 rng(12345);
    shared_map m;
    reference_map ref;
    std::vector<std::pair<shared_map, reference_map>> snapshots;
    for (int step = 0; step < 20000; ++step) {
        const nv& key = keys[rng() % keys.size()];
        const unsigned op = static_cast<unsigned>(rng() % 10);
        if (op < 6) {
            const nv value = (rng() % 3 == 0) ? nv(static_cast<std::int64_t>(rng() % 1000)) : values[rng() % values.size()];
            m = m.set(key, value);
            auto it = ref.find(key);
            if (it == ref.end()) {
                ref.emplace(key, value);
            } else {
                it->second = value;  // the key stays, as in dict and the map
            }
        } else if (op < 9) {
            m = m.erase(key);
            ref.erase(key);
        } else {
            const nv* v = m.find(key);
            auto it = ref.find(key);
            ASSERT_EQ(v != nullptr, it != ref.end()) << key.repr();
            if (v) {
                EXPECT_TRUE(v->identical(it->second));
            }
        }
        ASSERT_EQ(m.size(), ref.size());
        if (step % 1000 == 0) {
            expect_matches(m, ref);
            snapshots.emplace_back(m, ref);
        }
    }
    expect_matches(m, ref);
    // Old versions never changed.
    for (const auto& s : snapshots) expect_matches(s.first, s.second);
    // A transient built from the same operations equals the persistent map.
    shared_transient t;
    for (const auto& kv : ref) t.set(kv.first, kv.second);
    const shared_map built = t.persistent();
    EXPECT_EQ(built, m);
    // And the maps themselves work as neutral values with a consistent hash.
    EXPECT_EQ(nv(built), nv(m));
    EXPECT_EQ(nv(built).hash(), nv(m).hash());
}

// Lookups with probes: no heap block for short keys, same hash and equality as real values.
TEST_F(SharedMap, ProbesFindStrAndBytesKeys) {
    using pypersistent::neutral_probe;
    const std::string long_key(1000, 'x');
    const shared_map m{{"caf\xC3\xA9", 1}, {nv::bytes("raw"), 2}, {long_key, 3}, {"", 4}};
    const std::int64_t before = live();
    {
        const auto p = neutral_probe::str("caf\xC3\xA9", 4, 255);
        EXPECT_TRUE(p.is_inline());
        EXPECT_EQ(live(), before);  // no heap block
        ASSERT_NE(m.find(p), nullptr);
        EXPECT_EQ(*m.find(p), nv(1));
        EXPECT_EQ(p.value().hash(), nv("caf\xC3\xA9").hash());
        EXPECT_EQ(m.erase(p).size(), 3u);
        const auto b = neutral_probe::bytes("raw");
        EXPECT_TRUE(b.is_inline());
        const auto short_str = neutral_probe::str("short", 5, 127);
        EXPECT_FALSE(short_str.is_inline());  // a short str: no block at all
        EXPECT_TRUE(short_str.value().is_short_str());
        EXPECT_EQ(m.find(short_str), nullptr);
        EXPECT_EQ(*m.find(b), nv(2));
        EXPECT_EQ(m.find(neutral_probe::str("raw", 3, 127)), nullptr);  // str is not bytes
        EXPECT_EQ(m.find(neutral_probe::bytes("caf\xC3\xA9")), nullptr);
        EXPECT_EQ(*m.find(neutral_probe::str("", 0, 0)), nv(4));
        const auto big_probe = neutral_probe::str(long_key, long_key.size(), 127);
        EXPECT_FALSE(big_probe.is_inline());
        EXPECT_EQ(*m.find(big_probe), nv(3));
    }
    EXPECT_EQ(live(), before);
}

// Storing a probe's value (set copies the key) would leave a dangling pointer: the probe aborts.
TEST(SharedMapDeathTest, EscapedProbeAborts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            shared_map keep;
            {
                const auto p = pypersistent::neutral_probe::str("caf\xC3\xA9", 4, 255);  // in the probe
                keep = keep.set(p.value(), 1);
            }
        },
        "");
}

TEST_F(SharedMap, HostConveniences) {
    using pypersistent::assoc_in;
    using pypersistent::get_in;
    const shared_map config = pypersistent::make_shared_map({
        {"service", "billing"},
        {"port", 8080},
        {"ratio", 0.25},
        {"tags", nv::tuple({"eu", "prod"})},
        {"db", shared_map{{"host", "db1"}, {"pool", 16}}},
    });
    EXPECT_EQ(config.size(), 5u);
    ASSERT_NE(get_in(config, {"db", "host"}), nullptr);
    EXPECT_EQ(*get_in(config, {"db", "host"}), nv("db1"));
    EXPECT_EQ(get_in(config, {"db", "missing"}), nullptr);
    EXPECT_EQ(get_in(config, {"port", "x"}), nullptr);  // 8080 is not a map
    const shared_map next = assoc_in(config, {"db", "pool"}, 32);
    EXPECT_EQ(*get_in(next, {"db", "pool"}), nv(32));
    EXPECT_EQ(*get_in(config, {"db", "pool"}), nv(16));
    EXPECT_TRUE(next.at("tags").identical(config.at("tags")));  // untouched values are shared
    const shared_map created = assoc_in(shared_map(), {"a", "b", "c"}, "deep");
    EXPECT_EQ(nv(created).repr(), "{'a': {'b': {'c': 'deep'}}}");
}

// 16 threads derive versions from one shared map (and its shared values) at once, each checking
// its own versions and that the base never changes.
TEST_F(SharedMapThreads, SixteenThreadsDeriveVersions) {
    shared_transient t;
    for (int i = 0; i < 500; ++i) t.set("key" + std::to_string(i), nv::tuple({i, "payload"}));
    const shared_map base = t.persistent();
    const nv base_value(base);
    const std::uint64_t base_hash = base_value.hash();
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int th = 0; th < 16; ++th) {
        threads.emplace_back([&, th] {
            std::mt19937_64 rng(static_cast<std::uint64_t>(th) + 1);
            shared_map mine = base;
            for (int step = 0; step < 400; ++step) {
                const int k = static_cast<int>(rng() % 600);
                const nv key("key" + std::to_string(k));
                switch (rng() % 4) {
                    case 0: mine = mine.erase(key); break;
                    case 1: mine = mine.set(key, nv::tuple({th, step})); break;
                    case 2: mine = mine.set(nv::tuple({th, k}), base); break;  // the base as a value
                    default: {
                        const nv* v = base.find(key);
                        if ((k < 500) != (v != nullptr)) failures.fetch_add(1);
                        if (v && !(v->tuple_data()[0] == nv(k))) failures.fetch_add(1);
                    }
                }
                if (step % 50 == 0) {
                    // A neutral value holding the shared base hashes and compares the same everywhere.
                    if (nv(base).hash() != base_hash || !(nv(base) == base_value)) failures.fetch_add(1);
                    const shared_map copy = mine;
                    if (!(copy == mine)) failures.fetch_add(1);
                }
            }
            if (base.size() != 500) failures.fetch_add(1);
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(base.size(), 500u);
    for (int i = 0; i < 500; ++i) EXPECT_EQ(base.at("key" + std::to_string(i))[0], nv(i));
}

// ---- the registry ----------------------------------------------------------------------------

TEST_F(SharedRegistry, OpenTwiceGivesTheSameCell) {
    shared_cell_registry registry;
    auto a = registry.open("config");
    auto b = registry.open("config");
    auto other = registry.open("other");
    EXPECT_TRUE(a.same_cell(b));
    EXPECT_FALSE(a.same_cell(other));
    EXPECT_EQ(a.use_count(), 2u);
    EXPECT_EQ(registry.size(), 2u);
    EXPECT_TRUE(a.deref().empty());
    a.reset(shared_map{{"port", 8080}});
    EXPECT_EQ(b.deref().at("port"), nv(8080));
    const shared_map seen = b.deref();
    EXPECT_TRUE(b.compare_and_set(seen, seen.set("host", "db1")));
    EXPECT_FALSE(a.compare_and_set(seen, shared_map()));  // not the current version any more
    a.swap([](const shared_map& m) { return m.set("hits", 1); });
    EXPECT_EQ(b.deref().size(), 3u);
    EXPECT_TRUE(other.deref().empty());
    EXPECT_EQ(a.name(), "config");
}

TEST_F(SharedRegistry, LastHandleClosesAndReopenIsFresh) {
    shared_cell_registry registry;
    {
        auto a = registry.open("cell");
        a.reset(shared_map{{"x", nv::tuple({1, "heap"})}});
        auto copy = a;
        auto moved = std::move(copy);
        EXPECT_EQ(a.use_count(), 2u);
        moved.close();
        EXPECT_EQ(a.use_count(), 1u);
        EXPECT_TRUE(registry.contains("cell"));
    }
    EXPECT_FALSE(registry.contains("cell"));
    EXPECT_EQ(registry.size(), 0u);
    auto again = registry.open("cell");
    EXPECT_TRUE(again.deref().empty());
}

TEST_F(SharedRegistry, ProcessWideInstance) {
    auto& r1 = shared_cell_registry::instance();
    auto& r2 = shared_cell_registry::instance();
    EXPECT_EQ(&r1, &r2);
    auto a = r1.open("test_shared_map.process_wide");
    auto b = r2.open("test_shared_map.process_wide");
    EXPECT_TRUE(a.same_cell(b));
    a.close();
    b.close();
    EXPECT_FALSE(r1.contains("test_shared_map.process_wide"));
}

// Threads open, use and close a few names at random while others keep one cell open: handles
// never see a destroyed cell, counters never lose an update while the cell is held.
TEST_F(SharedRegistry, ConcurrentOpenCloseAndSwap) {
    shared_cell_registry registry;
    auto keeper = registry.open("kept");
    constexpr int threads = 8;
    constexpr int rounds = 300;
    std::vector<std::thread> ts;
    for (int th = 0; th < threads; ++th) {
        ts.emplace_back([&registry, th] {
            std::mt19937 rng(static_cast<unsigned>(th));
            for (int i = 0; i < rounds; ++i) {
                auto kept = registry.open("kept");
                kept.swap([th](const shared_map& m) {
                    const nv* c = m.find(th);
                    return m.set(th, c ? c->as_int64() + 1 : 1);
                });
                auto churn = registry.open("churn" + std::to_string(rng() % 3));
                churn.swap([](const shared_map& m) { return m.set("n", nv::tuple({m.size(), "x"})); });
                auto copy = churn;
            }
        });
    }
    for (auto& t : ts) t.join();
    const shared_map final_map = keeper.deref();
    for (int th = 0; th < threads; ++th) EXPECT_EQ(final_map.at(th), nv(rounds));
    EXPECT_EQ(registry.size(), 1u);  // only "kept"
    keeper.close();
    EXPECT_EQ(registry.size(), 0u);
}

}  // namespace
