// A complete C++ host of PyPersistent's core: header-only, no Python anywhere.
#include <pypersistent/atom.hpp>
#include <pypersistent/pypersistent.hpp>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using prices = pypersistent::persistent_map<std::string, double>;
using counts = pypersistent::persistent_map<int, long>;

int main() {
    const prices v1{{"apple", 1.25}, {"pear", 0.80}};
    const prices v2 = v1.set("fig", 3.10).erase("pear");  // a new version; v1 is unchanged

    counts::transient_type builder;  // bulk building edits in place, then freezes in O(1)
    for (int i = 0; i < 100000; ++i) builder.set(i, long(i) * i);
    const counts squares = builder.persistent();

    pypersistent::atom<counts> shared(squares);  // lock-free cell: deref / swap / compare_and_set
    std::vector<std::thread> workers;
    for (int id = 0; id < 4; ++id)
        workers.emplace_back([&shared, id] {
            for (int n = 1; n <= 1000; ++n)  // each swap derives a version from the latest one
                shared.swap([&](const counts& m) { return m.set(-1 - id, n).set(id, -n); });
        });
    for (std::thread& t : workers) t.join();
    const counts last = shared.deref();

    bool ok = v1.size() == 2 && v1.at("pear") == 0.80 && v2.size() == 2 && !v2.contains("pear");
    ok = ok && squares.size() == 100000 && squares.at(999) == 998001 && last.size() == 100004;
    for (int id = 0; id < 4; ++id) ok = ok && last.at(-1 - id) == 1000 && last.at(id) == -1000;
    ok = ok && squares.at(3) == 9;  // every version the threads derived left `squares` alone
    std::printf("v1 %zu entries, v2 %zu; squares %zu; after 4x1000 swaps %zu: %s\n", v1.size(),
                v2.size(), squares.size(), last.size(), ok ? "all checks passed" : "FAILED");
    return ok ? 0 : 1;
}
