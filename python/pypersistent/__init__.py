"""pypersistent: persistent (immutable) maps, sorted maps, sets and lists with a C++ core, built for free-threaded Python.

>>> from pypersistent import PersistentMap
>>> m = PersistentMap(a=1)
>>> m2 = m.set("b", 2)
>>> sorted(m2.items()), len(m)
([('a', 1), ('b', 2)], 1)
"""

import sys as _sys
from collections import abc as _abc

if _sys.version_info < (3, 12):
    # Before 3.12 subinterpreters share the main interpreter's GIL, and initialising the
    # extension there waits forever for the GIL its own thread holds (PyGILState_Ensure): refuse
    # at once instead.
    try:
        import _xxsubinterpreters as _subinterpreters
    except ImportError:  # pragma: no cover - CPython always has it
        _subinterpreters = None
    if _subinterpreters is not None and _subinterpreters.get_current() != _subinterpreters.get_main():
        raise ImportError("pypersistent: subinterpreters need Python 3.12 or later")

from ._pypersistent import (
    Atom,
    FREE_THREADED_BUILD,
    MapDiff,
    PersistentMap,
    PersistentMapItems,
    PersistentMapIterator,
    PersistentMapKeys,
    PersistentMapValues,
    PersistentList,
    PersistentListIterator,
    PersistentSet,
    PersistentSetIterator,
    PersistentSortedDict,
    PersistentSortedDictItems,
    PersistentSortedDictIterator,
    PersistentSortedDictKeys,
    PersistentSortedDictValues,
    SharedAtom,
    SharedMap,
    SharedMapIterator,
    TransientSharedMap,
    SetDiff,
    TransientList,
    TransientMap,
    TransientSet,
    TransientSortedDict,
    __version__,
)

# pypersistent 2.0's names for the map. 2.0 had a separate PersistentArrayMap for maps of up to
# 8 entries; here a small map is one CHAMP node, already an array, so both names are the map.
PersistentDict = PersistentMap
PersistentArrayMap = PersistentMap

__all__ = ["Atom", "PersistentMap", "TransientMap", "PersistentDict", "PersistentArrayMap", "FREE_THREADED_BUILD"]
__all__ += ["PersistentList", "TransientList"]
__all__ += ["PersistentSet", "TransientSet"]
__all__ += ["PersistentSortedDict", "TransientSortedDict"]
__all__ += ["freeze", "thaw"]
__all__ += ["SharedMap", "TransientSharedMap", "SharedAtom"]

_abc.Mapping.register(PersistentMap)
_abc.MutableMapping.register(TransientMap)
_abc.KeysView.register(PersistentMapKeys)
_abc.ValuesView.register(PersistentMapValues)
_abc.ItemsView.register(PersistentMapItems)
_abc.Iterator.register(PersistentMapIterator)
_abc.Sequence.register(PersistentList)
_abc.Iterator.register(PersistentListIterator)
_abc.Set.register(PersistentSet)
_abc.Iterator.register(PersistentSetIterator)
_abc.Mapping.register(PersistentSortedDict)
_abc.MutableMapping.register(TransientSortedDict)
_abc.KeysView.register(PersistentSortedDictKeys)
_abc.ValuesView.register(PersistentSortedDictValues)
_abc.ItemsView.register(PersistentSortedDictItems)
_abc.Iterator.register(PersistentSortedDictIterator)
_abc.Mapping.register(SharedMap)
_abc.Iterator.register(SharedMapIterator)


def _convert(obj, strict, to_persistent):
    """freeze() and thaw(): one walk, with the conversions for each direction.

    A container reached twice (shared substructure) is converted once and the result shared; a
    container that contains itself cannot be converted (a persistent structure cannot hold
    itself) and raises ValueError. The originals are kept alive during the walk, so the ids the
    memo is keyed on stay unique.
    """
    memo = {}
    keep = []
    on_path = set()

    def walk(o):
        t = type(o)
        if to_persistent:
            if isinstance(o, dict) or (strict and t is PersistentMap):
                kind = "map"
            elif strict and t is PersistentSortedDict:
                kind = "sorted"
            elif isinstance(o, list) or (strict and t is PersistentList):
                kind = "list"
            elif isinstance(o, set):
                kind = "set"
            elif isinstance(o, tuple):
                kind = "tuple"
            else:
                return o
        else:
            if t is PersistentMap or t is PersistentSortedDict or (strict and isinstance(o, dict)):
                kind = "map"
            elif t is PersistentList or (strict and isinstance(o, list)):
                kind = "list"
            elif t is PersistentSet:
                kind = "set"
            elif isinstance(o, tuple):
                kind = "tuple"
            else:
                return o
        key = id(o)
        done = memo.get(key)
        if done is not None:
            return done[0]
        if key in on_path:
            raise ValueError(
                f"{'freeze' if to_persistent else 'thaw'}(): a {t.__name__} contains itself; "
                "a reference cycle cannot be converted"
            )
        on_path.add(key)
        try:
            if kind == "map":
                pairs = [(k, walk(v)) for k, v in list(o.items())]
                result = PersistentMap(pairs) if to_persistent else dict(pairs)
            elif kind == "sorted":  # freezing the values of a PersistentSortedDict keeps its type
                result = PersistentSortedDict([(k, walk(v)) for k, v in o.items()])
            elif kind == "list":
                items = [walk(x) for x in list(o)]
                result = PersistentList(items) if to_persistent else items
            elif kind == "set":
                # Set elements are hashable, so they hold nothing to convert.
                result = PersistentSet(o) if to_persistent else set(o)
            else:
                items = [walk(x) for x in o]
                if all(a is b for a, b in zip(items, o)):
                    result = o
                elif t is tuple:
                    result = tuple(items)
                elif hasattr(t, "_make"):  # a named tuple keeps its type
                    result = t._make(items)
                else:
                    result = t(items)
        finally:
            on_path.discard(key)
        memo[key] = (result,)
        keep.append(o)
        return result

    return walk(obj)


def freeze(obj, strict=True, /):
    """freeze(obj, strict=True, /) -> the same data in persistent structures, converted deeply.

    dict (and its subclasses) becomes PersistentMap, list becomes PersistentList, set becomes
    PersistentSet, and tuples (named tuples too) are rebuilt with their items frozen; keys, set
    elements and other objects are kept as they are. With strict=True (the default, as in
    pyrsistent) the values inside PersistentMaps, PersistentSortedDicts and PersistentLists are
    frozen too. A container
    reached twice becomes one shared structure; one that contains itself raises ValueError.

    >>> freeze({"a": [1, {"b": {2}}]})
    PersistentMap({'a': PersistentList([1, PersistentMap({'b': PersistentSet({2})})])})
    """
    return _convert(obj, strict, True)


def thaw(obj, strict=True, /):
    """thaw(obj, strict=True, /) -> the same data in plain dicts, lists and sets, converted deeply.

    The inverse of freeze(): PersistentMap and PersistentSortedDict become dict, PersistentList
    becomes list, PersistentSet becomes set, and tuples are rebuilt with their items thawed. With
    strict=True (the default) the values inside plain dicts and lists are thawed too.

    >>> thaw(freeze({"a": [1, {"b": {2}}]}))
    {'a': [1, {'b': {2}}]}
    """
    return _convert(obj, strict, False)
