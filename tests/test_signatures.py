"""Docstrings, inspect.signature and argument errors of the public API (issue 15).

Every public type and method carries a docstring whose text signature (Argument Clinic's
``name($self, a, /)\\n--\\n\\n`` form) gives inspect.signature; the signatures agree with what the
runtime accepts and with the stub (__init__.pyi); and argument errors name the method called,
aliases included, as CPython's builtins do ("PersistentMap.set() takes exactly 2 arguments").
"""

import ast
import inspect
import pathlib
import sys
import types
import uuid

import pytest

import pypersistent
from pypersistent import (
    Atom,
    PersistentList,
    PersistentListIterator,
    PersistentMap,
    PersistentMapItems,
    PersistentMapIterator,
    PersistentMapKeys,
    PersistentMapValues,
    PersistentSet,
    PersistentSetIterator,
    PersistentSortedDict,
    PersistentSortedDictItems,
    PersistentSortedDictIterator,
    PersistentSortedDictKeys,
    PersistentSortedDictValues,
    SharedAtom,
    SharedMap,
    TransientList,
    TransientMap,
    TransientSet,
    TransientSharedMap,
    TransientSortedDict,
)

# ---- what is public -------------------------------------------------------------------------

EXPORTED_TYPES = sorted({getattr(pypersistent, n) for n in pypersistent.__all__ if isinstance(getattr(pypersistent, n), type)},
                        key=lambda t: t.__name__)
VIEW_AND_ITERATOR_TYPES = [PersistentMapKeys, PersistentMapValues, PersistentMapItems, PersistentMapIterator,
                           PersistentListIterator, PersistentSetIterator, PersistentSortedDictKeys,
                           PersistentSortedDictValues, PersistentSortedDictItems, PersistentSortedDictIterator]
PUBLIC_TYPES = EXPORTED_TYPES + VIEW_AND_ITERATOR_TYPES
# Types Python code may call (the others cannot be instantiated, or only raise).
CONSTRUCTIBLE = [PersistentMap, PersistentList, PersistentSet, PersistentSortedDict, Atom]
PUBLIC_DUNDERS = {"__class_getitem__", "__copy__", "__deepcopy__", "__reduce__", "__reversed__", "__enter__", "__exit__"}
BUILTIN_METHOD_TYPES = (types.MethodDescriptorType, types.ClassMethodDescriptorType, types.BuiltinMethodType)


def public_methods(tp):
    """(name, descriptor) for every public method defined by tp itself."""
    for name, attr in sorted(vars(tp).items()):
        if not isinstance(attr, BUILTIN_METHOD_TYPES):
            continue
        if name.startswith("_") and name not in PUBLIC_DUNDERS:
            continue
        yield name, attr


ALL_METHODS = [(tp, name) for tp in PUBLIC_TYPES for name, _ in public_methods(tp)]


def method_id(case):
    tp, name = case
    return f"{tp.__name__}.{name}"


def test_the_walk_finds_the_api():
    assert {PersistentMap, TransientMap, PersistentList, TransientList, PersistentSet, TransientSet, Atom} <= set(EXPORTED_TYPES)
    names = {method_id(c) for c in ALL_METHODS}
    for expected in ["PersistentMap.set", "PersistentMap.fromkeys", "PersistentMap.__class_getitem__", "TransientMap.pop",
                     "PersistentList.__reversed__", "TransientSet.__exit__", "Atom.swap", "PersistentMapKeys.isdisjoint"]:
        assert expected in names
    assert len(ALL_METHODS) > 100


def summary_of(doc):
    """The first line of a docstring (after a text signature block, which __doc__ drops)."""
    return doc.strip().splitlines()[0].strip()


def looks_like_a_signature(line, name):
    return line.startswith(f"{name}(") and (line.endswith(")") or "->" in line)


# ---- docstrings and signatures --------------------------------------------------------------------


@pytest.mark.parametrize("tp", PUBLIC_TYPES, ids=lambda t: t.__name__)
def test_type_has_a_docstring(tp):
    assert tp.__doc__ and tp.__doc__.strip()
    line = summary_of(tp.__doc__)
    assert len(line) > 10 and not looks_like_a_signature(line, tp.__name__), line


