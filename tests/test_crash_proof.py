"""Hostile use that used to crash the interpreter, leak, or answer wrongly (issue "Crash-proof").

Each case that could take the process down runs in a child interpreter, so that a crash shows
up as a failed test with its output, not as a dead pytest worker.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import textwrap
import weakref

import pytest
from conftest import child_env
from pypersistent import Atom, PersistentMap, TransientMap
import pypersistent


def run_child(body: str, timeout: float = 240) -> str:
    """Runs `body` in a fresh interpreter; fails the test unless it exits 0. Returns stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


# --------------------------------------------------------------------------------------
# Deep nesting: no C recursion driven by user data
# --------------------------------------------------------------------------------------


def test_dropping_a_300k_deep_chain_of_maps_does_not_overflow_the_c_stack() -> None:
    out = run_child(
        """
        from pypersistent import Atom, PersistentMap
        m = PersistentMap()
        for i in range(300_000):
            m = PersistentMap(head=i, tail=m)
        # through transients and Atoms too
        t = PersistentMap().transient()
        for i in range(300_000):
            t = PersistentMap(tail=t.persistent()).transient()
        a = Atom()
        for i in range(300_000):
            a = Atom(PersistentMap(tail=a))
        # transients holding transients, with no map in between
        u = PersistentMap().transient()
        for i in range(300_000):
            u2 = PersistentMap().transient()
            u2["tail"] = u
            u = u2
        del m, t, a, u, u2
        print("freed")
        """
    )
    assert "freed" in out


def test_hash_of_deep_nesting_raises_recursion_error() -> None:
    out = run_child(
        """
        from pypersistent import PersistentMap
        m = PersistentMap()
        for i in range(300_000):
            m = PersistentMap(head=i, tail=m)
        try:
            hash(m)
        except RecursionError:
            print("RecursionError")
        # a shallow one still hashes, and equal maps hash equal
        assert hash(PersistentMap(a=PersistentMap(b=1))) == hash(PersistentMap(a=PersistentMap(b=1)))
        """
    )
    assert "RecursionError" in out


# --------------------------------------------------------------------------------------
# Merges ask __eq__ once per pair
# --------------------------------------------------------------------------------------


class ScriptedKey:
    """Equal to other ScriptedKeys with the same hash according to a shared script of answers
    (True, False, ...), one per __eq__ call; counts the calls."""

    answers: list[bool] = []
    calls = 0

    def __init__(self, name: str, h: int) -> None:
        self.name = name
        self.h = h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        type(self).calls += 1
        return self.answers.pop(0) if self.answers else False

    def __repr__(self) -> str:
        return f"ScriptedKey({self.name!r})"


@pytest.mark.thread_unsafe  # ScriptedKey's script and call count are shared
@pytest.mark.parametrize("script", [[False, True], [True, False]])
@pytest.mark.parametrize("operation", ["or", "update", "transient_update", "ror"])
def test_a_merge_asks_eq_once_where_an_entry_meets_a_subtree(script: list[bool], operation: str) -> None:
    # b holds two keys under fragment 0 of the root (hashes 0 and 32: a subtree); a holds one
    # key with hash 0 there (an entry). The merge meets a's entry against b's subtree.
    b = PersistentMap({ScriptedKey("b0", 0): "b0", ScriptedKey("b32", 32): "b32"})
    a = PersistentMap({ScriptedKey("a0", 0): "a0"})
    ScriptedKey.answers = list(script)
    ScriptedKey.calls = 0
    if operation == "or":
        merged = a | b
    elif operation == "update":
        merged = a.update(b)
    elif operation == "ror":
        merged = b.update(a)
    else:
        t = a.transient()
        t.update(b)
        merged = t.persistent()
    assert ScriptedKey.calls == 1
    items = list(merged.items())
    assert len(merged) == len(items) == len(list(merged)) == len(list(merged.values()))
    same = script[0]
    assert len(merged) == (2 if same else 3)
    values = sorted(v for _, v in items)
    if operation == "ror":  # a's values win
        assert values == (["a0", "b32"] if same else ["a0", "b0", "b32"])
    else:  # b's values win
        assert values == (["b0", "b32"] if same else ["a0", "b0", "b32"])


