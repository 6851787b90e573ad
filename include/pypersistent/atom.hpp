// Lock-free shared cells: shared_cell<T> publishes immutable values between threads, and
// atom<Map> builds Clojure's atom (deref / reset / compare_and_set / swap) on it for maps.
//
// Design: split reference counts. Every stored value lives in a heap box that is never reused
// for another value. The cell is one 64-bit word packing the box pointer (low 48 bits) with a
// count of *borrows* in flight (high 16 bits). A reader
//
//   1. borrows: fetch_add on the word, which both reads the pointer and records that the box is
//      in use, so nobody can free it in between (the classic race of "load pointer, then
//      increment its count" cannot happen);
//   2. takes a real reference: the box's own count goes up by one;
//   3. returns the borrow: a CAS that decrements the borrow count, if the cell still holds the
//      same box. If the box was replaced meanwhile, the replacer has moved the borrow count into
//      the box's own count instead (step "transfer" below), so the reader cancels its extra
//      reference with a plain decrement.
//
// While a box is in the cell, its own count carries a large bias (2^40) for "the cell holds me".
// Whoever replaces the box adds (borrows it saw + 1 - bias) in a single fetch_add: the borrows in
// flight become real units, the bias goes away, and one unit is kept for the handle returned to
// the replacer. A borrower that finds the box already replaced gives its unit back at once (step
// 3), possibly before the replacer's fetch_add has credited it: that only takes the count below
// the bias, never to zero, and the count is exact again once the transfer lands. The thread
// whose operation brings the count to zero frees the box. Readers never wait and never retry
// (wait-free); writers retry only when another writer won (lock-free). Boxes are never stored
// twice, so box pointers have no ABA problem.
//
// All synchronisation is through std::atomic read-modify-write operations (no standalone
// fences), which ThreadSanitizer models exactly. The 48-bit pointer packing holds on x86-64 and
// AArch64 Linux user space; a static check rejects other pointer widths.
#pragma once

#include <atomic>
#include <cassert>
#include <cstdint>
#include <utility>

namespace pypersistent {

template <class T>
class shared_cell {
    static_assert(sizeof(void*) == 8, "shared_cell packs a 48-bit pointer and a 16-bit count into 64 bits");

    // While a box is in the cell its count carries a large bias (`cell_units`) instead of one
    // unit for the cell, so that borrowers that lost a race with a replacer may drop their
    // (not yet transferred) units before the replacer credits them without reaching zero.
    static constexpr std::int64_t cell_units = std::int64_t(1) << 40;

    struct box {
        explicit box(T v) : value(std::move(v)) {}
        std::atomic<std::int64_t> refs{cell_units};  // in the cell: the bias, plus handles
        T value;
    };

    static constexpr int count_shift = 48;
    static constexpr std::uint64_t one_borrow = std::uint64_t(1) << count_shift;
    static constexpr std::uint64_t pointer_mask = one_borrow - 1;

    static box* box_of(std::uint64_t word) noexcept { return reinterpret_cast<box*>(word & pointer_mask); }
    static std::uint64_t borrows_of(std::uint64_t word) noexcept { return word >> count_shift; }
    static std::uint64_t pack(box* b) noexcept {
        const auto bits = reinterpret_cast<std::uintptr_t>(b);
        assert((bits & ~pointer_mask) == 0);
        return bits;
    }

    static void add_refs(box* b, std::int64_t delta) noexcept {
        if (b->refs.fetch_add(delta, std::memory_order_acq_rel) + delta == 0) delete b;
    }

public:
    // A counted reference to one stored value; keeps it alive and unchanged.
    class handle {
    public:
        handle() noexcept = default;
        handle(const handle& other) noexcept : box_(other.box_) {
            if (box_) box_->refs.fetch_add(1, std::memory_order_relaxed);
        }
        handle(handle&& other) noexcept : box_(std::exchange(other.box_, nullptr)) {}
        handle& operator=(handle other) noexcept {
            std::swap(box_, other.box_);
            return *this;
        }
        ~handle() {
            if (box_) add_refs(box_, -1);
        }
        const T& get() const noexcept { return box_->value; }
        const T* operator->() const noexcept { return &box_->value; }
        const T& operator*() const noexcept { return box_->value; }
        // Whether both handles refer to the same store (not merely equal values).
        bool same_store(const handle& other) const noexcept { return box_ == other.box_; }

    private:
        friend class shared_cell;
        explicit handle(box* b) noexcept : box_(b) {}  // adopts a unit
        box* box_ = nullptr;
    };

    explicit shared_cell(T initial) : word_(pack(new box(std::move(initial)))) {}
    shared_cell(const shared_cell&) = delete;
    shared_cell& operator=(const shared_cell&) = delete;
    ~shared_cell() {
        const std::uint64_t word = word_.load(std::memory_order_acquire);
        assert(borrows_of(word) == 0);
        add_refs(box_of(word), -cell_units);
    }

