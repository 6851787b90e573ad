// Unit tests of pypersistent::shared_cell and pypersistent::atom (include/pypersistent/atom.hpp):
// load / exchange / compare_exchange / with_current semantics, handle lifetime, live-instance
// counting (no leak, no double destruction), atom's deref / reset / compare_and_set / swap, and
// small multi-threaded checks. The long multi-threaded runs live in stress/cpp_atom_stress.cpp.

#include <pypersistent/atom.hpp>
#include <pypersistent/pypersistent.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

namespace pp = pypersistent;

// ---- a value type that counts its live instances ------------------------------------------------

std::atomic<long> g_live{0};
std::atomic<long> g_destroyed{0};

struct tracked {
    int id;
    std::string text;  // heap-allocated for longer strings: sanitizers see its lifetime
    bool alive = true;

    explicit tracked(int i) : id(i), text("value number " + std::to_string(i) + " with some padding") { ++g_live; }
    tracked(const tracked& o) : id(o.id), text(o.text) { ++g_live; }
    tracked(tracked&& o) noexcept : id(o.id), text(std::move(o.text)) { ++g_live; }
    tracked& operator=(const tracked&) = delete;
    tracked& operator=(tracked&&) = delete;
    ~tracked() {
        EXPECT_TRUE(alive) << "value " << id << " destroyed twice";
        alive = false;
        --g_live;
        ++g_destroyed;
    }
};

using cell_t = pp::shared_cell<tracked>;

class SharedCell : public ::testing::Test {
protected:
    void SetUp() override {
        live_before_ = g_live.load();
    }
    void TearDown() override {
        EXPECT_EQ(g_live.load(), live_before_) << "tracked values leaked (or destroyed too often)";
    }
    long live() const { return g_live.load() - live_before_; }

private:
    long live_before_ = 0;
};

TEST_F(SharedCell, HoldsItsInitialValue) {
    cell_t cell(tracked(1));
    EXPECT_EQ(live(), 1);  // the temporary is gone, the stored copy remains
    cell_t::handle h = cell.load();
    EXPECT_EQ(h->id, 1);
    EXPECT_EQ((*h).id, 1);
    EXPECT_EQ(h.get().id, 1);
    EXPECT_EQ(cell.unsynchronized_peek().id, 1);
    EXPECT_EQ(live(), 1);  // handles share the stored value, they do not copy it
}

TEST_F(SharedCell, LoadsOfTheSameStoreAreTheSameStore) {
    cell_t cell(tracked(1));
    cell_t::handle a = cell.load();
    cell_t::handle b = cell.load();
    EXPECT_TRUE(a.same_store(b));
    EXPECT_EQ(&a.get(), &b.get());
}

TEST_F(SharedCell, ExchangeReturnsTheOldValueAndStoresTheNewOne) {
    cell_t cell(tracked(1));
    cell_t::handle before = cell.load();
    {
        cell_t::handle old = cell.exchange(tracked(2));
        EXPECT_EQ(old->id, 1);
        EXPECT_TRUE(old.same_store(before));
        EXPECT_EQ(cell.load()->id, 2);
        EXPECT_FALSE(cell.load().same_store(before));
        EXPECT_EQ(live(), 2);
    }
    EXPECT_EQ(live(), 2);  // `before` still holds value 1
    before = cell.load();
    EXPECT_EQ(live(), 1);  // value 1 was freed once its last handle moved on
    EXPECT_EQ(cell.exchange(tracked(3))->id, 2);
    EXPECT_EQ(before->id, 2);
    EXPECT_EQ(cell.unsynchronized_peek().id, 3);
}

TEST_F(SharedCell, ExchangeResultDroppedAtOnceFreesTheOldValue) {
    cell_t cell(tracked(1));
    const long destroyed = g_destroyed.load();
    cell.exchange(tracked(2));
    EXPECT_EQ(live(), 1);
    EXPECT_GE(g_destroyed.load() - destroyed, 2);  // the temporary moved from, and value 1
    EXPECT_EQ(cell.load()->id, 2);
}

TEST_F(SharedCell, CompareExchangeSucceedsWithTheCurrentStore) {
    cell_t cell(tracked(1));
    cell_t::handle expected = cell.load();
    EXPECT_TRUE(cell.compare_exchange(expected, tracked(2)));
    EXPECT_EQ(cell.load()->id, 2);
    EXPECT_EQ(expected->id, 1);  // the expected handle still holds the replaced value
    EXPECT_EQ(live(), 2);
}

