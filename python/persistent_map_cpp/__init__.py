"""The seed's original import path, kept working: ``from persistent_map_cpp import PersistentMap``."""

from pypersistent import PersistentMap, TransientMap

__all__ = ["PersistentMap", "TransientMap"]
