// A C++ program that embeds Python (pybind11::embed) and shares one persistent map between both
// languages, without copying it:
//
//   1. C++ builds a map of 100,000 PyLong entries (k -> k) with a transient,
//   2. hands it to Python as a PersistentMap (to_python: the same trie, no copy) inside a
//      pypersistent.Atom,
//   3. runs workers.py, whose Python threads publish new versions through Atom.swap(),
//   4. while C++ std::threads take snapshots of the same Atom (atom_snapshot), check their
//      invariants, hold python_map copies and drop them on those threads,
//   5. and at the end reads the final map back in C++ (from_python) and checks every entry.
//
// The rules it follows (python_bridge.hpp): to_python / from_python need an attached thread
// state, and so does anything that turns a PyObject* into a value (PyLong_AsLong) or looks a
// key up (hashing, comparing). With a GIL, snapshots and copies of python_maps need the GIL
// too, so the readers hold it for each iteration. Free-threaded, sizes, identity, copies and
// drops of python_maps need no thread state (a drop attaches one itself when it releases the
// last reference), and neither does atom_snapshot (PYPERSISTENT_EMBED_BARE_SNAPSHOTS, on by
// default, exercises exactly that).
//
//   embed_host [--stress] [--spin] [--steps N] [--threads N] [--readers N] [--script PATH] [--python PATH]
#include <pybind11/embed.h>

#include <pypersistent/python_bridge.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace py = pybind11;
namespace bridge = pypersistent::python;
using bridge::object_map;
using bridge::python_map;

#ifndef PYPERSISTENT_EMBED_PYTHON
#define PYPERSISTENT_EMBED_PYTHON ""  // the interpreter whose environment (venv) to use
#endif
#ifndef PYPERSISTENT_EMBED_WORKERS
#define PYPERSISTENT_EMBED_WORKERS "workers.py"
#endif