TEST_F(SharedCell, CompareExchangeFailsWithAStaleStore) {
    cell_t cell(tracked(1));
    cell_t::handle stale = cell.load();
    cell.exchange(tracked(2));
    EXPECT_FALSE(cell.compare_exchange(stale, tracked(3)));
    EXPECT_EQ(cell.load()->id, 2);
    EXPECT_EQ(live(), 2);  // value 3 was never stored and is gone; 1 (stale) and 2 remain
}

TEST_F(SharedCell, CompareExchangeComparesStoresNotValues) {
    cell_t cell(tracked(1));
    cell_t other(tracked(1));  // an equal value in another store
    EXPECT_FALSE(cell.compare_exchange(other.load(), tracked(2)));
    EXPECT_EQ(cell.load()->id, 1);
    // A value that was stored, replaced, and stored again (as a new store) is a new store.
    cell_t::handle first = cell.load();
    cell.exchange(tracked(5));
    cell.exchange(tracked(1));
    EXPECT_FALSE(cell.compare_exchange(first, tracked(2)));
    EXPECT_EQ(cell.load()->id, 1);
}

TEST_F(SharedCell, CompareExchangeChain) {
    cell_t cell(tracked(0));
    for (int i = 1; i <= 100; ++i) {
        cell_t::handle cur = cell.load();
        ASSERT_EQ(cur->id, i - 1);
        ASSERT_TRUE(cell.compare_exchange(cur, tracked(i)));
        ASSERT_FALSE(cell.compare_exchange(cur, tracked(-i)));  // cur is now stale
    }
    EXPECT_EQ(cell.load()->id, 100);
    EXPECT_EQ(live(), 1);
}

TEST_F(SharedCell, WithCurrentPassesTheStoredValueAndReturnsTheResult) {
    cell_t cell(tracked(7));
    const tracked* stored = &cell.load().get();
    const int id = cell.with_current([&](const tracked& t) {
        EXPECT_EQ(&t, stored);  // the stored value itself, not a copy
        return t.id;
    });
    EXPECT_EQ(id, 7);
    const std::string text = cell.with_current([](const tracked& t) { return t.text; });
    EXPECT_EQ(text, tracked(7).text);
    int calls = 0;
    cell.with_current([&](const tracked&) { ++calls; });  // void result
    EXPECT_EQ(calls, 1);
    auto get_id = [](const tracked& t) { return t.id; };
    static_assert(std::is_same_v<decltype(cell.with_current(get_id)), int>);
    EXPECT_EQ(live(), 1);
}

TEST_F(SharedCell, WithCurrentPropagatesExceptionsAndGivesTheBorrowBack) {
    cell_t cell(tracked(1));
    EXPECT_THROW(cell.with_current([](const tracked&) -> int { throw std::runtime_error("boom"); }),
                 std::runtime_error);
    // The borrow was returned: storing and destroying the cell work (the destructor asserts that
    // no borrow is outstanding in builds with assertions).
    cell.exchange(tracked(2));
    EXPECT_EQ(cell.with_current([](const tracked& t) { return t.id; }), 2);
}

TEST_F(SharedCell, WithCurrentWhileTheValueIsReplacedInside) {
    // f itself replaces the value: the borrow keeps the old value alive until f returns.
    cell_t cell(tracked(1));
    const int seen = cell.with_current([&](const tracked& t) {
        cell.exchange(tracked(2));
        EXPECT_TRUE(t.alive);
        EXPECT_EQ(t.id, 1);
        return t.id;
    });
    EXPECT_EQ(seen, 1);
    EXPECT_EQ(cell.load()->id, 2);
    EXPECT_EQ(live(), 1);  // value 1 freed when with_current gave the borrow back
}

TEST_F(SharedCell, LoadWhileTheValueIsReplacedInsideWithCurrent) {
    cell_t cell(tracked(1));
    cell_t::handle kept;
    cell.with_current([&](const tracked&) {
        kept = cell.load();
        cell.exchange(tracked(2));
    });
    EXPECT_EQ(kept->id, 1);
    EXPECT_EQ(live(), 2);
}

