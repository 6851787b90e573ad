"""pypersistent: persistent (immutable) maps, sets and lists with a C++ core, built for free-threaded Python.

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
    PersistentMap,
    PersistentMapItems,
    PersistentMapIterator,
    PersistentMapKeys,
    PersistentMapValues,
    PersistentList,
    PersistentListIterator,
    PersistentSet,
    PersistentSetIterator,
    TransientList,
    TransientMap,
    TransientSet,
    __version__,
)

# pypersistent 2.0's names for the map. 2.0 had a separate PersistentArrayMap for maps of up to
# 8 entries; here a small map is one CHAMP node, already an array, so both names are the map.
PersistentDict = PersistentMap
PersistentArrayMap = PersistentMap

__all__ = ["Atom", "PersistentMap", "TransientMap", "PersistentDict", "PersistentArrayMap", "FREE_THREADED_BUILD"]
__all__ += ["PersistentList", "TransientList"]
__all__ += ["PersistentSet", "TransientSet"]

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
