"""Names mrl_pg gives to the things it creates, fitted to PostgreSQL's identifier length."""

from __future__ import annotations

import hashlib

#: PostgreSQL truncates identifiers longer than this.
MAX_IDENTIFIER_LENGTH = 63


def default_index_name(table_name: str, column_name: str) -> str:
    """``ix_<table>_<column>_hnsw``, shortened with a hash when PostgreSQL would truncate it."""
    return fit_identifier(f"ix_{table_name}_{column_name}_hnsw")


def fit_identifier(name: str, suffix: str = "") -> str:
    """``name + suffix`` if PostgreSQL keeps it whole, else ``name`` shortened and made unique
    with a hash, ``suffix`` kept."""
    whole = name + suffix
    if len(whole.encode()) <= MAX_IDENTIFIER_LENGTH:
        return whole
    digest = hashlib.sha1(whole.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER_LENGTH - 9 - len(suffix.encode())
    head = name.encode()[:room].decode(errors="ignore")
    return f"{head}_{digest}{suffix}"
