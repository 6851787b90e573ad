// A C++ host that shares one configuration map with Python subinterpreters, both ways, through
// a named cell (SharedAtom in Python, shared_cell_registry in C++):
//
//   1. C++ builds the configuration as a shared_map with the core alone (no Python involved),
//   2. starts Python and publishes the map into the named cell "shared_config.demo",
//   3. runs one subinterpreter per thread (Python 3.12+: each with its own GIL; free-threaded
//      builds too), each of which opens pypersistent.SharedAtom("shared_config.demo"), checks
//      what C++ wrote and counts itself in with a swap; one of them also publishes an update
//      with values of every kind (int, big int, str, bytes, tuples, a nested map),
//   4. destroys the interpreters, shuts Python down and reads the update back in C++ with
//      neutral_value's accessors: a shared_map holds no PyObject*, so it outlives them all.
//
// The cell's map moves in O(1): no interpreter copies or converts the map, only the values it
// reads. Before Python 3.12 (no per-interpreter GIL) the script runs in the main interpreter.
//
// One registry: SharedAtom(name) opens cells of the extension module's registry, which is not
// the host's shared_cell_registry::instance() (the extension hides its symbols), so the host
// asks the extension for it: python::import_shared_registry() (python_bridge.hpp).
//
//   shared_config_host [--interpreters N] [--python PATH]
#include <pypersistent/python_bridge.hpp>
#include <pypersistent/shared_cell_registry.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using pypersistent::get_in;
using pypersistent::neutral_value;
using pypersistent::shared_cell_registry;
using pypersistent::shared_map;

#ifndef PYPERSISTENT_EMBED_PYTHON
#define PYPERSISTENT_EMBED_PYTHON ""  // the interpreter whose environment (venv) to use
#endif

namespace {

constexpr const char* cell_name = "shared_config.demo";

// What every interpreter runs (CELL and WRITER are set in its globals). A failed assert ends
// the script with an exception, which the host reports.
constexpr const char* script = R"PY(
from pypersistent import SharedAtom, SharedMap

cell = SharedAtom(CELL)
config = cell.deref()
# What C++ built arrives as the Python values it stands for, nested maps as SharedMaps.
assert type(config) is SharedMap
assert config["service"] == "billing" and config["ratio"] == 0.25 and config["debug"] is False
assert config["port"] in (8080, 9090)  # 9090 once the writer has published its update
assert config["tags"] == ("eu", "prod")
assert type(config["db"]) is SharedMap and dict(config["db"]) == {"host": "db1", "pool": 16}
assert config["limit"] == 2**64 + 1
# Every interpreter counts itself in: swap retries when another one got in first, so no
# count is lost.
cell.swap(lambda m: m.set("visits", m.get("visits", 0) + 1))
if WRITER:
    cell.swap(lambda m: m.update({
        "port": 9090,
        "retries": (1, "two", (3.5, None)),
        "owner": SharedMap({"city": "Zürich", "ids": (7, -2**70), "raw": b"\x00\xff"}),
    }))
)PY";

// Runs the script in the interpreter of the attached thread state; "" or what went wrong.
std::string run_script(bool writer) {
    PyObject* main = PyImport_AddModule("__main__");  // borrowed
    PyObject* globals = main ? PyModule_GetDict(main) : nullptr;
    PyObject* name = PyUnicode_FromString(cell_name);
    bool ok = globals && name && PyDict_SetItemString(globals, "CELL", name) == 0 &&
              PyDict_SetItemString(globals, "WRITER", writer ? Py_True : Py_False) == 0;
    Py_XDECREF(name);
    PyObject* result = ok ? PyRun_String(script, Py_file_input, globals, globals) : nullptr;
    if (result) {
        Py_DECREF(result);
        return "";
    }
    PyErr_Print();  // the traceback, on stderr
    return "the script failed (traceback above)";
}

#if PY_VERSION_HEX >= 0x030C0000
// Creating and destroying interpreters one at a time: CPython 3.13 does not guard all of it
// for concurrent callers (ThreadSanitizer reports new_interpreter's store to the runtime's
// gilstate.check_enabled and init_static_type's writes to the shared static types). The
// scripts still run at the same time.
std::mutex lifecycle;