TEST_F(SharedCell, HandlesOutliveTheCell) {
    cell_t::handle h;
    {
        cell_t cell(tracked(1));
        h = cell.load();
    }
    EXPECT_EQ(live(), 1);
    EXPECT_EQ(h->id, 1);
    EXPECT_TRUE(h->alive);
    h = cell_t::handle();
    EXPECT_EQ(live(), 0);
}

TEST_F(SharedCell, HandleCopyMoveAndAssignment) {
    cell_t cell(tracked(1));
    cell_t::handle a = cell.load();
    cell_t::handle b = a;  // copy
    EXPECT_TRUE(b.same_store(a));
    cell_t::handle c = std::move(b);  // move
    EXPECT_TRUE(c.same_store(a));
    cell_t::handle d;
    d = c;  // copy-assign
    EXPECT_TRUE(d.same_store(a));
    d = std::move(c);  // move-assign
    EXPECT_TRUE(d.same_store(a));
    cell_t::handle& same = d;
    d = same;  // self-assignment keeps the value
    EXPECT_EQ(d->id, 1);
    cell.exchange(tracked(2));
    a = cell.load();
    EXPECT_EQ(live(), 2);  // d still holds value 1
    d = a;
    EXPECT_EQ(live(), 1);
    std::vector<cell_t::handle> many(100, cell.load());
    EXPECT_EQ(live(), 1);
    many.clear();
    EXPECT_EQ(cell.load()->id, 2);
}

TEST_F(SharedCell, DestroyingTheCellFreesItsValue) {
    {
        cell_t cell(tracked(1));
        cell.exchange(tracked(2));
        cell.exchange(tracked(3));
        EXPECT_EQ(live(), 1);
    }
    EXPECT_EQ(live(), 0);
}

TEST_F(SharedCell, ManyStoresLeakNothing) {
    cell_t cell(tracked(0));
    std::vector<cell_t::handle> kept;
    for (int i = 1; i <= 1000; ++i) {
        if (i % 3 == 0) {
            kept.push_back(cell.exchange(tracked(i)));
        } else {
            cell_t::handle cur = cell.load();
            if (i % 7 == 0) kept.push_back(cur);
            ASSERT_TRUE(cell.compare_exchange(cur, tracked(i)));
        }
        if (kept.size() > 10) kept.erase(kept.begin());
    }
    EXPECT_EQ(live(), 1 + static_cast<long>(kept.size()));
    kept.clear();
    EXPECT_EQ(live(), 1);
}

TEST_F(SharedCell, WorksWithMoveOnlyValues) {
    pp::shared_cell<std::unique_ptr<int>> cell(std::make_unique<int>(1));
    auto old = cell.exchange(std::make_unique<int>(2));
    EXPECT_EQ(**old, 1);
    EXPECT_EQ(**cell.load(), 2);
    EXPECT_EQ(cell.with_current([](const std::unique_ptr<int>& p) { return *p; }), 2);
}

// Several threads store and read; afterwards every value is accounted for.
TEST_F(SharedCell, ThreadsStoreAndReadWithoutLeaks) {
    constexpr int writers = 3, readers = 3, ops = 3000;
    std::atomic<int> bad{0};
    std::atomic<long> left{0};  // values handed back by exchange or replaced by a CAS
    {
        cell_t cell(tracked(0));
        std::vector<std::thread> threads;
        for (int w = 0; w < writers; ++w) {
            threads.emplace_back([&, w] {
                for (int i = 0; i < ops; ++i) {
                    const int id = 1 + w * ops + i;
                    if (i % 2 == 0) {
                        cell_t::handle old = cell.exchange(tracked(id));
                        if (!old->alive) ++bad;
                        ++left;
                    } else {
                        cell_t::handle cur = cell.load();
                        if (cell.compare_exchange(cur, tracked(id))) ++left;
                        if (!cur->alive) ++bad;
                    }
                }
            });
        }
        for (int r = 0; r < readers; ++r) {
            threads.emplace_back([&] {
                for (int i = 0; i < ops * 2; ++i) {
                    if (i % 2) {
                        if (!cell.load()->alive) ++bad;
                    } else if (!cell.with_current([](const tracked& t) { return t.alive && t.id >= 0; })) {
                        ++bad;
                    }
                }
            });
        }
        for (auto& t : threads) t.join();
        EXPECT_EQ(live(), 1);
    }
    EXPECT_EQ(bad.load(), 0);
    EXPECT_EQ(live(), 0);
    EXPECT_GE(left.load(), writers * ops / 2);
}

