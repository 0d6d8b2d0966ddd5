-- mrl_pg 0.1.0: two-stage Matryoshka search as a plain SQL function.
--
--   SELECT pk, distance FROM mrl_search('items', '[...]'::vector, 10);
--
-- Install with `psql -f mrl_pg--0.1.0.sql` or `mrl_pg.sql.install(connection)`; the function
-- is created in the first schema of the search_path and needs the vector extension
-- (pgvector >= 0.8). It finds the prefix of any table from the catalog: a STORED generated
-- column computed from one vector/halfvec column and carrying an HNSW index, or the column an
-- online migration keeps current by trigger. Its expression turns the query into a query
-- prefix, the index's operator class gives the first-stage operator, and the full vectors
-- rerank the candidates.
-- hnsw.ef_search and hnsw.iterative_scan are set for the call only (SET clauses below, then
-- set_config local): the caller's values are back when it returns.

CREATE OR REPLACE FUNCTION mrl_search(
    tbl regclass,
    query vector,
    k integer,
    candidates integer DEFAULT NULL,
    prefix_column name DEFAULT NULL,
    full_distance text DEFAULT NULL
) RETURNS TABLE (pk jsonb, distance double precision)
LANGUAGE plpgsql
SET hnsw.ef_search = 40
SET hnsw.iterative_scan = off
AS $mrl_search$
DECLARE
    candidate record;
    chosen record;
    full_op record;
    wanted_op text;
    names text;
    matches integer := 0;
    pk_select text;
    pk_json text;
    pool integer;
    ef integer;
    search_sql text;