namespace {

#ifdef Py_GIL_DISABLED
constexpr bool free_threaded = true;
#else
constexpr bool free_threaded = false;
#endif

struct settings {
    long entries = 100000;
    long py_threads = 4;
    long steps = 5000;  // per Python thread; threads * steps <= entries
    long readers = 2;   // C++ threads
    bool spin = false;  // free-threaded readers never yield the CPU between snapshots
    std::string script = PYPERSISTENT_EMBED_WORKERS;
    std::string python = PYPERSISTENT_EMBED_PYTHON;
};

// The Python error indicator as text (needs a thread state); clears it. Plain C API, so that
// it works on any thread that attached a thread state of its own.
std::string fetch_python_error() {
    PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
    PyErr_Fetch(&type, &value, &traceback);
    if (!type) return "python_error without an exception set";
    PyErr_NormalizeException(&type, &value, &traceback);
    std::string text = reinterpret_cast<PyTypeObject*>(type)->tp_name;
    if (PyObject* str = PyObject_Str(value ? value : type)) {
        if (const char* utf8 = PyUnicode_AsUTF8(str)) text += std::string(": ") + utf8;
        Py_DECREF(str);
    }
    PyErr_Clear();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return text;
}

// Runs f with a thread state of `interp` attached; returns what went wrong, or "". Exceptions
// must not cross with_thread_state (it would leave its temporary thread state attached).
template <class F>
std::string attached(PyInterpreterState* interp, F&& f) {
    std::string error;
    bridge::with_thread_state(interp, [&] {
        try {
            f();
        } catch (const bridge::python_error&) {
            error = fetch_python_error();
        } catch (const std::exception& e) {
            error = e.what();
        }
    });
    return error;
}

// Whether free-threaded readers call atom_snapshot with no thread state at all, as the bridge
// allows (the extension attaches one itself in the rare case it must drop the last reference
// to a replaced map object on such a thread).
#ifndef PYPERSISTENT_EMBED_BARE_SNAPSHOTS
#define PYPERSISTENT_EMBED_BARE_SNAPSHOTS 1
#endif
constexpr bool bare_snapshots = free_threaded && PYPERSISTENT_EMBED_BARE_SNAPSHOTS;

// A python_map for a snapshot taken on a thread that may have no thread state. python_map's
// own constructor records PyInterpreterState_Get(), so it needs one; use a constructor that
// takes the interpreter where the bridge has it.
template <class PM = python_map>
PM keep(object_map m, PyInterpreterState* interp) {
    if constexpr (std::is_constructible<PM, object_map, PyInterpreterState*>::value) {
        return PM(std::move(m), interp);
    } else {
        PM kept;
        bridge::with_thread_state(interp, [&] { kept = PM(std::move(m)); });
        return kept;
    }
}
constexpr const char* snapshot_mode() {
    if (!free_threaded) return "under the GIL";
    if (!bare_snapshots) return "with a thread state attached for atom_snapshot only";
    if (std::is_constructible<python_map, object_map, PyInterpreterState*>::value) return "without a thread state";
    return "without a thread state (wrapped into python_map with one)";
}

// Keys the checks look up, made once by the main thread.
struct key_set {
    py::object total;
    std::vector<py::object> counters;
};

long touched_key(long worker, long n, long threads) { return worker + threads * (n - 1); }

// Value of `key` as a C long, or `missing`. Needs a thread state. Throws python_error.
long lookup(const object_map& m, PyObject* key, long missing) {
    PyObject* const* v = m.find(key);  // hashes and compares keys: Python API
    if (!v) return missing;
    const long r = PyLong_AsLong(*v);
    if (r == -1 && PyErr_Occurred()) throw bridge::python_error{};
    return r;
}
long lookup(const object_map& m, long key, long missing) {
    PyObject* k = PyLong_FromLong(key);
    if (!k) throw bridge::python_error{};
    struct drop { PyObject* o; ~drop() { Py_DECREF(o); } } d{k};
    return lookup(m, k, missing);
}

// workers.py's invariants, which every published version satisfies. Needs a thread state.
// Returns "" or what is wrong; `total` receives map["total"].
std::string check_version(const object_map& m, const key_set& keys, const settings& s, long& total) {
    total = lookup(m, keys.total.ptr(), 0);
    long sum = 0, present = total > 0 ? 1 : 0;
    for (long w = 0; w < s.py_threads; ++w) {
        const long c = lookup(m, keys.counters[w].ptr(), 0);
        sum += c;
        present += c > 0;
        if (c > 0) {
            const long last = touched_key(w, c, s.py_threads);
            if (lookup(m, last, 0) != -last - 1) return "entry " + std::to_string(last) + " not modified";
            if (lookup(m, w, 0) != -w - 1) return "entry " + std::to_string(w) + " not modified";
        }
        const long next = touched_key(w, c + 1, s.py_threads);
        if (next < s.entries && lookup(m, next, -1) != next) return "entry " + std::to_string(next) + " modified early";
    }
    if (long(m.size()) != s.entries + present) return "size " + std::to_string(m.size()) + " != entries + keys present";
    if (total != sum) return "total " + std::to_string(total) + " != sum of counters " + std::to_string(sum);
    return "";
}

struct shared_state {
    const bridge::c_api* api;
    PyInterpreterState* interp;
    PyObject* atom;  // kept alive by the main thread until the readers are joined
    const key_set* keys;
    const settings* s;
    std::atomic<bool> done{false};
};

struct reader_result {
    long snapshots = 0;     // atom_snapshot calls
    long versions = 0;      // distinct versions among them (consecutive snapshots differing)
    long deep_checks = 0;   // snapshots whose values were read and checked
    long max_total = 0;
    std::string failure;
};

// One C++ reader thread. `inherited` is a python_map copy handed over by the main thread; the
// reader drops it when it ends.
void reader(shared_state& st, python_map inherited, reader_result& out) {
    const settings& s = *st.s;
    std::vector<python_map> held(8);  // recent snapshots, dropped on this thread as they age
    std::size_t slot = 0;
    long last_total = -1;

    // One snapshot: returns "" or what is wrong. With a GIL all of it runs under the GIL. On
    // free-threaded builds only the value reads (and, see bare_snapshots, atom_snapshot itself)
    // attach a thread state; sizes, identity, copies and drops of python_maps need none.
    auto one = [&]() -> std::string {
        python_map kept;
        if (bare_snapshots) {
            kept = keep(bridge::atom_snapshot(st.api, st.atom), st.interp);  // retains the root: no copy
        } else {
            std::string error = attached(st.interp, [&] { kept = python_map(bridge::atom_snapshot(st.api, st.atom)); });
            if (!error.empty()) return error;
        }
        ++out.snapshots;
        // Size alone needs no Python: ENTRIES ints plus at most THREADS counters and "total".
        if (long(kept->size()) < s.entries || long(kept->size()) > s.entries + s.py_threads + 1)
            return "snapshot of size " + std::to_string(kept->size());
        if (!kept->identical(held[(slot + held.size() - 1) % held.size()].map())) ++out.versions;
        held[slot] = kept;  // the copy it replaces is released here, on this thread
        slot = (slot + 1) % held.size();

        if ((out.snapshots - 1) % (free_threaded ? 4 : 1) != 0) return "";  // with a GIL: each one
        std::string problem;
        std::string error = attached(st.interp, [&] {  // reading PyLong values: thread state
            long total = 0;
            problem = check_version(kept.map(), *st.keys, s, total);
            if (problem.empty() && total < last_total)
                problem = "total went back from " + std::to_string(last_total) + " to " + std::to_string(total);
            last_total = total;
            if (total > out.max_total) out.max_total = total;
        });
        ++out.deep_checks;
        return error.empty() ? problem : error;
    };

    auto guarded = [&] {
        try {
            out.failure = one();
        } catch (const bridge::python_error&) {
            out.failure = free_threaded && !bridge::current_thread_state() ? "atom_snapshot failed" : fetch_python_error();
        } catch (const std::exception& e) {
            out.failure = e.what();
        }
    };
    while (!st.done.load(std::memory_order_acquire) && out.failure.empty()) {
        if (free_threaded) {
            guarded();  // no thread state, except while values are read
            if (!s.spin) std::this_thread::yield();  // more interleaving with the workers on few cores
        } else {
            {
                py::gil_scoped_acquire gil;  // with a GIL, snapshots and python_map copies need it
                guarded();
            }
            std::this_thread::sleep_for(std::chrono::microseconds(100));  // let the workers on
        }
    }
    auto drop_all = [&] {
        held.clear();
        inherited = python_map();
    };
    if (free_threaded) {
        drop_all();  // each release attaches a thread state only if it drops the last reference
    } else {
        py::gil_scoped_acquire gil;
        drop_all();
    }
}

// Every entry of the final map, read back in C++ after the workers are done.
std::string check_final(const object_map& m, const key_set& keys, const settings& s) {
    long total = 0;
    std::string problem = check_version(m, keys, s, total);
    if (!problem.empty()) return problem;
    if (total != s.py_threads * s.steps) return "total " + std::to_string(total);
    long modified = 0, ints = 0;
    for (const auto& entry : m) {  // iterating only reads pointers; the values need Python
        if (!PyLong_Check(entry.first)) continue;
        const long k = PyLong_AsLong(entry.first), v = PyLong_AsLong(entry.second);
        ++ints;
        const bool expect_modified = k / s.py_threads < s.steps;  // step n of worker k % T
        if (v != (expect_modified ? -k - 1 : k)) return "entry " + std::to_string(k) + " = " + std::to_string(v);
        modified += expect_modified;
    }
    if (ints != s.entries || modified != total) return "modified " + std::to_string(modified) + " entries";
    return "";
}

int run(const settings& s) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    auto ms = [&] { return long(std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0).count()); };

    py::module_ pypersistent = py::module_::import("pypersistent");
    const bridge::c_api* api = bridge::import_c_api();
    if (!api) throw py::error_already_set();
    PyInterpreterState* interp = PyInterpreterState_Get();
    std::printf("pypersistent from %s\n", py::str(pypersistent.attr("__file__")).cast<std::string>().c_str());

    // 1. The map, built in C++ through a transient of PyObject* keys and values.
    object_map base;
    {
        bridge::deferred_releases scope;  // transient edits: no Python code runs mid-edit
        bridge::object_transient t;
        for (long k = 0; k < s.entries; ++k) {
            py::object key = py::reinterpret_steal<py::object>(PyLong_FromLong(k));
            if (!key) throw py::error_already_set();
            t.set(key.ptr(), key.ptr());  // the trie takes its own references
        }
        base = t.persistent();
    }

    // 2. Into Python without copying: the PersistentMap shares base's trie.
    py::object as_python = py::reinterpret_steal<py::object>(bridge::to_python(api, base));
    if (!as_python) throw py::error_already_set();
    const bool shared_trie = bridge::from_python(api, as_python.ptr()).identical(base);
    py::object atom = pypersistent.attr("Atom")(as_python);
    const bool atom_shares = bridge::atom_snapshot(api, atom.ptr()).identical(base);
    std::printf("C++ built %zu entries in %ld ms; PersistentMap of %zu shares the trie: %s; Atom too: %s\n",
                base.size(), ms(), size_t(py::len(as_python)), shared_trie ? "yes" : "NO", atom_shares ? "yes" : "NO");

    key_set keys;
    keys.total = py::str("total");
    for (long w = 0; w < s.py_threads; ++w) keys.counters.push_back(py::str("counter:" + std::to_string(w)));

    // 3. + 4. C++ readers first, then the Python workers. With a GIL, hand it over more often
    // than every 5 ms, so that the readers see many of the versions while the workers run.
    if (!free_threaded) py::module_::import("sys").attr("setswitchinterval")(0.0002);
    if (free_threaded) {
        // CPython 3.13t immortalizes some objects when the first thread state other than the
        // main one is made, and marks that done with a plain store that the readers' first
        // PyThreadState_New would race on (ThreadSanitizer reports it, inside CPython). Make
        // one here, on the main thread, first.
        PyThreadState* first = PyThreadState_New(interp);
        if (!first) throw std::runtime_error("PyThreadState_New failed");
        PyThreadState_Clear(first);
        PyThreadState_Delete(first);
    }
    py::dict scope;
    scope["__name__"] = "__embed__";
    scope["__file__"] = s.script;
    scope["__builtins__"] = py::module_::import("builtins");
    scope["atom"] = atom;
    scope["THREADS"] = s.py_threads;
    scope["STEPS"] = s.steps;
    scope["ENTRIES"] = s.entries;
    shared_state st{api, interp, atom.ptr(), &keys, &s};
    std::vector<reader_result> results(std::size_t(s.readers));
    std::vector<std::thread> readers;
    for (long r = 0; r < s.readers; ++r) {
        python_map copy{base};  // made here, with the GIL; dropped by the reader
        readers.emplace_back(reader, std::ref(st), std::move(copy), std::ref(results[std::size_t(r)]));
    }

    std::string script_error;
    const long script_started = ms();
    try {
        py::eval_file(s.script, scope);
    } catch (const std::exception& e) {  // py::error_already_set, or the file not found
        script_error = e.what();
    }
    const long script_ms = ms() - script_started;
    st.done.store(true, std::memory_order_release);
    {
        py::gil_scoped_release no_gil;  // the readers may be waiting for it
        for (std::thread& t : readers) t.join();
    }

    bool ok = shared_trie && atom_shares && script_error.empty();
    if (!script_error.empty()) std::printf("workers.py failed: %s\n", script_error.c_str());
    long snapshots = 0, versions = 0, deep = 0;
    for (std::size_t r = 0; r < results.size(); ++r) {
        const reader_result& rr = results[r];
        std::printf("C++ reader %zu: %ld snapshots, %ld distinct versions, %ld checked in depth (total up to %ld)%s%s\n",
                    r, rr.snapshots, rr.versions,
                    rr.deep_checks, rr.max_total, rr.failure.empty() ? "" : ": FAILED: ", rr.failure.c_str());
        ok = ok && rr.failure.empty() && rr.snapshots > 0;
        snapshots += rr.snapshots;
        versions += rr.versions;
        deep += rr.deep_checks;
    }

    // 5. The final map, back in C++.
    object_map final_map = bridge::from_python(api, atom.attr("deref")().ptr());
    std::string problem;
    try {
        problem = check_final(final_map, keys, s);
    } catch (const bridge::python_error&) {
        problem = fetch_python_error();
    }
    // The map C++ built first is a version too: the workers' versions left it as it was.
    long unchanged = 0;
    for (const auto& entry : base) unchanged += PyLong_AsLong(entry.first) == PyLong_AsLong(entry.second);
    if (problem.empty() && unchanged != s.entries) problem = "the original map changed";
    ok = ok && problem.empty();
    std::printf("workers.py: %ld Python threads x %ld swaps in %ld ms; final map read back in C++: %zu entries, %s\n",
                s.py_threads, s.steps, script_ms, final_map.size(), problem.empty() ? "every entry as expected" : problem.c_str());
    std::printf("%s build; snapshots taken %s; %ld snapshots, %ld versions seen, %ld checked in depth: %s\n",
                free_threaded ? "free-threaded" : "GIL",
                snapshot_mode(),
                snapshots, versions, deep, ok ? "all checks passed" : "FAILED");
    return ok ? 0 : 1;
}

