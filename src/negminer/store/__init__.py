"""Target store: what we currently believe each target's embedding is, and how old it is."""

from negminer.store.store import TargetStore

__all__ = ["TargetStore"]