def test_merges_with_random_equality_keep_len_and_entries_consistent() -> None:
    out = run_child(
        """
        import random
        from pypersistent import PersistentMap
        rng = random.Random(12)
        class Coin:
            def __init__(self, h): self.h = h
            def __hash__(self): return self.h
            def __eq__(self, other): return rng.random() < 0.5
        for trial in range(3000):
            a = PersistentMap({Coin(rng.randrange(9) * 32 ** rng.randrange(3)): i for i in range(12)})
            b = PersistentMap({Coin(rng.randrange(9) * 32 ** rng.randrange(3)): -i for i in range(12)})
            t = a.transient()
            t.update(b)
            for m in (a | b, b | a, a.update(b), t.persistent(), PersistentMap(a).update(b)):
                assert len(m) == len(list(m)) == len(list(m.items())), trial
                assert len(a) == len(list(a)) and len(b) == len(list(b))
        print("consistent")
        """
    )
    assert "consistent" in out


# --------------------------------------------------------------------------------------
# No type can be created by Python code in a state the C code does not expect
# --------------------------------------------------------------------------------------


def internal_types() -> list[type]:
    m = PersistentMap(a=1)
    return [
        type(m.keys()),
        type(m.values()),
        type(m.items()),
        type(iter(m)),
        type(iter(m.items())),
        pypersistent.PersistentMapKeys,
        pypersistent.PersistentMapValues,
        pypersistent.PersistentMapItems,
        pypersistent.PersistentMapIterator,
        TransientMap,
    ]


@pytest.mark.parametrize("make", ["call", "new", "object_new"])
def test_internal_types_cannot_be_instantiated(make: str) -> None:
    for cls in internal_types():
        with pytest.raises(TypeError):
            if make == "call":
                cls()
            elif make == "new":
                cls.__new__(cls)
            else:
                object.__new__(cls)


def test_public_types_build_working_objects_however_created() -> None:
    for cls in (PersistentMap, Atom):
        for obj in (cls(), cls.__new__(cls)):
            assert repr(obj)
    assert len(PersistentMap.__new__(PersistentMap)) == 0
    assert Atom.__new__(Atom).deref() == {}
    for cls in (PersistentMap, Atom, TransientMap, pypersistent.PersistentMapKeys):
        with pytest.raises(TypeError):
            type("Sub", (cls,), {})  # none is a base type


# --------------------------------------------------------------------------------------
# References dropped during an operation are released at once, in their own interpreter
# --------------------------------------------------------------------------------------


class Payload:
    pass


def test_references_dropped_while_a_generator_feeds_a_map_are_released_at_once() -> None:
    holder = [PersistentMap(x=Payload())]

    def feed():
        for i in range(20):
            ref = weakref.ref(holder[0]["x"])
            holder[0] = PersistentMap(x=Payload())  # drops the only map holding the old Payload
            assert ref() is None, "a reference dropped by the generator was held back"
            yield (i, i)

    assert len(PersistentMap(feed())) == 20
    t = PersistentMap().transient()
    t.update(feed())
    assert len(t.persistent()) == 20
    assert len(PersistentMap(a=1).update(feed())) == 21


def test_references_dropped_by_eq_during_a_transient_edit_are_released_at_once() -> None:
    holder = [PersistentMap(x=Payload())]
    seen = []

    class Dropper:
        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            ref = weakref.ref(holder[0]["x"])
            holder[0] = PersistentMap(x=Payload())
            seen.append(ref() is None)
            return other is self

    t = PersistentMap({Dropper(): 1, Dropper(): 2}).transient()
    t[Dropper()] = 3
    assert seen and all(seen)


needs_interpreters_module = pytest.mark.skipif(
    sys.version_info < (3, 13), reason="needs the _interpreters module (Python 3.13+)"
)


