// The smallest user of pypersistent::core, built by tests/cmake_consumers/run.sh.
#include <pypersistent/pypersistent.hpp>

#include <cstdio>
#include <string>

int main() {
    const pypersistent::persistent_map<std::string, int> empty;
    const auto one = empty.set("answer", 42);
    const bool ok = empty.empty() && one.size() == 1 && one.at("answer") == 42;
    std::printf("consumer via %s: %s\n", PYPERSISTENT_CONSUMER_MODE, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