// One thread's subinterpreter: created with its own GIL, runs the script, destroyed.
std::string run_in_subinterpreter(PyInterpreterState* main_interp, bool writer) {
    PyInterpreterConfig config = {};
    config.use_main_obmalloc = 0;
    config.allow_fork = 0;
    config.allow_exec = 0;
    config.allow_threads = 1;
    config.allow_daemon_threads = 0;
    config.check_multi_interp_extensions = 1;  // only modules that support isolation
    config.gil = PyInterpreterConfig_OWN_GIL;
    // Creating an interpreter needs an attached thread state; this thread has none yet. The
    // lock is taken before attaching: waiting with a thread state attached can deadlock.
    std::unique_lock<std::mutex> one_at_a_time(lifecycle);
    PyThreadState* main_tstate = PyThreadState_New(main_interp);
    PyEval_RestoreThread(main_tstate);
    PyThreadState* tstate = nullptr;
    PyStatus status = Py_NewInterpreterFromConfig(&tstate, &config);  // detaches main_tstate
    one_at_a_time.unlock();
    std::string error;
    if (PyStatus_Exception(status)) {
        error = std::string("Py_NewInterpreterFromConfig: ") + (status.err_msg ? status.err_msg : "failed");
    } else {
        error = run_script(writer);
        PyEval_SaveThread();  // detached while waiting for the lock
        one_at_a_time.lock();
        PyEval_RestoreThread(tstate);
        Py_EndInterpreter(tstate);  // leaves no thread state attached
        one_at_a_time.unlock();
    }
    PyEval_RestoreThread(main_tstate);
    PyThreadState_Clear(main_tstate);
    PyThreadState_DeleteCurrent();
    return error;
}
#endif

// Whether v is a str equal to the UTF-8 text.
bool is_str(const neutral_value* v, const char* utf8) { return v && v->is_str() && v->str_view() == utf8; }
bool is_int(const neutral_value* v, std::int64_t i) { return v && v->is_small_int() && v->as_int64() == i; }

// The checks of what the Python writer published; "" or the first difference.
std::string check_update(const shared_map& m, long interpreters) {
    if (!is_int(m.find("visits"), interpreters)) return "visits is not the number of interpreters";
    if (!is_int(m.find("port"), 9090)) return "port is not 9090";
    // (1, "two", (3.5, None))
    const neutral_value* r = m.find("retries");
    if (!r || !r->is_tuple() || r->tuple_size() != 3) return "retries is not a 3-tuple";
    const neutral_value& inner = (*r)[2];
    if (!is_int(&(*r)[0], 1) || !is_str(&(*r)[1], "two") || !inner.is_tuple() || inner.tuple_size() != 2 ||
        !inner[0].is_float() || inner[0].as_double() != 3.5 || !inner[1].is_none())
        return "retries is not (1, 'two', (3.5, None))";
    // {"city": "Zürich", "ids": (7, -2**70), "raw": b"\x00\xff"}
    const neutral_value* owner = m.find("owner");
    if (!owner || !owner->is_map() || owner->as_map().size() != 3) return "owner is not a map of 3 entries";
    if (!is_str(get_in(m, {"owner", "city"}), "Z\xC3\xBCrich")) return "owner.city is not 'Zürich'";
    const neutral_value* ids = get_in(m, {"owner", "ids"});
    if (!ids || !ids->is_tuple() || ids->tuple_size() != 2 || !is_int(&(*ids)[0], 7)) return "owner.ids[0] is not 7";
    const neutral_value& big = (*ids)[1];  // -2**70: magnitude limbs {0, 1 << 6}, least significant first
    if (!big.is_big_int() || !big.big_negative() || big.big_limb_count() != 2 || big.big_limbs()[0] != 0 ||
        big.big_limbs()[1] != (std::uint64_t(1) << 6))
        return "owner.ids[1] is not -2**70";
    const neutral_value* raw = get_in(m, {"owner", "raw"});
    if (!raw || !raw->is_bytes() || raw->bytes_view() != std::string_view("\x00\xff", 2)) return "owner.raw is not b'\\x00\\xff'";
    // What C++ wrote and Python left alone.
    if (!is_str(m.find("service"), "billing") || !is_str(get_in(m, {"db", "host"}), "db1") ||
        !is_int(get_in(m, {"db", "pool"}), 16))
        return "the entries C++ wrote changed";
    return "";
}

}  // namespace