@pytest.mark.parametrize("tp", CONSTRUCTIBLE + [TransientMap, TransientList, TransientSet, TransientSortedDict], ids=lambda t: t.__name__)
def test_type_has_a_signature(tp):
    assert tp.__text_signature__ is not None
    inspect.signature(tp)


@pytest.mark.parametrize("case", ALL_METHODS, ids=method_id)
def test_method_has_a_docstring_and_signature(case):
    tp, name = case
    method = vars(tp)[name]
    doc = method.__doc__
    assert doc and doc.strip(), f"{tp.__name__}.{name} has no docstring"
    line = summary_of(doc)
    assert len(line) > 5 and not looks_like_a_signature(line, name), line
    assert method.__text_signature__ is not None, f"{tp.__name__}.{name}: no text signature"
    sig = inspect.signature(getattr(tp, name))
    for p in sig.parameters.values():
        if p.default is not p.empty:
            assert p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


# ---- calling with the signature's shape --------------------------------------------------------------


def _watcher(old, new):
    pass


def _watched(atom):
    atom.watch(_watcher)
    return atom


def instance_of(tp):
    """A fresh instance with a little content (a transient is consumed by some calls)."""
    makers = {
        PersistentMap: lambda: PersistentMap({1: 2, 3: 4}),
        TransientMap: lambda: PersistentMap({1: 2, 3: 4}).transient(),
        PersistentList: lambda: PersistentList([1, 2, 3]),
        TransientList: lambda: PersistentList([1, 2, 3]).transient(),
        PersistentSet: lambda: PersistentSet({1, 2, 3}),
        TransientSet: lambda: PersistentSet({1, 2, 3}).transient(),
        Atom: lambda: _watched(Atom(PersistentMap({1: 2}))),
        PersistentMapKeys: lambda: PersistentMap({1: 2}).keys(),
        PersistentMapValues: lambda: PersistentMap({1: 2}).values(),
        PersistentMapItems: lambda: PersistentMap({1: 2}).items(),
        PersistentMapIterator: lambda: iter(PersistentMap({1: 2})),
        PersistentListIterator: lambda: iter(PersistentList([1])),
        PersistentSetIterator: lambda: iter(PersistentSet([1])),
        SharedMap: lambda: SharedMap({1: 2, 3: 4}),
        TransientSharedMap: lambda: SharedMap({1: 2, 3: 4}).transient(),
        SharedAtom: lambda: SharedAtom(f"test_signatures-{uuid.uuid4()}"),  # a cell of its own
        PersistentSortedDict: lambda: PersistentSortedDict({1: 2, 3: 4}),
        TransientSortedDict: lambda: PersistentSortedDict({1: 2, 3: 4}).transient(),
        PersistentSortedDictKeys: lambda: PersistentSortedDict({1: 2}).keys(),
        PersistentSortedDictValues: lambda: PersistentSortedDict({1: 2}).values(),
        PersistentSortedDictItems: lambda: PersistentSortedDict({1: 2}).items(),
        PersistentSortedDictIterator: lambda: iter(PersistentSortedDict({1: 2})),
    }
    return makers[tp]()


# A value for each parameter name the signatures use, so that the call succeeds.
SAMPLES = {
    "key": 1,
    "value": 2,
    "x": 1,
    "index": 1,
    "other": {5: 6},
    "iterable": [1, 7],
    "items": [1, 7],
    "values": [5, 6],
    "mapping": {1: 2},
    "memo": {},
    "item": int,
    "fn": lambda current: current,
    "expected": None,
    "new": PersistentMap(),
    "exc_type": None,
    "exc": None,
    "tb": None,
    "start": 1,
    "end": 3,
}


def sample_for(tp, name, param):
    if name == "diff":
        return instance_of(tp)
    if tp is Atom and name in ("watch", "unwatch"):
        return _watcher  # every sample Atom watches it
    if tp is PersistentList and name == "index" and param.name == "value":
        return 2  # must be in the list
    if tp is SharedAtom and name == "compare_and_set" and param.name == "expected":
        return SharedMap()
    if tp in (PersistentMapKeys, PersistentMapItems, PersistentSortedDictKeys, PersistentSortedDictItems):
        return [(7, 8)]
    return SAMPLES[param.name]


