"""pytest configuration for PyPersistent's thread stress suite.

Options:
  --stress-mode short|long   how much work each scenario does (default: short, or the
                             value of the environment variable PYPERSISTENT_STRESS).
                             short: the whole suite runs in well under 3 minutes even
                             under ThreadSanitizer on 2 cores. long: ~20x the operations
                             and a longer time cap per phase; see stress/README.md.
  --run-known-bugs           also run the scenarios marked known_bug (reproductions of
                             reported bugs in the extension; they fail, crash or trip
                             TSan until fixed). Env: PYPERSISTENT_STRESS_KNOWN_BUGS=1.

Every scenario is bounded twice: by an operation count that depends on the mode, and by a
wall-clock cap per threaded phase (Budget.seconds), after which the workers stop early and
the invariants are checked on whatever was done.
"""

from __future__ import annotations

import os
import sys

import pytest

from stress_support import Budget, describe_runtime

MODES = ("short", "long")
ENV_VAR = "PYPERSISTENT_STRESS"
KNOWN_BUGS_ENV_VAR = "PYPERSISTENT_STRESS_KNOWN_BUGS"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pypersistent-stress")
    group.addoption(
        "--stress-mode",
        choices=MODES,
        default=None,
        help=f"operation counts of the stress scenarios (default: ${ENV_VAR} or 'short')",
    )
    group.addoption(
        "--run-known-bugs",
        action="store_true",
        default=False,
        help=f"run the known_bug reproductions too (or set ${KNOWN_BUGS_ENV_VAR}=1)",
    )


def _mode(config: pytest.Config) -> str:
    mode = config.getoption("--stress-mode") or os.environ.get(ENV_VAR, "").strip() or "short"
    if mode not in MODES:
        raise pytest.UsageError(f"{ENV_VAR} must be one of {', '.join(MODES)} (got {mode!r})")
    return mode


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_budget_key] = Budget.for_mode(_mode(config))
    config.addinivalue_line(
        "markers",
        "known_bug(reason): reproduces a reported bug in the extension; skipped unless "
        "--run-known-bugs (it may crash the process or stop it with a TSan report)",
    )


def _run_known_bugs(config: pytest.Config) -> bool:
    return bool(config.getoption("--run-known-bugs")) or os.environ.get(KNOWN_BUGS_ENV_VAR, "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if _run_known_bugs(config):
        return
    for item in items:
        marker = item.get_closest_marker("known_bug")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "known bug")
            item.add_marker(pytest.mark.skip(reason=f"known bug (run with --run-known-bugs): {reason}"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    budget = config.stash[_budget_key]
    return [f"pypersistent stress: mode={budget.mode}, phase cap={budget.seconds:g}s; {describe_runtime()}"]


_budget_key = pytest.StashKey[Budget]()


@pytest.fixture(scope="session")
def budget(pytestconfig: pytest.Config) -> Budget:
    return pytestconfig.stash[_budget_key]


@pytest.fixture(autouse=True)
def _fast_switching():
    """On GIL builds, switch threads often so that interleavings still happen."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)