bool parse(int argc, char** argv, settings& s) {
    if (const char* env = std::getenv("PYPERSISTENT_EMBED_PYTHON")) s.python = env;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        const char* v = nullptr;
        if (a == "--stress") {
            s.steps = s.entries / s.py_threads;  // every entry modified once
            s.readers = 3;
        } else if (a == "--spin") {
            s.spin = true;
        } else if (a == "--steps" && (v = next())) {
            s.steps = std::atol(v);
        } else if (a == "--threads" && (v = next())) {
            s.py_threads = std::atol(v);
        } else if (a == "--readers" && (v = next())) {
            s.readers = std::atol(v);
        } else if (a == "--script" && (v = next())) {
            s.script = v;
        } else if (a == "--python" && (v = next())) {
            s.python = v;
        } else {
            std::fprintf(stderr, "usage: %s [--stress] [--spin] [--steps N] [--threads N] [--readers N] [--script PATH] [--python PATH]\n", argv[0]);
            return false;
        }
    }
    if (s.py_threads < 1 || s.steps < 1 || s.readers < 1 || s.py_threads * s.steps > s.entries) {
        std::fprintf(stderr, "need threads, steps, readers >= 1 and threads * steps <= %ld\n", s.entries);
        return false;
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    settings s;
    if (!parse(argc, argv, s)) return 2;

    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;
    if (!s.python.empty()) {
        // As if started as that interpreter: its prefix, and its venv's site-packages if any.
        PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, s.python.c_str());
        if (PyStatus_Exception(status)) {
            PyConfig_Clear(&config);
            std::fprintf(stderr, "bad --python path\n");
            return 2;
        }
    }
    py::scoped_interpreter interpreter(&config, 0, nullptr, false);
    try {
        py::module_ sys = py::module_::import("sys");
        std::printf("embedded Python %s (prefix %s)\n", py::str(sys.attr("version")).cast<std::string>().c_str(),
                    py::str(sys.attr("prefix")).cast<std::string>().c_str());
        return run(s);
    } catch (const std::exception& e) {  // py::error_already_set included: report it while
        std::fprintf(stderr, "embed_host: %s\n", e.what());  // the interpreter still runs
        return 1;
    }
}