    // Wait-free: one fetch_add, one increment, and at most a few CAS attempts that only fail
    // when other readers race on the same word (never because of writers).
    handle load() const noexcept {
        const std::uint64_t seen = word_.fetch_add(one_borrow, std::memory_order_acquire);
        box* b = box_of(seen);
        b->refs.fetch_add(1, std::memory_order_relaxed);
        std::uint64_t current = word_.load(std::memory_order_relaxed);
        while (box_of(current) == b) {
            assert(borrows_of(current) > 0);
            if (word_.compare_exchange_weak(current, current - one_borrow, std::memory_order_release,
                                            std::memory_order_relaxed)) {
                return handle(b);
            }
        }
        // Replaced meanwhile: our borrow was (or will be) moved into the box's count by the
        // replacer. The unit we added is redundant. Until the transfer lands the count still
        // carries the cell's bias, so neither this decrement nor our handle's can free the box.
        b->refs.fetch_sub(1, std::memory_order_relaxed);
        return handle(b);
    }

    // Calls f with the current value while a borrow keeps it alive, and returns what f returns:
    // two read-modify-writes on the cell's word and none on the box, for readers that only
    // need to copy something out (a Python binding increments the stored object's count).
    template <class F>
    auto with_current(F&& f) const {
        const std::uint64_t seen = word_.fetch_add(one_borrow, std::memory_order_acquire);
        box* b = box_of(seen);
        struct give_back {
            const shared_cell* cell;
            box* b;
            ~give_back() {
                std::uint64_t current = cell->word_.load(std::memory_order_relaxed);
                while (box_of(current) == b) {
                    if (cell->word_.compare_exchange_weak(current, current - one_borrow, std::memory_order_release,
                                                          std::memory_order_relaxed)) {
                        return;
                    }
                }
                add_refs(b, -1);  // the replacer turned our borrow into a unit of the box's count
            }
        } returner{this, b};
        return f(static_cast<const T&>(b->value));
    }

    // The current value without any synchronisation: only for code that knows no thread can
    // store meanwhile (a garbage collector that has stopped the world, a destructor).
    const T& unsynchronized_peek() const noexcept { return box_of(word_.load(std::memory_order_relaxed))->value; }

    // Stores `desired`; returns the value it replaced.
    handle exchange(T desired) {
        box* fresh = new box(std::move(desired));
        const std::uint64_t old = word_.exchange(pack(fresh), std::memory_order_acq_rel);
        return retire(old);
    }

    // Stores `desired` only if the cell still holds the store `expected` was loaded from.
    bool compare_exchange(const handle& expected, T desired) {
        box* fresh = new box(std::move(desired));
        std::uint64_t current = word_.load(std::memory_order_relaxed);
        while (box_of(current) == expected.box_) {
            if (word_.compare_exchange_weak(current, pack(fresh), std::memory_order_acq_rel, std::memory_order_relaxed)) {
                retire(current);  // drops the cell's unit; `expected` still holds its own
                return true;
            }
        }
        delete fresh;
        return false;
    }

private:
    // The box left the cell: borrows in flight become real units, the cell's unit goes away.
    handle retire(std::uint64_t old_word) noexcept {
        box* b = box_of(old_word);
        const auto borrows = static_cast<std::int64_t>(borrows_of(old_word));
        // Borrows in flight become real units, the cell's bias goes away, and one unit is kept
        // for the handle we return. Borrowers that already gave up their unit may have taken
        // the count below the bias; the total is now exact and still includes our unit.
        b->refs.fetch_add(borrows + 1 - cell_units, std::memory_order_acq_rel);
        return handle(b);
    }

    mutable std::atomic<std::uint64_t> word_;
};

// Clojure's atom over a persistent map type (anything with identical()): readers take
// consistent snapshots without waiting; writers publish new versions with compare-and-set.
template <class Map>
class atom {
public:
    explicit atom(Map initial = Map()) : cell_(std::move(initial)) {}

    // The current map (wait-free).
    Map deref() const { return cell_.load().get(); }

    // Replaces the map; returns the previous one.
    Map reset(Map desired) { return cell_.exchange(std::move(desired)).get(); }

    // Replaces the map with `desired` only if the current one is `expected` (the same version:
    // identical(), not merely equal).
    bool compare_and_set(const Map& expected, Map desired) {
        while (true) {
            auto current = cell_.load();
            if (!current->identical(expected)) return false;
            if (cell_.compare_exchange(current, desired)) return true;
        }
    }

    // Applies f to the current map until the result can be published without another writer
    // having changed the map meanwhile; returns the published map. f may run several times.
    template <class F>
    Map swap(F&& f) {
        while (true) {
            auto current = cell_.load();
            Map next = f(current.get());
            if (cell_.compare_exchange(current, next)) return next;
        }
    }

private:
    shared_cell<Map> cell_;
};

}  // namespace pypersistent