int main(int argc, char** argv) {
    long interpreters = 4;
    std::string python = PYPERSISTENT_EMBED_PYTHON;
    if (const char* env = std::getenv("PYPERSISTENT_EMBED_PYTHON")) python = env;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--interpreters") && i + 1 < argc) {
            interpreters = std::atol(argv[++i]);
        } else if (!std::strcmp(argv[i], "--python") && i + 1 < argc) {
            python = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--interpreters N] [--python PATH]\n", argv[0]);
            return 2;
        }
    }
    if (interpreters < 1) interpreters = 1;

    // 1. The configuration, built by the core alone.
    std::uint64_t limit_limbs[2] = {1, 1};  // 2**64 + 1
    const shared_map config{
        {"service", "billing"},
        {"port", 8080},
        {"ratio", 0.25},
        {"debug", false},
        {"tags", neutral_value::tuple({"eu", "prod"})},
        {"db", shared_map{{"host", "db1"}, {"pool", 16}}},
        {"limit", neutral_value::from_limbs(false, limit_limbs, 2)},
    };

    // 2. Python, started as PYTHON so that it finds that environment's site-packages (where
    // pypersistent is installed), and the extension's registry.
    PyConfig py_config;
    PyConfig_InitPythonConfig(&py_config);
    py_config.parse_argv = 0;
    PyStatus status = python.empty() ? PyStatus_Ok()
                                     : PyConfig_SetBytesString(&py_config, &py_config.program_name, python.c_str());
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&py_config);
    PyConfig_Clear(&py_config);
    if (PyStatus_Exception(status)) {
        std::fprintf(stderr, "Python did not start: %s\n", status.err_msg ? status.err_msg : "?");
        return 1;
    }
    shared_cell_registry* registry = pypersistent::python::import_shared_registry();
    if (!registry) {
        PyErr_Print();
        Py_FinalizeEx();
        return 1;
    }
    // The host's handle keeps the cell alive while interpreters open and close it.
    shared_cell_registry::handle cell = registry->open(cell_name);
    cell.reset(config);

    // 3. The interpreters, one per thread.
    std::vector<std::string> errors(interpreters);
    std::string mode;
#if PY_VERSION_HEX >= 0x030C0000
    mode = std::to_string(interpreters) + " subinterpreters with their own GIL";
    PyInterpreterState* main_interp = PyInterpreterState_Get();
    PyThreadState* main_tstate = PyEval_SaveThread();  // the threads must not wait for us
    std::vector<std::thread> threads;
    for (long i = 0; i < interpreters; ++i)
        threads.emplace_back([&errors, main_interp, i] { errors[i] = run_in_subinterpreter(main_interp, i == 0); });
    for (std::thread& t : threads) t.join();
    PyEval_RestoreThread(main_tstate);
#else
    interpreters = 1;
    errors.resize(1);
    mode = "the main interpreter (no per-interpreter GIL before Python 3.12)";
    errors[0] = run_script(true);
#endif
#ifdef Py_GIL_DISABLED
    mode += ", free-threaded";
#endif

    // 4. Python is gone; the maps are not.
    bool ok = Py_FinalizeEx() == 0;
    if (!ok) std::printf("Py_FinalizeEx: FAILED\n");
    for (std::size_t i = 0; i < errors.size(); ++i) {
        if (errors[i].empty()) continue;
        std::printf("interpreter %zu: FAILED: %s\n", i, errors[i].c_str());
        ok = false;
    }
    const shared_map now = cell.deref();
    std::string problem = check_update(now, interpreters);
    // The map C++ published first is a version of its own: the updates left it unchanged.
    if (problem.empty() && (config.size() != 7 || !is_int(config.find("port"), 8080) || config.find("visits")))
        problem = "the original map changed";
    ok = ok && problem.empty();
    std::printf("%s: config read by each, updated by one; read back in C++ (%zu entries): %s\n", mode.c_str(),
                now.size(), problem.empty() ? "as Python wrote it" : problem.c_str());
    std::printf("%s\n", ok ? "all checks passed" : "FAILED");
    return ok ? 0 : 1;
}
