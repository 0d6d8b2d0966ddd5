"""The two-stage (or multi-stage) search statement.

``mrl_search`` turns a model, a table or an existing ``select()`` into one SQL statement::

    SELECT <entities>, c.mrl_full <=> :q AS distance
    FROM (SELECT bool_and(set_config(...) ...) AS mrl_applied FROM unnest(...)) AS mrl_settings
    JOIN LATERAL (SELECT <entities>, <full vector> AS mrl_full FROM ...
                  WHERE <app filters> AND mrl_settings.mrl_applied
                  ORDER BY <prefix> <=> <prefix of :q> LIMIT <candidates>) AS c ON true
    ORDER BY distance LIMIT <k>

The inner ``ORDER BY`` is the bare index operator on the prefix column, so PostgreSQL serves
it from the prefix's HNSW index; the outer one reranks the candidates by the exact distance on
the full vectors. The query vector is bound once and its prefix computed in SQL. With several
prefixes named, coarse to fine (say a ``bit`` prefix, then a ``halfvec`` one), each further
stage narrows the previous one's candidates before the final rerank.

``mrl_settings`` makes the search's pgvector settings before the index scan starts (see
:mod:`mrl_pg.search.hnsw_settings`). The statement is a
:class:`~mrl_pg.search.search_select.SearchSelect`. Statements are built once per target and
options (a template without the query vector), then reused with the new values bound; the
templates are keyed on :func:`~mrl_pg.prefix.declare.prefix_generation`, so a prefix declared
later is seen. On a database sharded by Citus a search runs in a distributed form instead, built
by :func:`~mrl_pg.search.citus.distributed_stages` (see :mod:`mrl_pg.search.citus`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    Integer,
    Label,
    Select,
    Table,
    bindparam,
    cast,
    inspect,
    literal_column,
    true,
)
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Mapper, aliased
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.elements import KeyedColumnElement
from sqlalchemy.sql.selectable import Alias, FromClause, Join, NamedFromClause

from mrl_pg.errors import PrefixSelectionError, SearchParameterError
from mrl_pg.prefix.declare import (
    INFO_KEY,
    IndexOnlyPrefix,
    Prefix,
    prefix_generation,
    prefixes_of,
)
from mrl_pg.prefix.spec import FullVector
from mrl_pg.search.citus import DistributedForm, distributed_stages
from mrl_pg.search.defaults import (
    IterativeScan,
    candidate_counts,
    check_positive_int,
    statement_settings,
)
from mrl_pg.search.direct import DirectForms, DirectRun
from mrl_pg.search.hnsw_settings import Settings, settings_subquery
from mrl_pg.search.query_vector import QueryLike, QueryVectorType, as_query_array
from mrl_pg.search.search_select import SearchSelect

#: Name of the bound query vector, and of the distance column in results.
QUERY_PARAM = "mrl_query"
DISTANCE_LABEL = "distance"

PrefixChoice: TypeAlias = str | KeyedColumnElement[Any] | Any
SearchTarget: TypeAlias = type | Table | Select[Any]


@dataclass(frozen=True)
class SearchOptions:
    """The knobs of one search; see :func:`mrl_search`."""

    k: int = 10
    prefix: PrefixChoice | Sequence[PrefixChoice] | None = None
    candidates: int | Sequence[int] | None = None
    oversample: float | None = None
    ef_search: int | None = None
    iterative_scan: IterativeScan | str | None = None
    max_scan_tuples: int | None = None
    distributed: bool | None = None

    def frozen(self) -> SearchOptions | None:
        """A hashable copy to key statement templates on: sequences as tuples, and prefixes
        given as attributes or columns named by their column key, so that ``Model.prefix`` and
        ``"prefix"`` share a template. None when a prefix choice is neither."""
        if isinstance(self.prefix, str | None) and isinstance(self.candidates, int | None):
            return self  # already hashable and keyed by name: the common case, kept cheap
        prefix = _as_tuple(self.prefix)
        candidates = _as_tuple(self.candidates)
        if isinstance(prefix, tuple):
            names = tuple(_prefix_key(part) for part in prefix)
            if None in names:
                return None
            prefix = names
        elif prefix is not None:
            prefix = _prefix_key(prefix)
            if prefix is None:
                return None
        return replace(self, prefix=prefix, candidates=candidates)


def _prefix_key(choice: PrefixChoice) -> str | None:
    """The name a prefix choice stands for: itself for a string, the column key for a prefix
    column or a mapped attribute of one; None for anything else."""
    if isinstance(choice, str):
        return choice
    index_only = _index_only_attribute(choice)
    if index_only is not None:
        return index_only[0]
    mapped: Any = getattr(choice, "property", None)
    column = mapped.columns[0] if hasattr(mapped, "columns") else choice
    if isinstance(column, Column) and isinstance(column.info.get(INFO_KEY), Prefix):
        return str(column.key)
    return None


def _index_only_attribute(choice: PrefixChoice) -> tuple[str, Any] | None:
    """For an index-only prefix's attribute (``Model.prefix``, or an ``aliased()`` model's),
    its name and the table or alias its expression reads; None for anything else."""
    attribute: Any = choice
    if not isinstance(getattr(attribute, "original_property", None), IndexOnlyPrefix):
        return None
    return str(attribute.original_property.__name__), getattr(attribute.parent, "selectable", None)


@dataclass(frozen=True)
class SearchPlan:
    """The parts of a search statement: what to select, how to order, what to set.

    ``names_unique`` says whether each chosen prefix is the only one of its name among the
    searched tables, so that naming it picks the same prefix as passing its attribute.
    ``stages`` are the chosen prefixes, coarse to fine, with columns as the searched FROM
    names them."""

    columns: list[Any]
    source: FromClause
    distance: Label[float]
    k: int
    settings: Settings
    full: FullVector
    names_unique: bool
    stages: tuple[Prefix, ...]
    distributed: bool = False

    def select(self) -> SearchSelect:
        return (
            SearchSelect(
                *self.columns, self.distance, settings=self.settings, distributed=self.distributed
            )
            .select_from(self.source)
            .order_by(self.distance)
            .limit(row_count(self.k))
        )


def mrl_search(
    target: SearchTarget,
    query: QueryLike,
    k: int = 10,
    *,
    prefix: PrefixChoice | Sequence[PrefixChoice] | None = None,
    candidates: int | Sequence[int] | None = None,
    oversample: float | None = None,
    ef_search: int | None = None,
    iterative_scan: IterativeScan | str | None = None,
    max_scan_tuples: int | None = None,
    distributed: bool | None = None,
) -> SearchSelect:
    """Nearest neighbours of ``query``: a ``Select`` of the target's entities (or columns)
    plus a ``distance`` column, the exact full-dimension distance, nearest first.

    ``target`` is a mapped class, a ``Table``, or a ``select()`` carrying the app's own
    ``where`` clauses and joins (without ``ORDER BY``/``LIMIT``: the search adds its own).

    - ``prefix``: the prefix column (name or attribute) to search with; required when the
      table has several. A sequence, coarse to fine, runs a funnel of prefix stages.
    - ``candidates``: rows the first stage keeps (a sequence: one count per stage). By
      default ``k * oversample``, at least 40 (200 for a ``bit`` prefix); when the select
      filters rows, at least ``k * 10`` and 100 (see docs/filters.md).
    - ``oversample``: candidates per result row when ``candidates`` is not given.
    - ``ef_search``: ``hnsw.ef_search`` for this statement; by default twice the first
      stage's candidate count (at least pgvector's 40, at most 1000): an HNSW scan as wide as
      its ``LIMIT`` misses some of the prefix's own nearest rows (docs/benchmarks.md,
      "Default ef_search").
    - ``iterative_scan``: ``hnsw.iterative_scan`` for this statement; by default
      ``relaxed_order`` when the select filters rows or needs more than ``ef_search``
      candidates, untouched otherwise.
    - ``max_scan_tuples``: ``hnsw.max_scan_tuples`` for an iterative scan; a filtered
      search raises it to 100,000 (and ``hnsw.scan_mem_multiplier`` to 2) unless given.
    - ``distributed``: the form of the statement for a table sharded by Citus (see
      docs/citus.md). True builds the distributed form: each shard runs the first stage and
      returns its candidates' exact distances instead of their full vectors, and the settings
      are made with ``SET LOCAL`` so that they reach the shards. False builds the single-node
      form only. By default the single-node form is built, and runs in its distributed form
      on a connection whose database has the ``citus`` extension (asked once per connection).

    Statements are built once per model, table or shape of ``select()`` and set of options,
    then reused with the new values bound, so repeated searches cost little Python time.
    """
    options = SearchOptions(
        k, prefix, candidates, oversample, ef_search, iterative_scan, max_scan_tuples, distributed
    )
    frozen = options.frozen()
    own = _own_params(target)
    if frozen is None:
        return _uncached_search(target, query, options, own)
    generation = prefix_generation()  # read before anything is built from the prefixes
    binds: tuple[BindParameter[Any], ...] = ()
    if isinstance(target, Select):
        cache_key = target._generate_cache_key()
        if cache_key is None:  # the select holds an element SQLAlchemy cannot cache
            return _uncached_search(target, query, options, own)
        slot: tuple[Any, ...] = (generation, cache_key.key, frozen)
        binds = tuple(cache_key.bindparams)
    else:
        slot = (generation, target, frozen)
    template = _TEMPLATES.get(slot)
    if template is None:
        base = _base_select(target)
        plan = plan_search(base, None, options)
        statement = with_distributed_form(plan.select(), base, None, options)
        direct = DirectForms(statement) if plan.names_unique else None
        template = _Template(statement, plan.full, binds, statement._generate_cache_key(), direct)
        if plan.names_unique:
            if len(_TEMPLATES) >= _TEMPLATES_MAX:
                _TEMPLATES.clear()
            _TEMPLATES[slot] = template
    values = {
        old.key: new.effective_value for old, new in zip(template.binds, binds, strict=True)
    }
    values.update(own)
    vector = values[QUERY_PARAM] = as_query_array(query, template.full)
    search = template.statement.params(values)
    if search.distributed_form is not None:
        search.bound_values = values
    if template.cache_key is not None:
        search.share_cache_key(template.cache_key)
    if template.direct is not None:
        search.run_directly_from(DirectRun(template.direct, values))
    search.search_request = SearchRequest(target, options, vector, own)
    return search


class SearchRequest(NamedTuple):
    """What :func:`mrl_search` was asked, kept on the statement it returns (as
    ``search_request``) so that a recall check (:mod:`mrl_pg.monitor`) can run the same search
    again, and an exact one beside it: the target, the options, the checked query vector and
    the values a ``select()`` target was given with ``.params()``. A tuple, cheap to make at
    every search."""

    target: SearchTarget
    options: SearchOptions
    query: npt.NDArray[np.float32]
    params: dict[str, Any]


def _uncached_search(
    target: SearchTarget, query: QueryLike, options: SearchOptions, own: dict[str, Any]
) -> SearchSelect:
    """A search planned for this call alone (no template fits it)."""
    base = _base_select(target)
    plan = plan_search(base, query, options)
    search = with_distributed_form(plan.select(), base, query, options).params(own)
    search.search_request = SearchRequest(target, options, as_query_array(query, plan.full), own)
    return search


@dataclass(frozen=True)
class _Template:
    """A search statement without its query vector, the full vector it expects, and for a
    ``select()`` target the select's own bound parameters in the order its cache key lists
    them (a later select of the same shape lists its values in the same order), and the
    statement's SQLAlchemy cache key, which every search made from it shares (see
    :meth:`~mrl_pg.search.search_select.SearchSelect.share_cache_key`), and for a kept
    template its compiled forms, which let a search skip SQLAlchemy's execution where nothing
    else would happen around it (see :mod:`mrl_pg.search.direct`)."""

    statement: SearchSelect
    full: FullVector
    binds: tuple[BindParameter[Any], ...]
    cache_key: CacheKey | None
    direct: DirectForms | None


#: Templates by prefix generation, target (a model or ``Table`` itself, or a ``select()``'s
#: SQLAlchemy cache key, which leaves out bound values) and frozen options. A template whose
#: prefix name is ambiguous in its target is not kept: an attribute choice (which picks one
#: table's prefix) and a name choice (the first one) would then mean different prefixes.
_TEMPLATES: dict[tuple[Any, ...], _Template] = {}
_TEMPLATES_MAX = 1024


def plan_search(
    base: Select[Any], query: QueryLike | None, options: SearchOptions
) -> SearchPlan:
    """Validate everything, then build the stages over ``base``; see :func:`mrl_search`.

    With ``query=None`` the query parameter is left unbound, to be given with ``.params()``.
    """
    k = options.k
    check_positive_int("k", k)
    if base._limit_clause is not None or base._order_by_clauses:
        raise SearchParameterError(
            "the select to search already has ORDER BY or LIMIT; mrl_search adds its own"
        )
    filtered, froms = _filtering(base)
    available = [p for f in froms for p in _prefixes_in(f)]
    stages = _choose_stages(available, froms, options.prefix)
    counts = candidate_counts(stages, k, options.candidates, options.oversample, filtered)
    settings = statement_settings(
        counts[0], filtered, options.ef_search, options.iterative_scan, options.max_scan_tuples
    )

    full = stages[0].spec.full
    vector = None if query is None else as_query_array(query, full)
    query_param: BindParameter[Any] = bindparam(QUERY_PARAM, vector, type_=QueryVectorType(full))
    query_vector = cast(query_param, full.sql_type())

    if options.distributed:
        row_counts = [row_count(count) for count in counts]
        last, distance = distributed_stages(base, stages, row_counts, query_vector)
        return SearchPlan(
            columns=[_rebind(description, last) for description in base.column_descriptions],
            source=last,
            distance=distance.label(DISTANCE_LABEL),
            k=k,
            settings=settings,
            full=full,
            names_unique=_names_unique(stages, available),
            stages=tuple(stages),
            distributed=True,
        )

    first = stages[0]
    carried = [first.full_column.label("mrl_full")] + [
        stage.value.label(f"mrl_stage_{i}") for i, stage in enumerate(stages[1:], start=1)
    ]
    made = settings_subquery(settings)
    inner = (
        base.add_columns(*carried)
        .where(made.c.mrl_applied)
        .order_by(first.spec.index_distance(first.value, first.spec.expression(query_vector)))
        .limit(row_count(counts[0]))
    )
    candidates_so_far: NamedFromClause = inner.lateral("mrl_candidates_0")
    source: FromClause = made.join(candidates_so_far, true())
    for i, stage in enumerate(stages[1:], start=1):
        narrowed = (
            sql_select(candidates_so_far)
            .select_from(source)
            .order_by(
                stage.spec.index_distance(
                    candidates_so_far.c[f"mrl_stage_{i}"], stage.spec.expression(query_vector)
                )
            )
            .limit(row_count(counts[i]))
        )
        candidates_so_far = source = narrowed.subquery(f"mrl_candidates_{i}")

    distance = (
        stages[-1]
        .spec.full_distance(candidates_so_far.c.mrl_full, query_vector)
        .label(DISTANCE_LABEL)
    )
    columns = [_rebind(description, candidates_so_far) for description in base.column_descriptions]
    return SearchPlan(
        columns=columns,
        source=source,
        distance=distance,
        k=k,
        settings=settings,
        full=full,
        names_unique=_names_unique(stages, available),
        stages=tuple(stages),
    )


def with_distributed_form(
    search: SearchSelect, base: Select[Any], query: QueryLike | None, options: SearchOptions
) -> SearchSelect:
    """``search``, told how to build its distributed form when ``options`` leave the form
    to the connection (``distributed=None``); the form is built the first time it runs."""
    if options.distributed is None:
        distributed = replace(options, distributed=True)
        search.distributed_form = DistributedForm(
            search, cache(lambda: plan_search(base, query, distributed).select())
        )
    return search


def _names_unique(stages: list[Prefix], available: list[Prefix]) -> bool:
    return all(
        sum(name in (p.name, p.key) for p in available) == 1
        for stage in stages
        for name in (stage.name, stage.key)
    )


def _own_params(target: SearchTarget) -> dict[str, Any]:
    """Values a ``select()`` target was given with ``.params()``. SQLAlchemy 2.1 keeps them on
    the statement, apart from its bound parameters, and a statement that embeds the select
    (the search) does not take them over; 2.0 puts them in the bound parameters, whose values
    the search carries anyway."""
    if not isinstance(target, Select):
        return {}
    return dict(getattr(target, "_params", None) or {})


def row_count(count: int) -> ColumnElement[int]:
    """A ``LIMIT`` as an SQL integer literal, not a bound value: psycopg prepares a statement
    run five times, and PostgreSQL runs a prepared statement with one generic plan only when
    that plan costs about what planning each execution does; with a bound ``LIMIT`` it cannot
    know the row count, never picks the generic plan, and plans every search again (a sixth
    of a fast search's time). Counts are checked positive integers before they get here."""
    return literal_column(str(int(count)), Integer)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return value


def _base_select(target: SearchTarget) -> Select[Any]:
    if isinstance(target, Select):
        return target
    if isinstance(target, Table):
        return sql_select(target)
    mapper: Any = inspect(target, raiseerr=False)
    if isinstance(mapper, Mapper):
        return sql_select(target)
    raise PrefixSelectionError(
        f"cannot search {target!r}: expected a mapped class, a Table or a select()"
    )


def _filtering(base: Select[Any]) -> tuple[bool, Sequence[FromClause]]:
    """Whether ``base`` can drop rows (a WHERE clause or a join), and the FROM elements
    to look for prefixes in. The FROM list of the columns clause is cheap to get; the full
    one (which finds joins) costs a partial compile, so it is computed only when needed."""
    if base.whereclause is not None:
        selected = base.columns_clause_froms
        if any(True for f in selected for _ in _prefixes_in(f)):
            return True, selected
        return True, base.get_final_froms()
    froms = base.get_final_froms()
    return len(froms) > 1 or any(isinstance(f, Join) for f in froms), froms


def _prefixes_in(from_clause: FromClause) -> Iterator[Prefix]:
    """Prefixes of the tables in ``from_clause``, with columns as that FROM names them
    (through an alias, for ``aliased()`` entities)."""
    if isinstance(from_clause, Table):
        yield from prefixes_of(from_clause)
    elif isinstance(from_clause, Join):
        yield from _prefixes_in(from_clause.left)
        yield from _prefixes_in(from_clause.right)
    elif isinstance(from_clause, Alias) and isinstance(from_clause.element, Table):
        for prefix in prefixes_of(from_clause.element):
            yield replace(
                prefix,
                column=None if prefix.column is None else from_clause.c[prefix.key],
                full_column=from_clause.c[prefix.full_column.key],
            )


def _choose_stages(
    available: list[Prefix],
    froms: Sequence[FromClause],
    choice: PrefixChoice | Sequence[PrefixChoice] | None,
) -> list[Prefix]:
    where = ", ".join(sorted({str(getattr(f, "name", f)) for f in froms}))
    if not available:
        raise PrefixSelectionError(
            f"no MRL prefix is declared on {where or 'the searched select'}; declare one with "
            "mrl_prefix() or add_prefix_column()"
        )
    if choice is None:
        if len(available) > 1:
            names = ", ".join(p.name for p in available)
            raise PrefixSelectionError(
                f"{where} has several prefixes ({names}); choose one with prefix=..."
            )
        return available
    choices = (
        list(choice) if isinstance(choice, Sequence) and not isinstance(choice, str) else [choice]
    )
    if not choices:
        raise PrefixSelectionError("prefix=... names no prefix")
    stages = [_find_prefix(available, one) for one in choices]
    if len({(id(s.full_column), s.spec.distance) for s in stages}) > 1:
        raise PrefixSelectionError(
            "the prefixes of one search must share one full column and one distance; got "
            + ", ".join(f"{s.name} ({s.full_column.name}, {s.spec.distance.value})" for s in stages)
        )
    return stages


def _find_prefix(available: list[Prefix], choice: PrefixChoice) -> Prefix:
    if isinstance(choice, str):
        matches = [p for p in available if choice in (p.name, p.key)]
    elif (index_only := _index_only_attribute(choice)) is not None:
        name, table = index_only
        named = [p for p in available if not p.stored and p.key == name]
        matches = [p for p in named if p.full_column.table is table] or named
    else:
        mapped: Any = getattr(choice, "property", None)
        column = mapped.columns[0] if hasattr(mapped, "columns") else choice
        matches = [p for p in available if p.column is column] or [
            p for p in available if p.key == getattr(column, "key", None)
        ]
    if not matches:
        names = ", ".join(p.name for p in available)
        raise PrefixSelectionError(f"no prefix {choice!r}; declared prefixes: {names}")
    return matches[0]


def _rebind(description: dict[str, Any], candidates: NamedFromClause) -> Any:
    """The outer-query counterpart of one thing the base select returns."""
    entity = description.get("entity")
    expression = description.get("expr")
    if entity is not None and expression is entity:
        return aliased(inspect(entity).mapper.class_, candidates)
    column = candidates.c.get(description["name"])
    if column is None:
        raise PrefixSelectionError(
            f"cannot carry {description['name']!r} through the search; select whole entities "
            "or named columns"
        )
    return column




__all__ = [
    "IterativeScan",
    "SearchOptions",
    "SearchPlan",
    "SearchRequest",
    "mrl_search",
    "plan_search",
    "with_distributed_form",
]