// Stores racing plain readers for a short, fixed time. A reader that lost the race with a store
// gives its borrow back while the storing thread may still be between publishing the new value
// and crediting the old one's borrows; the old value must survive until both are done. (The
// window is a few instructions wide: this catches a regression often, not always; the stress
// program runs the same interleaving for longer.)
TEST_F(SharedCell, ExchangeRacingReadersForHalfASecond) {
    constexpr int writers = 4, readers = 4;
    std::atomic<int> bad{0};
    std::atomic<bool> stop{false};
    {
        cell_t cell(tracked(0));
        std::vector<std::thread> threads;
        for (int w = 0; w < writers; ++w) {
            threads.emplace_back([&, w] {
                for (int i = 1; !stop.load(std::memory_order_relaxed); ++i) {
                    cell_t::handle old = cell.exchange(tracked(w * 100000000 + i));
                    if (!old->alive || old->id < 0) ++bad;
                }
            });
        }
        for (int r = 0; r < readers; ++r) {
            threads.emplace_back([&] {
                while (!stop.load(std::memory_order_relaxed)) {
                    if (!cell.with_current([](const tracked& t) { return t.alive; })) ++bad;
                    if (!cell.load()->alive) ++bad;
                }
            });
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        stop = true;
        for (auto& t : threads) t.join();
        EXPECT_EQ(live(), 1);
    }
    EXPECT_EQ(bad.load(), 0);
}

// ---- atom ------------------------------------------------------------------------------------

using map_t = pp::persistent_map<int, long>;
using atom_t = pp::atom<map_t>;

TEST(Atom, DefaultIsEmpty) {
    atom_t a;
    EXPECT_TRUE(a.deref().empty());
}

TEST(Atom, DerefReturnsTheSameVersion) {
    const map_t m{{1, 10}, {2, 20}};
    atom_t a(m);
    EXPECT_TRUE(a.deref().identical(m));
    EXPECT_EQ(a.deref(), m);
}

TEST(Atom, ResetReturnsTheOldMap) {
    const map_t m0{{1, 1}};
    const map_t m1{{2, 2}};
    atom_t a(m0);
    const map_t old = a.reset(m1);
    EXPECT_TRUE(old.identical(m0));
    EXPECT_TRUE(a.deref().identical(m1));
    EXPECT_TRUE(a.reset(map_t()).identical(m1));
    EXPECT_TRUE(a.deref().empty());
}

TEST(Atom, CompareAndSetNeedsTheIdenticalVersion) {
    const map_t m0{{1, 1}, {2, 2}};
    const map_t equal{{2, 2}, {1, 1}};  // equal, but another version
    ASSERT_EQ(m0, equal);
    ASSERT_FALSE(m0.identical(equal));
    const map_t next = m0.set(3, 3);
    atom_t a(m0);
    EXPECT_FALSE(a.compare_and_set(equal, next));
    EXPECT_TRUE(a.deref().identical(m0));
    const map_t copy = m0;  // a copy is the same version
    EXPECT_TRUE(a.compare_and_set(copy, next));
    EXPECT_TRUE(a.deref().identical(next));
    EXPECT_FALSE(a.compare_and_set(m0, m0.set(4, 4)));  // stale
    EXPECT_TRUE(a.deref().identical(next));
}

TEST(Atom, CompareAndSetOnEmptyMaps) {
    // Every empty map is the same (root-less) version, so any empty map matches an empty atom.
    atom_t a;
    EXPECT_TRUE(a.compare_and_set(map_t(), map_t{{1, 1}}));
    EXPECT_EQ(a.deref().size(), 1u);
    EXPECT_FALSE(a.compare_and_set(map_t(), map_t{{2, 2}}));
}

TEST(Atom, SetOfAnUnchangedValueIsTheSameVersion) {
    const map_t m0{{1, 1}};
    atom_t a(m0);
    // set() of the value already there returns the very same version: compare_and_set accepts it.
    EXPECT_TRUE(a.compare_and_set(m0.set(1, 1), m0.set(1, 2)));
    EXPECT_EQ(*a.deref().find(1), 2);
}

TEST(Atom, SwapAppliesTheFunctionAndReturnsThePublishedMap) {
    atom_t a(map_t{{1, 1}});
    int calls = 0;
    const map_t result = a.swap([&](const map_t& m) {
        ++calls;
        return m.set(1, *m.find(1) + 1);
    });
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(*result.find(1), 2);
    EXPECT_TRUE(a.deref().identical(result));
}

TEST(Atom, SwapRetriesWhenTheMapChangesDuringTheFunction) {
    const map_t m0{{1, 0}};
    const map_t newer = m0.set(2, 100);
    atom_t a(m0);
    std::vector<map_t> seen;
    const map_t result = a.swap([&](const map_t& m) {
        seen.push_back(m);
        if (seen.size() == 1) a.reset(newer);  // a concurrent writer gets in first
        return m.set(1, *m.find(1) + 1);
    });
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_TRUE(seen[0].identical(m0));
    EXPECT_TRUE(seen[1].identical(newer));
    EXPECT_EQ(result, (map_t{{1, 1}, {2, 100}}));
    EXPECT_TRUE(a.deref().identical(result));
}

TEST(Atom, SwapPropagatesExceptionsAndLeavesTheMap) {
    const map_t m0{{1, 1}};
    atom_t a(m0);
    EXPECT_THROW(a.swap([](const map_t&) -> map_t { throw std::runtime_error("no"); }), std::runtime_error);
    EXPECT_TRUE(a.deref().identical(m0));
}

TEST(Atom, SwapReturningTheSameVersion) {
    const map_t m0{{1, 1}};
    atom_t a(m0);
    EXPECT_TRUE(a.swap([](const map_t& m) { return m; }).identical(m0));
    EXPECT_TRUE(a.deref().identical(m0));
}

// Node memory through a counting policy: the atom releases every version it held.
std::atomic<long> g_live_nodes{0};

struct counting_policy : pp::default_policy {
    static void* allocate(std::size_t bytes) {
        ++g_live_nodes;
        return ::operator new(bytes);
    }
    static void deallocate(void* p, std::size_t) noexcept {
        --g_live_nodes;
        ::operator delete(p);
    }
};

using counted_map = pp::persistent_map<int, int, std::hash<int>, std::equal_to<int>, std::equal_to<int>, counting_policy>;

TEST(Atom, ReleasesEveryVersion) {
    const long before = g_live_nodes.load();
    {
        pp::atom<counted_map> a;
        for (int i = 0; i < 500; ++i) {
            if (i % 3 == 0) {
                a.reset(a.deref().set(i, i));
            } else if (i % 3 == 1) {
                a.swap([i](const counted_map& m) { return m.set(i, -i); });
            } else {
                const counted_map cur = a.deref();
                EXPECT_TRUE(a.compare_and_set(cur, cur.erase(i - 1)));
            }
        }
        EXPECT_GT(g_live_nodes.load(), before);
    }
    EXPECT_EQ(g_live_nodes.load(), before);
}

TEST(Atom, ThreadsSwapWithoutLostUpdates) {
    constexpr int threads = 4, ops = 2000;
    static constexpr int total_key = -1;
    atom_t a(map_t{{total_key, 0}});
    std::atomic<bool> writers_done{false};
    std::atomic<int> inconsistent{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            for (int i = 0; i < ops; ++i) {
                a.swap([t](const map_t& m) {
                    const long* mine = m.find(t);
                    return m.set(t, (mine ? *mine : 0) + 1).set(total_key, *m.find(total_key) + 1);
                });
            }
        });
    }
    std::thread reader([&] {
        do {
            const map_t snap = a.deref();
            long sum = 0;
            for (const auto& e : snap)
                if (e.first != total_key) sum += e.second;
            if (sum != *snap.find(total_key)) ++inconsistent;
        } while (!writers_done.load());
    });
    for (auto& th : pool) th.join();
    writers_done = true;
    reader.join();
    const map_t final_map = a.deref();
    EXPECT_EQ(inconsistent.load(), 0);
    EXPECT_EQ(*final_map.find(total_key), long(threads) * ops);
    for (int t = 0; t < threads; ++t) EXPECT_EQ(*final_map.find(t), ops) << "thread " << t;
}

}  // namespace
