"""Declaring prefixes: what a prefix is (:mod:`.spec`), how a model or table declares one
(:mod:`.declare`), and the names mrl_pg gives what it creates (:mod:`.names`)."""

from mrl_pg.prefix.declare import Prefix, add_prefix_column, mrl_prefix, prefixes_of
from mrl_pg.prefix.spec import Distance, FullVector, PrefixSpec, Storage

__all__ = [
    "Distance",
    "FullVector",
    "Prefix",
    "PrefixSpec",
    "Storage",
    "add_prefix_column",
    "mrl_prefix",
    "prefixes_of",
]
