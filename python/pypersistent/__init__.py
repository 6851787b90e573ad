"""pypersistent: persistent (immutable) hash maps with a C++ core, built for free-threaded Python.

>>> from pypersistent import PersistentMap
>>> m = PersistentMap(a=1)
>>> m2 = m.set("b", 2)
>>> sorted(m2.items()), len(m)
([('a', 1), ('b', 2)], 1)
"""

from collections import abc as _abc

from ._pypersistent import (
    Atom,
    FREE_THREADED_BUILD,
    PersistentMap,
    PersistentMapItems,
    PersistentMapIterator,
    PersistentMapKeys,
    PersistentMapValues,
    TransientMap,
)

__all__ = ["Atom", "PersistentMap", "TransientMap", "FREE_THREADED_BUILD"]
__version__ = "0.1.0"

_abc.Mapping.register(PersistentMap)
_abc.KeysView.register(PersistentMapKeys)
_abc.ValuesView.register(PersistentMapValues)
_abc.ItemsView.register(PersistentMapItems)
_abc.Iterator.register(PersistentMapIterator)