def call_parts(tp, name, sig, with_defaults):
    args, kwargs = [], {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not p.empty:
            if not with_defaults:
                continue
            value = p.default
        else:
            value = sample_for(tp, name, p)
        if p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return args, kwargs


def bound(tp, name):
    """The callable: bound to a fresh instance, or to the class for classmethods."""
    if isinstance(vars(tp)[name], types.ClassMethodDescriptorType):
        return getattr(tp, name)
    return getattr(instance_of(tp), name)


def comparable(result):
    if isinstance(result, (TransientMap, TransientList, TransientSet, TransientSortedDict)):
        return result.persistent()
    if isinstance(result, (PersistentMapIterator, PersistentListIterator, PersistentSetIterator,
                           PersistentSortedDictIterator)):
        return list(result)
    return result


@pytest.mark.parametrize("case", ALL_METHODS, ids=method_id)
def test_calls_of_the_signatures_shape_work(case):
    tp, name = case
    sig = inspect.signature(bound(tp, name))
    args, kwargs = call_parts(tp, name, sig, with_defaults=False)
    sig.bind(*args, **kwargs)
    plain = bound(tp, name)(*args, **kwargs)
    # The defaults the signature shows behave as leaving the argument out.
    if any(p.default is not p.empty for p in sig.parameters.values()):
        args_d, kwargs_d = call_parts(tp, name, sig, with_defaults=True)
        explicit = bound(tp, name)(*args_d, **kwargs_d)
        assert comparable(explicit) == comparable(plain)


@pytest.mark.parametrize("case", ALL_METHODS, ids=method_id)
def test_calls_outside_the_signature_fail(case):
    tp, name = case
    sig = inspect.signature(bound(tp, name))
    params = list(sig.parameters.values())
    args, kwargs = call_parts(tp, name, sig, with_defaults=True)
    if not any(p.kind == p.VAR_POSITIONAL for p in params):
        with pytest.raises(TypeError):
            bound(tp, name)(*args, object(), **kwargs)
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        with pytest.raises(TypeError):
            bound(tp, name)(*args, no_such_parameter=1, **kwargs)
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if required:
        args, kwargs = call_parts(tp, name, sig, with_defaults=False)
        with pytest.raises(TypeError):
            bound(tp, name)(*args[:-1], **kwargs)
    positional_only = [p for p in params if p.kind == p.POSITIONAL_ONLY]
    if positional_only and not any(p.kind == p.VAR_KEYWORD for p in params):
        p = positional_only[0]
        with pytest.raises(TypeError):
            bound(tp, name)(**{p.name: p.default if p.default is not p.empty else sample_for(tp, name, p)})


def test_constructor_signatures():
    assert str(inspect.signature(PersistentMap)) == "(mapping_or_pairs=(), /, **kwargs)"
    assert str(inspect.signature(PersistentList)) == "(iterable=(), /)"
    assert str(inspect.signature(PersistentSet)) == "(iterable=(), /)"
    assert str(inspect.signature(PersistentSortedDict)) == "(mapping_or_pairs=(), /, **kwargs)"
    # The defaults behave as leaving the argument out.
    assert PersistentMap(()) == PersistentMap() and PersistentMap((), a=1) == PersistentMap(a=1)
    assert PersistentList(()) == PersistentList() and PersistentSet(()) == PersistentSet()
    Atom()
    Atom(PersistentSet())
    Atom(initial=PersistentList())
    with pytest.raises(TypeError):
        TransientMap()


def test_signatures_of_sentinel_defaults():
    # pop's default is a sentinel (absent means KeyError): no default value is shown for it.
    sig = inspect.signature(TransientMap.pop)
    assert all(p.default is p.empty for p in sig.parameters.values())
    assert str(inspect.signature(PersistentList.index)) == f"(self, value, start=0, stop={sys.maxsize}, /)"


# ---- agreement with the stub ------------------------------------------------------------------------

STUB = pathlib.Path(pypersistent.__file__).with_name("__init__.pyi")


def stub_classes():
    tree = ast.parse(STUB.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    methods.setdefault(item.name, []).append(item)
            classes[node.name] = methods
    return classes


STUB_CLASSES = stub_classes() if STUB.exists() else {}


def stub_params(fn):
    """[(name, kind, has_default)] of a stub def, without self/cls."""
    a = fn.args
    P = inspect.Parameter
    out = []
    positional = [(arg, P.POSITIONAL_ONLY) for arg in a.posonlyargs] + [(arg, P.POSITIONAL_OR_KEYWORD) for arg in a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for (arg, kind), default in zip(positional, defaults):
        # A leading-underscore-free name with "__" prefix is positional-only in old-style stubs.
        if kind == P.POSITIONAL_OR_KEYWORD and arg.arg.startswith("__") and not arg.arg.endswith("__"):
            kind = P.POSITIONAL_ONLY
        out.append((arg.arg, kind, default is not None))
    if a.vararg:
        out.append((a.vararg.arg, P.VAR_POSITIONAL, False))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, P.KEYWORD_ONLY, default is not None))
    if a.kwarg:
        out.append((a.kwarg.arg, P.VAR_KEYWORD, False))
    return out[1:] if out and out[0][0] in ("self", "cls") else out


def runtime_params(tp, name):
    """[(name, kind, has_default)] of the runtime method, without self/cls."""
    attr = vars(tp)[name]
    sig = inspect.signature(getattr(tp, name))
    params = list(sig.parameters.values())
    if not isinstance(attr, types.ClassMethodDescriptorType):
        params = params[1:]  # self
    return [(p.name, p.kind, p.default is not p.empty) for p in params]


STUB_CASES = [(tp, name) for tp, name in ALL_METHODS if name in STUB_CLASSES.get(tp.__name__, {})]


def test_the_stub_is_compared():
    assert len(STUB_CASES) > 80


def assert_same_params(runtime, stub, where):
    P = inspect.Parameter
    assert [k for _, k, _ in runtime] == [k for _, k, _ in stub], f"{where}: kinds {runtime} != stub {stub}"
    for (rn, rk, rd), (sn, sk, sd) in zip(runtime, stub):
        if rk in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY):
            assert rn == sn, f"{where}: parameter {rn!r} is {sn!r} in the stub"
        if rk not in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            assert rd == sd, f"{where}: parameter {rn!r} default: runtime {rd}, stub {sd}"