@needs_interpreters_module
def test_a_subinterpreter_dropping_maps_in_the_middle_of_an_edit_keeps_its_objects() -> None:
    # A key's __eq__ (called inside a transient edit) and a generator (feeding a build) run a
    # subinterpreter on the same thread, which builds and drops maps of its own objects: each
    # of them must be released by that interpreter, at once, never by the main one later.
    out = run_child(
        """
        import _interpreters
        from pypersistent import PersistentMap
        interp = _interpreters.create()
        SUB = '''
        from pypersistent import PersistentMap
        class Noisy:
            def __del__(self):
                pass
        m = PersistentMap({i: Noisy() for i in range(50)})
        t = m.transient()
        for i in range(50):
            t[i] = Noisy()
        m2 = t.persistent()
        del m, t, m2
        '''
        import textwrap
        SUB = textwrap.dedent(SUB)
        class K:
            def __init__(self, v): self.v = v
            def __hash__(self): return 1
            def __eq__(self, other):
                _interpreters.run_string(interp, SUB)
                return isinstance(other, K) and self.v == other.v
        for _ in range(20):
            base = PersistentMap({K(i): i for i in range(8)})
            t = base.transient()
            t[K(3)] = "x"
            del t[K(4)]
            m = t.persistent()
            def gen():
                for i in range(5):
                    _interpreters.run_string(interp, SUB)
                    yield (K(i), i)
            m2 = PersistentMap(gen())
            m3 = base | m2
        _interpreters.destroy(interp)
        print("ok")
        """
    )
    assert "ok" in out


# --------------------------------------------------------------------------------------
# Legacy subinterpreters (3.10, 3.11): refuse at once instead of deadlocking
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ runs in subinterpreters (test_interpreters.py)")
def test_import_in_a_legacy_subinterpreter_raises_import_error_at_once() -> None:
    out = run_child(
        """
        import _xxsubinterpreters as subinterpreters
        import pypersistent  # the main interpreter has it already: the subinterpreter must still refuse
        CODE = "try:\\n    import pypersistent\\nexcept ImportError as exc:\\n    print('ImportError:', exc)\\nelse:\\n    print('imported')\\n"
        interp = subinterpreters.create()
        subinterpreters.run_string(interp, CODE)
        subinterpreters.destroy(interp)
        print(pypersistent.PersistentMap(a=1)["a"])
        """,
        timeout=60,
    )
    assert "ImportError: pypersistent: subinterpreters need Python 3.12 or later" in out
    assert out.rstrip().endswith("1")


# --------------------------------------------------------------------------------------
# Smaller cases
# --------------------------------------------------------------------------------------


class KeysAttributeRaises:
    @property
    def keys(self) -> object:
        raise ValueError("keys lookup failed")

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([("a", 1)])


def test_an_error_looking_up_keys_propagates_like_dict() -> None:
    with pytest.raises(ValueError, match="keys lookup failed"):
        dict(KeysAttributeRaises())  # the behaviour we follow
    with pytest.raises(ValueError, match="keys lookup failed"):
        PersistentMap(KeysAttributeRaises())
    with pytest.raises(ValueError, match="keys lookup failed"):
        PersistentMap(b=2).update(KeysAttributeRaises())
    t = PersistentMap(b=2).transient()
    with pytest.raises(ValueError, match="keys lookup failed"):
        t.update(KeysAttributeRaises())
    assert t.persistent() == {"b": 2}


def test_a_transient_updates_from_itself_and_from_other_transients() -> None:
    t = PersistentMap(a=1).transient()
    assert t.update(t) is t
    assert t.persistent() == {"a": 1}
    t = PersistentMap(a=1).transient()
    t.update(t, b=2)
    other = PersistentMap(a=10, c=3).transient()
    t.update(other)
    assert t.persistent() == {"a": 10, "b": 2, "c": 3}
    assert other.persistent() == {"a": 10, "c": 3}  # the source stays usable and unchanged


def test_items_views_with_unhashable_values_compare_like_dicts() -> None:
    d = {1: [], 2: {"x": []}}
    m = PersistentMap(d)
    for ours, theirs in ((m.items(), d.items()), (d.items(), m.items()), (m.items(), PersistentMap(d).items())):
        assert ours == theirs and not (ours != theirs)
        assert ours <= theirs and ours >= theirs and not ours < theirs and not ours > theirs
    bigger = dict(d, z=[1])
    assert m.items() < bigger.items() and bigger.items() > m.items()
    assert m.items() != PersistentMap(d).set(1, [0]).items()
    assert m.keys() == d.keys() and m.keys() == {1, 2} and m.keys() < {1, 2, 3}
    assert not (m.keys() == {1, 3}) and m.keys() != {1, 3}
    assert (m.items() == [1]) is False  # not set-like: NotImplemented both ways