BEGIN
    IF tbl IS NULL OR query IS NULL OR k IS NULL THEN
        RAISE EXCEPTION 'mrl_search: tbl, query and k must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k < 1 THEN
        RAISE EXCEPTION 'mrl_search: k must be a positive integer, got %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The table's prefixes, each with a single-column HNSW index: stored generated columns
    -- computed from exactly one vector/halfvec column, and the plain columns an online
    -- migration keeps current with a trigger "mrl_pg_<column>" (whose function sets
    -- NEW."<column>" := <expression of NEW."<full column>">). Staging columns of an
    -- unfinished online migration (named *_mrl_next) are not prefixes yet.
    FOR candidate IN
        SELECT a.attname AS prefix_name, src.expr,
               f.attname AS full_name, format_type(f.atttypid, f.atttypmod) AS full_type,
               f.atttypid AS full_type_oid, f.atttypmod AS full_dims,
               opn.nspname AS index_op_schema, op.oprname AS index_op,
               pt.typname = 'bit' AS is_bit
        FROM pg_attribute a
        JOIN pg_type pt ON pt.oid = a.atttypid
        JOIN LATERAL (
            SELECT pg_get_expr(d.adbin, d.adrelid) AS expr, refs.cols[1] AS full_attnum
            FROM pg_attrdef d
            JOIN LATERAL (
                SELECT array_agg(DISTINCT dep.refobjsubid) AS cols
                FROM pg_depend dep
                WHERE dep.refclassid = 'pg_class'::regclass AND dep.refobjid = a.attrelid
                  AND dep.refobjsubid > 0 AND dep.refobjsubid <> a.attnum
                  AND ((dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid)
                       OR (dep.classid = 'pg_class'::regclass AND dep.objid = a.attrelid
                           AND dep.objsubid = a.attnum))
            ) refs ON cardinality(refs.cols) = 1
            WHERE a.attgenerated = 's' AND d.adrelid = a.attrelid AND d.adnum = a.attnum
            UNION ALL
            SELECT replace(body.parts[2], 'NEW.' || quoted.full, quoted.full), src_col.attnum
            FROM pg_trigger tg
            JOIN pg_proc p ON p.oid = tg.tgfoid
            CROSS JOIN LATERAL regexp_match(
                p.prosrc, 'NEW\.("(?:[^"]|"")*") := (.*);\s*RETURN NEW;') AS body(parts)
            JOIN pg_attribute src_col ON src_col.attrelid = a.attrelid
                 AND src_col.attnum = ANY(tg.tgattr::int2[]) AND src_col.attnum <> a.attnum
            CROSS JOIN LATERAL (
                SELECT '"' || replace(src_col.attname, '"', '""') || '"' AS full
            ) quoted
            WHERE a.attgenerated = '' AND tg.tgrelid = a.attrelid AND NOT tg.tgisinternal
              AND tg.tgname LIKE 'mrl\_pg\_%'
              AND body.parts[1] = '"' || replace(a.attname, '"', '""') || '"'
        ) src ON true
        JOIN pg_attribute f ON f.attrelid = a.attrelid AND f.attnum = src.full_attnum
        JOIN pg_type ft ON ft.oid = f.atttypid AND ft.typname IN ('vector', 'halfvec')
        JOIN LATERAL (
            SELECT x.indclass[0] AS opclass
            FROM pg_index x
            JOIN pg_class ic ON ic.oid = x.indexrelid
            JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'hnsw'
            WHERE x.indrelid = a.attrelid AND x.indnatts = 1 AND x.indkey[0] = a.attnum
              AND x.indexprs IS NULL AND x.indpred IS NULL AND x.indisvalid
            ORDER BY x.indexrelid
            LIMIT 1
        ) ix ON true
        JOIN pg_opclass oc ON oc.oid = ix.opclass
        JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amoppurpose = 'o'
        JOIN pg_operator op ON op.oid = ao.amopopr
        JOIN pg_namespace opn ON opn.oid = op.oprnamespace
        WHERE a.attrelid = tbl AND NOT a.attisdropped AND a.attname !~ '_mrl_next$'
        ORDER BY a.attnum
    LOOP
        names := concat_ws(', ', names, quote_ident(candidate.prefix_name));
        IF prefix_column IS NULL OR candidate.prefix_name = prefix_column THEN
            chosen := candidate;
            matches := matches + 1;
        END IF;
    END LOOP;
    IF prefix_column IS NULL AND matches = 0 THEN
        RAISE EXCEPTION 'mrl_search: table % has no MRL prefix', tbl
            USING ERRCODE = 'undefined_column',
                  HINT = 'A prefix is a STORED generated column such as '
                      'subvector(embedding, 1, 256)::halfvec(256), with an HNSW index.';
    ELSIF prefix_column IS NULL AND matches > 1 THEN
        RAISE EXCEPTION 'mrl_search: table % has several prefixes (%); choose one', tbl, names
            USING ERRCODE = 'ambiguous_column',
                  HINT = 'Pass prefix_column => ''<name>''.';
    ELSIF matches = 0 THEN
        RAISE EXCEPTION 'mrl_search: % is not an MRL prefix of table %',
                quote_ident(prefix_column), tbl
            USING ERRCODE = 'undefined_column',
                  DETAIL = 'Prefixes of the table: ' || coalesce(names, 'none') || '.',
                  HINT = 'A prefix is a STORED generated column computed from one vector or '
                      'halfvec column, with an HNSW index.';
    END IF;

    -- The full-vector operator: the index's own for a vector/halfvec prefix; named by the
    -- caller for a bit prefix, whose Hamming index says nothing of the full distance.
    wanted_op := CASE lower(full_distance)
        WHEN 'cosine' THEN '<=>' WHEN 'inner_product' THEN '<#>' WHEN 'l2' THEN '<->' END;
    IF full_distance IS NOT NULL AND wanted_op IS NULL THEN
        RAISE EXCEPTION 'mrl_search: unknown full_distance %', quote_literal(full_distance)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''cosine'', ''inner_product'' or ''l2''.';
    END IF;
    IF wanted_op IS NULL AND chosen.is_bit THEN
        RAISE EXCEPTION 'mrl_search: prefix % of % is a bit prefix; name the full distance',
                quote_ident(chosen.prefix_name), tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass full_distance => ''cosine'', ''inner_product'' or ''l2''.';
    END IF;
    IF NOT chosen.is_bit AND wanted_op <> chosen.index_op THEN
        RAISE EXCEPTION 'mrl_search: full_distance % does not match prefix %, indexed for %',
                quote_literal(full_distance), quote_ident(chosen.prefix_name), chosen.index_op
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT o.oprname, n.nspname INTO full_op
    FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
    WHERE o.oprname = coalesce(wanted_op, chosen.index_op)
      AND o.oprleft = chosen.full_type_oid AND o.oprright = chosen.full_type_oid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'mrl_search: no operator % for %', coalesce(wanted_op, chosen.index_op),
                chosen.full_type
            USING ERRCODE = 'undefined_function';
    END IF;

    IF chosen.full_dims > 0 AND vector_dims(query) <> chosen.full_dims THEN
        RAISE EXCEPTION 'mrl_search: query has % dimensions, %.% is %',
                vector_dims(query), tbl, quote_ident(chosen.full_name), chosen.full_type
            USING ERRCODE = 'data_exception';
    END IF;

    -- Rows are named by their primary key, as a jsonb object {column: value}.
    SELECT string_agg(format('t.%I AS mrl_pk_%s', a.attname, key.n), ', ' ORDER BY key.n),
           string_agg(format('%L, c.mrl_pk_%s', a.attname, key.n), ', ' ORDER BY key.n)
    INTO pk_select, pk_json
    FROM pg_index x
    CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS key(attnum, n)
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = key.attnum
    WHERE x.indrelid = tbl AND x.indisprimary;
    IF pk_select IS NULL THEN
        RAISE EXCEPTION 'mrl_search: table % has no primary key', tbl
            USING ERRCODE = 'undefined_object',
                  HINT = 'Results name rows by primary key; add one.';
    END IF;

    -- Candidates and hnsw.ef_search, by the same rules as the Python library.
    IF candidates IS NULL THEN
        pool := CASE WHEN chosen.is_bit THEN greatest(k * 10, 200) ELSE greatest(k * 4, 40) END;
    ELSIF candidates < k THEN
        RAISE EXCEPTION 'mrl_search: candidates (%) must be at least k (%)', candidates, k
            USING ERRCODE = 'invalid_parameter_value';
    ELSE
        pool := candidates;
    END IF;
    ef := least(greatest(pool, 40), 1000);
    -- Local to this call: the SET clauses above restore the caller's values on exit.
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    IF pool > ef THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;

    search_sql := format(
        'SELECT jsonb_build_object(%s), c.mrl_full OPERATOR(%I.%s) $1::%s AS mrl_distance '
        'FROM (SELECT %s, t.%I AS mrl_full FROM %s AS t '
        'ORDER BY t.%I OPERATOR(%I.%s) (SELECT %s FROM (SELECT $1::%s AS %I) AS mrl_q) '
        'LIMIT $2) AS c ORDER BY mrl_distance LIMIT $3',
        pk_json, full_op.nspname, full_op.oprname, chosen.full_type,
        pk_select, chosen.full_name, tbl,
        chosen.prefix_name, chosen.index_op_schema, chosen.index_op, chosen.expr,
        chosen.full_type, chosen.full_name);
    RETURN QUERY EXECUTE search_sql USING query, pool, k;
END
$mrl_search$;

COMMENT ON FUNCTION mrl_search(regclass, vector, integer, integer, name, text) IS
    'mrl_pg 0.1.0: nearest k rows of a table by two-stage Matryoshka search; returns each '
    'row''s primary key as jsonb and its exact full-vector distance, nearest first.';