def assert_accepts_overloads(tp, name, runtime, overloads, where):
    """An overloaded stub: the runtime signature accepts the call shapes of every overload."""
    P = inspect.Parameter
    sig = inspect.Signature([P(f"p{i}" if k == P.POSITIONAL_ONLY else n, k, default=0 if d else P.empty)
                             for i, (n, k, d) in enumerate(runtime)])
    most_positional = 0
    for fn in overloads:
        params = stub_params(fn)
        pos = [p for p in params if p[1] in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
        required = [p for p in pos if not p[2]]
        kwonly = {p[0]: 0 for p in params if p[1] == P.KEYWORD_ONLY and not p[2]}
        for shape in (required, pos):
            sig.bind(*[0] * len(shape), **kwonly)
        if any(p[1] == P.VAR_POSITIONAL for p in params):
            assert any(k == P.VAR_POSITIONAL for _, k, _ in runtime), f"{where}: the stub takes *args"
        if any(p[1] == P.VAR_KEYWORD for p in params):
            assert any(k == P.VAR_KEYWORD for _, k, _ in runtime), f"{where}: the stub takes **kwargs"
        most_positional = max(most_positional, len(pos))
    if not any(k == P.VAR_POSITIONAL for _, k, _ in runtime):
        runtime_positional = [p for p in runtime if p[1] in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
        assert len(runtime_positional) == most_positional, f"{where}: {runtime} vs stub overloads"


@pytest.mark.parametrize("case", STUB_CASES, ids=method_id)
def test_method_agrees_with_the_stub(case):
    tp, name = case
    defs = STUB_CLASSES[tp.__name__][name]
    runtime = runtime_params(tp, name)
    where = f"{tp.__name__}.{name}"
    overloads = [d for d in defs if any(isinstance(dec, ast.Name) and dec.id == "overload" for dec in d.decorator_list)]
    if overloads:
        assert_accepts_overloads(tp, name, runtime, overloads, where)
    else:
        assert_same_params(runtime, stub_params(defs[-1]), where)


@pytest.mark.parametrize("tp", [PersistentMap, PersistentList, PersistentSet, PersistentSortedDict], ids=lambda t: t.__name__)
def test_constructor_agrees_with_the_stub(tp):
    defs = STUB_CLASSES[tp.__name__].get("__init__") or STUB_CLASSES[tp.__name__].get("__new__")
    runtime = [(p.name, p.kind, p.default is not p.empty) for p in inspect.signature(tp).parameters.values()]
    assert_accepts_overloads(tp, "__init__", runtime, defs, tp.__name__)


# ---- errors name the method called -----------------------------------------------------------------

# (type, aliases, a call with the wrong arguments)
ALIASES = [
    (PersistentMap, ["assoc", "set"], lambda f: f(1)),
    (PersistentMap, ["dissoc", "delete"], lambda f: f()),
    (PersistentMap, ["update", "merge"], lambda f: f({}, {})),
    (PersistentMap, ["get"], lambda f: f()),
    (PersistentMap, ["fromkeys"], lambda f: f()),
    (PersistentMap, ["create"], lambda f: f({})),
    (TransientMap, ["assoc", "set"], lambda f: f(1, 2, 3)),
    (TransientMap, ["dissoc", "delete"], lambda f: f(1, 2)),
    (TransientMap, ["update"], lambda f: f({}, {})),
    (TransientMap, ["get", "pop", "setdefault"], lambda f: f()),
    (TransientMap, ["__exit__"], lambda f: f(None)),
    (PersistentList, ["conj", "append"], lambda f: f()),
    (PersistentList, ["assoc", "set"], lambda f: f(0)),
    (PersistentList, ["get", "slice", "index"], lambda f: f(1, 2, 3, 4)),
    (PersistentList, ["from_list", "from_iterable"], lambda f: f()),
    (TransientList, ["append", "extend"], lambda f: f()),
    (TransientList, ["__exit__"], lambda f: f()),
    (PersistentSet, ["add", "conj"], lambda f: f()),
    (PersistentSet, ["discard", "disj", "remove"], lambda f: f(1, 2)),
    (PersistentSet, ["union", "update"], lambda f: f(x=[1])),
    (PersistentSet, ["from_iterable", "from_list", "from_set"], lambda f: f()),
    (TransientSet, ["add", "conj"], lambda f: f()),
    (TransientSet, ["discard", "disj"], lambda f: f()),
    (TransientSet, ["__exit__"], lambda f: f(None, None)),
    (PersistentSortedDict, ["assoc", "set"], lambda f: f(1)),
    (PersistentSortedDict, ["update", "merge"], lambda f: f({}, {})),
    (PersistentSortedDict, ["get", "floor", "ceiling", "lower", "higher"], lambda f: f()),
    (PersistentSortedDict, ["subseq", "rsubseq"], lambda f: f(1, 2, 3)),
    (PersistentSortedDict, ["create"], lambda f: f({})),
    (TransientSortedDict, ["assoc", "set"], lambda f: f(1, 2, 3)),
    (TransientSortedDict, ["update"], lambda f: f({}, {})),
    (TransientSortedDict, ["get", "pop", "setdefault"], lambda f: f()),
    (TransientSortedDict, ["__exit__"], lambda f: f(None)),
    (Atom, ["compare_and_set"], lambda f: f(1)),
    (Atom, ["swap"], lambda f: f()),
    (Atom, ["reset"], lambda f: f(1)),
    (Atom, ["compare_and_set"], lambda f: f(None, 1)),
]


@pytest.mark.parametrize("tp, names, bad_call", ALIASES, ids=lambda x: x.__name__ if isinstance(x, type) else "")
def test_errors_name_the_method_called(tp, names, bad_call):
    for name in names:
        with pytest.raises(TypeError) as info:
            bad_call(bound(tp, name))
        assert str(info.value).startswith(f"{tp.__name__}.{name}()"), (name, str(info.value))


def test_error_messages():
    with pytest.raises(TypeError, match=r"^PersistentMap\.set\(\) takes exactly 2 arguments \(1 given\)$"):
        PersistentMap().set(1)
    with pytest.raises(TypeError, match=r"^PersistentMap\.merge\(\) takes at most 1 argument \(2 given\)$"):
        PersistentMap().merge(1, 2)
    with pytest.raises(TypeError, match=r"^PersistentList\.index\(\) takes from 1 to 3 arguments \(0 given\)$"):
        PersistentList().index()
    with pytest.raises(TypeError, match=r"^TransientMap\.delete\(\) takes exactly one argument \(0 given\)$"):
        PersistentMap().transient().delete()
