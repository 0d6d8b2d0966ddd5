"""The SQL that mrl_search compiles to, and the errors it raises before any SQL runs."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
from sqlalchemy import literal_column, select
from sqlalchemy.dialects import postgresql

from mrl_pg import (
    MRLSearchMixin,
    PrefixSelectionError,
    QueryVectorError,
    SearchParameterError,
    mrl_search,
)
from tests.models import Doc, Note

QUERY = np.linspace(-1, 1, 768, dtype=np.float32)


def sql(stmt: Any, literal: bool = False) -> str:
    kwargs = {"literal_binds": True} if literal else {}
    text = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs=kwargs))
    return re.sub(r"\s+", " ", text)


def test_two_stage_shape() -> None:
    stmt = mrl_search(select(Doc).where(Doc.tenant == 3), QUERY, k=10, prefix="cosine_halfvec")
    text = sql(stmt)
    assert text.startswith(
        "SELECT mrl_candidates_0.id, mrl_candidates_0.tenant, mrl_candidates_0.title, "
        "mrl_candidates_0.mrl_full <=> CAST(%(mrl_query)s AS VECTOR(768)) AS distance "
        "FROM (SELECT bool_and(concat(set_config("
    )
    assert (
        "AS s (name, kept, value)) AS mrl_settings JOIN LATERAL (SELECT docs.id AS id, " in text
    )
    assert text.endswith(
        "docs.embedding AS mrl_full FROM docs WHERE docs.tenant = %(tenant_1)s::INTEGER "
        "AND mrl_settings.mrl_applied "
        "ORDER BY docs.cosine_halfvec <=> CAST(subvector(CAST(%(mrl_query)s AS VECTOR(768)), "
        "1, 128) AS HALFVEC(128)) "
        "LIMIT 100) AS mrl_candidates_0 ON true "
        "ORDER BY distance LIMIT 10"
    )
    assert text.count("%(mrl_query)s") == 2, "one query parameter, used by both stages"


def test_literal_sql_for_each_distance() -> None:
    ip = sql(Doc.mrl_search(QUERY, k=5, prefix="inner_product_vector"), literal=True)
    assert "ORDER BY docs.inner_product_vector <#> CAST(l2_normalize(subvector(CAST('[" in ip
    assert "mrl_candidates_0.mrl_full <#> CAST('[" in ip
    l2_bit = sql(Doc.mrl_search(QUERY, k=5, prefix="l2_bit"), literal=True)
    assert "ORDER BY docs.l2_bit <~> CAST(binary_quantize(subvector(" in l2_bit
    assert "AS BIT(384))" in l2_bit and "mrl_full <-> CAST('[" in l2_bit
    assert "LIMIT 200)" in l2_bit and l2_bit.endswith("LIMIT 5")


def test_funnel_shape() -> None:
    stmt = Doc.mrl_search(QUERY, k=10, prefix=["cosine_bit", "cosine_halfvec"], candidates=[400, 40])
    text = sql(stmt, literal=True)
    assert "ORDER BY docs.cosine_bit <~> CAST(binary_quantize(" in text
    assert "LIMIT 400) AS mrl_candidates_0 ON true ORDER BY mrl_candidates_0.mrl_stage_1 <=> CAST(" in text
    assert "LIMIT 40) AS mrl_candidates_1 ORDER BY distance LIMIT 10" in text
    assert dict(stmt.search_settings)["hnsw.ef_search"] == "800"  # twice the first stage's 400


@pytest.mark.parametrize(
    ("kwargs", "ef_search", "iterative"),
    [
        ({}, "80", None),  # twice the candidates: 40 for k=10
        ({"k": 30}, "240", None),
        ({"candidates": 15}, "40", None),  # at least pgvector's default
        ({"candidates": 700}, "1000", None),  # at most pgvector's limit
        ({"candidates": 2500}, "1000", "relaxed_order"),  # more candidates than ef_search
        ({"oversample": 10}, "200", None),
        ({"ef_search": 300, "iterative_scan": "strict_order"}, "300", "strict_order"),
    ],
)
def test_settings_per_statement(kwargs: dict[str, Any], ef_search: str, iterative: str | None) -> None:
    settings = dict(Doc.mrl_search(QUERY, prefix="cosine_vector", **kwargs).search_settings)
    assert settings["hnsw.ef_search"] == ef_search
    assert settings.get("hnsw.iterative_scan") == iterative


def test_filters_turn_on_iterative_scan() -> None:
    stmt = mrl_search(select(Doc).where(Doc.tenant == 1), QUERY, prefix="cosine_vector")
    assert ("hnsw.iterative_scan", "relaxed_order") in stmt.search_settings


def test_statement_template_reuse_binds_each_query() -> None:
    first = Note.mrl_search([1.0] * 8, k=3)
    second = Note.mrl_search([2.0] * 8, k=3)
    assert "'[1.0,1.0" in sql(first, literal=True)
    assert "'[2.0,2.0" in sql(second, literal=True)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (np.ones(767), "has 767 dimensions, the column has 768"),
        (np.ones((2, 768)), "must be one-dimensional"),
        (np.full(768, np.nan), "holds nan at index 0"),
        (np.r_[np.ones(10), [math.inf], np.ones(757)], "holds inf at index 10"),
        (["a"] * 768, "not a sequence of numbers"),
    ],
)
def test_bad_query_vectors(query: Any, message: str) -> None:
    with pytest.raises(QueryVectorError, match=message):
        Doc.mrl_search(query, prefix="cosine_vector")


def test_huge_finite_query_values_are_searched() -> None:
    huge = np.full(768, 1e30, dtype=np.float32)  # finite, though its squared norm is not
    assert "ORDER BY docs.cosine_vector" in sql(Doc.mrl_search(huge, prefix="cosine_vector"))


def test_query_beyond_halfvec_range() -> None:
    with pytest.raises(QueryVectorError, match="which a halfvec cannot hold"):
        Note.mrl_search([1e5] + [0.0] * 7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be a positive integer, got 0"),
        ({"k": -1}, "k must be a positive integer"),
        ({"k": 10, "candidates": 5}, r"candidates \(5\) must be at least k \(10\)"),
        ({"candidates": 0}, "candidates must be a positive integer"),
        ({"candidates": [40]}, "1 candidate counts for 2 prefix stages"),
        ({"candidates": [20, 40]}, "at least the next stage's count"),
        ({"oversample": 0.5}, "oversample must be a number >= 1"),
        ({"oversample": 4, "candidates": 40}, "candidates or oversample, not both"),
        ({"ef_search": 0}, r"ef_search must be an integer in \[1, 1000\]"),
        ({"ef_search": 5000}, r"ef_search must be an integer in \[1, 1000\]"),
        ({"iterative_scan": "sometimes"}, "unknown iterative_scan 'sometimes'"),
        ({"max_scan_tuples": 0}, "max_scan_tuples must be a positive integer"),
    ],
)
def test_bad_search_parameters(kwargs: dict[str, Any], message: str) -> None:
    prefix = "cosine_vector" if "candidates" not in kwargs or isinstance(kwargs["candidates"], int) \
        else ["cosine_bit", "cosine_halfvec"]
    with pytest.raises(SearchParameterError, match=message):
        Doc.mrl_search(QUERY, prefix=prefix, **kwargs)


def test_prefix_choice_errors() -> None:
    with pytest.raises(PrefixSelectionError, match=r"docs has several prefixes .*choose one"):
        Doc.mrl_search(QUERY)
    with pytest.raises(PrefixSelectionError, match="no prefix 'cosine_64'; declared prefixes"):
        Doc.mrl_search(QUERY, prefix="cosine_64")
    with pytest.raises(PrefixSelectionError, match="share one full column and one distance"):
        Doc.mrl_search(QUERY, prefix=["cosine_bit", "l2_halfvec"])
    with pytest.raises(SearchParameterError, match="already has ORDER BY or LIMIT"):
        mrl_search(select(Doc).limit(5), QUERY, prefix="cosine_vector")


def test_model_without_prefix() -> None:
    from sqlalchemy import Integer
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class Base(DeclarativeBase):
        pass

    class Plain(MRLSearchMixin, Base):
        __tablename__ = "plain"
        id = mapped_column(Integer, primary_key=True)

    with pytest.raises(PrefixSelectionError, match="no MRL prefix is declared on plain"):
        Plain.mrl_search([1.0])
    with pytest.raises(PrefixSelectionError, match="expected a mapped class, a Table or a select"):
        mrl_search("plain", [1.0])  # type: ignore[arg-type]


def test_prefix_by_attribute() -> None:
    stmt = Doc.mrl_search(QUERY, prefix=Doc.l2_halfvec)
    assert "ORDER BY docs.l2_halfvec <->" in sql(stmt)


def test_prefix_found_in_select_from_when_not_selected() -> None:
    base = select(literal_column("1").label("one")).select_from(Doc).where(Doc.tenant == 1)
    text = sql(mrl_search(base, QUERY, prefix="cosine_vector"))
    assert text.startswith("SELECT mrl_candidates_0.one, mrl_candidates_0.mrl_full <=>")
    assert "FROM docs WHERE docs.tenant = " in text


def test_select_templates_bind_each_selects_own_values() -> None:
    statements = [
        mrl_search(select(Doc).where(Doc.tenant == tenant, Doc.title != f"t{tenant}"),
                   QUERY * tenant, prefix="cosine_vector")
        for tenant in (1, 2, 3)
    ]
    for tenant, stmt in zip((1, 2, 3), statements, strict=True):
        text = sql(stmt, literal=True)
        assert f"WHERE docs.tenant = {tenant} AND docs.title != 't{tenant}'" in text
        assert f"'[{-1.0 * tenant}," in text
    different_shape = mrl_search(select(Doc).where(Doc.tenant > 7), QUERY, prefix="cosine_vector")
    assert "WHERE docs.tenant > 7" in sql(different_shape, literal=True)
