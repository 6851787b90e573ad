// shared_cell_registry: process-wide named cells holding shared_maps, for O(1) hand-over of a
// map between threads, and (through the Python binding's SharedAtom(name)) between the
// subinterpreters of one process.
//
//   auto cell = shared_cell_registry::instance().open("config");   // created empty if absent
//   cell.reset(shared_map{{"port", 8080}});
//   shared_map now = cell.deref();                                  // wait-free
//   cell.swap([](const shared_map& m) { return m.set("hits", 1); });
//
// Lifetime. open(name) returns a handle (a counted reference) to the cell of that name, creating
// it, holding an empty shared_map, when no cell has that name. The cell lives while any handle to
// it exists; when the last handle goes, the cell is removed from the registry and destroyed, and a
// later open(name) creates a fresh, empty one. Handles may be copied, moved and destroyed from
// any thread.
//
// Thread safety. The registry's name -> cell table is guarded by one mutex, taken by open() and
// by the release of what may be a cell's last handle (opening and closing are rare). Everything
// else is lock-free: copying a handle is one atomic increment, releasing a handle that is not the
// last is one CAS, and deref / reset / compare_and_set / swap are atom<shared_map>'s lock-free
// (deref: wait-free) operations (atom.hpp). A handle count only reaches zero under the mutex, and
// open() only finds cells under the mutex, so a cell that is being closed can never be revived.
//
// One registry per process. instance() is an inline function with a function-local static, and
// C++ gives such a static one instance per *program*; but shared objects are separate programs
// as far as the linker is concerned: each DSO that includes this header and does not share the
// symbol with the others (hidden visibility, RTLD_LOCAL loading, or Windows DLLs) has its own
// registry. For the Python extension this is enough: it is one DSO, loaded once per process and
// shared by every subinterpreter (dlopen returns the same module handle, so its statics are
// process-wide), so all interpreters see one registry. A host that embeds Python *and* opens
// cells from its own C++ code in another DSO must make both use one instance: define
// PYPERSISTENT_SHARED_REGISTRY_EXTERNAL in every translation unit and define
// pypersistent::shared_registry_instance() once, exported, in the DSO that owns it. (Both sides
// must also be built from the same version of these headers: the values' layout is shared.)
// The Python extension hides its symbols, so a host that embeds Python and shares cells with
// SharedAtom uses the extension's registry instead: python::import_shared_registry()
// (python_bridge.hpp; examples/shared_config).
//
// The singleton is allocated once and never destroyed, so handles released during static
// destruction or interpreter finalization never find a destroyed registry.
#pragma once

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "shared_map.hpp"

namespace pypersistent {

class shared_cell_registry;

#if defined(PYPERSISTENT_SHARED_REGISTRY_EXTERNAL)
// Defined (and exported) once by the host; see above.
shared_cell_registry& shared_registry_instance();
#endif

class shared_cell_registry {
    struct cell_entry {
        cell_entry(shared_cell_registry* r, std::string n) : registry(r), name(std::move(n)) {}
        shared_cell_registry* registry;
        const std::string name;
        std::atomic<std::uint64_t> handles{1};  // reaches zero only under registry->mutex_
        shared_atom cell;
    };

public:
    // A counted reference to one named cell.
    class handle {
    public:
        handle() noexcept = default;
        handle(const handle& other) noexcept : entry_(other.entry_) {
            if (entry_) entry_->handles.fetch_add(1, std::memory_order_relaxed);
        }
        handle(handle&& other) noexcept : entry_(std::exchange(other.entry_, nullptr)) {}
        handle& operator=(handle other) noexcept {
            std::swap(entry_, other.entry_);
            return *this;
        }
        ~handle() { close(); }

        // Drops this reference now (the handle becomes empty).
        void close() noexcept {
            if (cell_entry* e = std::exchange(entry_, nullptr)) e->registry->release(e);
        }

        explicit operator bool() const noexcept { return entry_ != nullptr; }
        const std::string& name() const noexcept { return entry_->name; }
        // Whether both handles refer to the same cell.
        bool same_cell(const handle& other) const noexcept { return entry_ == other.entry_; }
        // The number of handles to this cell (a snapshot; for tests and diagnostics).
        std::uint64_t use_count() const noexcept { return entry_ ? entry_->handles.load(std::memory_order_acquire) : 0; }

        // atom<shared_map>'s operations (atom.hpp).
        shared_map deref() const { return entry_->cell.deref(); }
        shared_map reset(shared_map desired) const { return entry_->cell.reset(std::move(desired)); }
        bool compare_and_set(const shared_map& expected, shared_map desired) const {
            return entry_->cell.compare_and_set(expected, std::move(desired));
        }
        template <class F>
        shared_map swap(F&& f) const {
            return entry_->cell.swap(std::forward<F>(f));
        }
        shared_atom& atom() const noexcept { return entry_->cell; }

    private:
        friend class shared_cell_registry;
        explicit handle(cell_entry* e) noexcept : entry_(e) {}  // adopts a count
        cell_entry* entry_ = nullptr;
    };

    // A private registry (tests, or a host that wants several namespaces). Must outlive its
    // handles.
    shared_cell_registry() = default;
    shared_cell_registry(const shared_cell_registry&) = delete;
    shared_cell_registry& operator=(const shared_cell_registry&) = delete;
    ~shared_cell_registry() { assert(cells_.empty() && "shared_cell_registry destroyed while handles are open"); }

    // The process-wide registry (see the top of this file for what "process-wide" takes).
    static shared_cell_registry& instance() {
#if defined(PYPERSISTENT_SHARED_REGISTRY_EXTERNAL)
        return shared_registry_instance();
#else
        static shared_cell_registry* const registry = new shared_cell_registry();  // never destroyed
        return *registry;
#endif
    }

    // The cell called `name`, created (holding an empty map) if there is none.
    handle open(std::string_view name) {
        std::string key(name);
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = cells_.find(key);
        if (it != cells_.end()) {
            it->second->handles.fetch_add(1, std::memory_order_relaxed);
            return handle(it->second.get());
        }
        auto fresh = std::make_unique<cell_entry>(this, key);
        cell_entry* e = fresh.get();
        cells_.emplace(std::move(key), std::move(fresh));
        return handle(e);
    }

    // Whether a cell called `name` is open now, and how many are (snapshots).
    bool contains(std::string_view name) const {
        std::lock_guard<std::mutex> lock(mutex_);
        return cells_.count(std::string(name)) != 0;
    }
    std::size_t size() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return cells_.size();
    }

private:
    void release(cell_entry* e) noexcept {
        // Not the last handle: one CAS, no lock.
        std::uint64_t c = e->handles.load(std::memory_order_relaxed);
        while (c > 1) {
            if (e->handles.compare_exchange_weak(c, c - 1, std::memory_order_acq_rel, std::memory_order_relaxed)) return;
        }
        // Possibly the last: decide under the mutex, where open() may concurrently add one.
        std::unique_ptr<cell_entry> dead;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (e->handles.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
            auto it = cells_.find(e->name);
            assert(it != cells_.end() && it->second.get() == e);
            dead = std::move(it->second);
            cells_.erase(it);
        }
        // `dead` (and the map it holds) is destroyed here, outside the lock.
    }

    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::unique_ptr<cell_entry>> cells_;
};

}  // namespace pypersistent
