"""Shared helpers for the PyPersistent test suite.

The key classes below are imported by the test modules with ``from conftest import ...``.
That works because ``tests/`` has no ``__init__.py``: under pytest's default ``prepend``
import mode the directory of this file is put on ``sys.path`` before the test modules of
this directory are imported, and pytest registers this file as the ``conftest`` module.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import sysconfig
from typing import Any

# --------------------------------------------------------------------------------------
# Build facts
# --------------------------------------------------------------------------------------

#: Test modules that need newer syntax than the running interpreter understands.
collect_ignore = ["test_pattern_matching.py"] if sys.version_info < (3, 10) else []

#: True on a free-threaded ("t") build of CPython, whether or not the GIL is enabled now.
FREE_THREADED_BUILD = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


# --------------------------------------------------------------------------------------
# Exceptions raised on purpose by the key classes
# --------------------------------------------------------------------------------------


class HashBoom(Exception):
    """Raised by RaisingHashKey.__hash__."""


class EqBoom(Exception):
    """Raised by RaisingEqKey.__eq__."""


class BoolBoom(Exception):
    """Raised by BadBool.__bool__."""


# --------------------------------------------------------------------------------------
# Key classes
# --------------------------------------------------------------------------------------


class CollidingKey:
    """A well-behaved key with a tiny hash range: ``hash(CollidingKey(v)) == hash(v) % 4``.

    Many keys share a full hash, so lookups must fall back to ``__eq__``.  Note that the
    hash values 0..3 also equal the hashes of the ints 0..3, so these keys collide with
    small int keys too (but are never equal to them).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(self.value) % 4

    def __eq__(self, other: object) -> bool:
        if type(other) is not CollidingKey:
            return NotImplemented
        return bool(self.value == other.value)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __repr__(self) -> str:
        return f"CollidingKey({self.value!r})"

    def __reduce__(self) -> Any:
        return (CollidingKey, (self.value,))


class ConstantHashKey:
    """A well-behaved key whose hash is always the same: every instance collides."""

    __slots__ = ("value",)
    HASH = 1234567

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return self.HASH

    def __eq__(self, other: object) -> bool:
        if type(other) is not ConstantHashKey:
            return NotImplemented
        return bool(self.value == other.value)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __repr__(self) -> str:
        return f"ConstantHashKey({self.value!r})"

    def __reduce__(self) -> Any:
        return (ConstantHashKey, (self.value,))


class RaisingHashKey:
    """A key whose ``__hash__`` raises HashBoom."""

    def __hash__(self) -> int:
        raise HashBoom("hash exploded")

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return "RaisingHashKey()"


class RaisingEqKey:
    """A key with a chosen hash whose ``__eq__`` raises EqBoom.

    Give it the hash of a key already in a map (``RaisingEqKey(hash(k))``) so that the map
    has to call ``__eq__`` to tell the two apart.  Comparing with itself by identity never
    reaches ``__eq__`` in CPython's ``PyObject_RichCompareBool``.
    """

    def __init__(self, hash_value: int = 7) -> None:
        self.hash_value = hash_value

    def __hash__(self) -> int:
        return self.hash_value

    def __eq__(self, other: object) -> bool:
        raise EqBoom("eq exploded")

    def __ne__(self, other: object) -> bool:
        raise EqBoom("ne exploded")

    def __repr__(self) -> str:
        return f"RaisingEqKey({self.hash_value})"


class NotImplementedEqKey:
    """A key whose ``__eq__`` always returns NotImplemented (so ``==`` falls back to
    identity).  All instances share one hash."""

    def __hash__(self) -> int:
        return 99

    def __eq__(self, other: object) -> Any:
        return NotImplemented

    def __ne__(self, other: object) -> Any:
        return NotImplemented

    def __repr__(self) -> str:
        return f"NotImplementedEqKey(at {id(self):#x})"


class BadBool:
    """An object whose truth value cannot be computed."""

    def __bool__(self) -> bool:
        raise BoolBoom("bool exploded")


class BadBoolEqKey:
    """A key whose ``__eq__`` returns an object whose ``__bool__`` raises BoolBoom."""

    def __init__(self, hash_value: int = 5) -> None:
        self.hash_value = hash_value

    def __hash__(self) -> int:
        return self.hash_value

    def __eq__(self, other: object) -> Any:
        return BadBool()

    def __ne__(self, other: object) -> Any:
        return BadBool()

    def __repr__(self) -> str:
        return f"BadBoolEqKey({self.hash_value})"


class Unrelated:
    """A plain object used where "some object that is not a mapping" is needed."""

    def __repr__(self) -> str:
        return "Unrelated()"


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def full_gc() -> None:
    """Collect all generations a few times (finalizers may free more on later passes)."""
    for _ in range(3):
        gc.collect()


def has_hash_collisions(keys: Any) -> bool:
    """Whether two distinct keys in ``keys`` share a hash value."""
    seen: set[int] = set()
    for k in keys:
        h = hash(k)
        if h in seen:
            return True
        seen.add(h)
    return False


def _import_root(module_name: str) -> str | None:
    """The sys.path entry from which ``module_name`` is imported in this process."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return None
    if spec.submodule_search_locations:  # a package: its parent directory
        return os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
    return os.path.dirname(os.path.abspath(spec.origin))


def import_roots() -> list[str]:
    """Directories a child interpreter needs on its path to import the package the same
    way this process does (both the new and the legacy module name)."""
    roots: list[str] = []
    for name in ("pypersistent", "persistent_map_cpp"):
        root = _import_root(name)
        if root and root not in roots:
            roots.append(root)
    return roots


def child_env() -> dict[str, str]:
    """Environment for a ``sys.executable`` subprocess that must import pypersistent."""
    env = dict(os.environ)
    env.pop("PYTHON_GIL", None)
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(import_roots() + existing)
    return env


def pytest_configure(config: Any) -> None:
    # pytest-run-parallel (the 3.13t run with --parallel-threads) runs tests marked so on one
    # thread; elsewhere the marker only needs to be known.
    config.addinivalue_line("markers", "thread_unsafe: uses process-wide state; run on one thread")
