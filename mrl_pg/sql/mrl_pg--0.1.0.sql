-- mrl_pg 0.1.0: two-stage Matryoshka search as a plain SQL function.
--
--   SELECT pk, distance FROM mrl_search('items', '[...]'::vector, 10);
--
-- Install with `psql -f mrl_pg--0.1.0.sql` or `mrl_pg.sql.install(connection)`; the function
-- is created in the first schema of the search_path and needs the vector extension
-- (pgvector >= 0.8). It finds the prefix of any table from the catalog: a STORED generated
-- column computed from one vector/halfvec column and carrying an HNSW index, the column an
-- online migration keeps current by trigger, or an index-only prefix (an HNSW index on the
-- prefix expression itself, which the first stage then orders by). The query prefix is
-- computed as the column is (the first dimensions, normalized or binary-quantized, cast to
-- the column's type), the index's operator class gives the first-stage operator, and the full
-- vectors rerank the candidates.
-- hnsw.ef_search, hnsw.iterative_scan and hnsw.max_scan_tuples are set for the call only
-- (SET clauses below, then set_config local): the caller's values are back when it returns.
--
-- filter keeps the rows whose columns equal the values of a jsonb object:
--   filter => '{"tenant": 7}'             tenant = 7
--   filter => '{"lang": ["en", "fr"]}'    lang = ANY ('{en,fr}')
--   filter => '{"deleted_at": null}'      deleted_at IS NULL
-- Each key must be a column of the table; each value is read as that column's type. The
-- statement names the columns as identifiers and takes the values from the bound jsonb, so no
-- text of the filter becomes SQL. A filtered search gets more candidates and an iterative
-- index scan, as the Python library gives it (docs/filters.md).

-- The signature before filter was added: a second function would make calls ambiguous.
DROP FUNCTION IF EXISTS mrl_search(regclass, vector, integer, integer, name, text);

CREATE OR REPLACE FUNCTION mrl_search(
    tbl regclass,
    query vector,
    k integer,
    candidates integer DEFAULT NULL,
    prefix_column name DEFAULT NULL,
    full_distance text DEFAULT NULL,
    filter jsonb DEFAULT NULL
) RETURNS TABLE (pk jsonb, distance double precision)
LANGUAGE plpgsql
SET hnsw.ef_search = 40
SET hnsw.iterative_scan = off
SET hnsw.max_scan_tuples = 20000
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
    query_prefix text;
    search_sql text;
    filter_key text;
    filter_column record;
    where_sql text := '';
BEGIN
    IF tbl IS NULL OR query IS NULL OR k IS NULL THEN
        RAISE EXCEPTION 'mrl_search: tbl, query and k must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF k < 1 THEN
        RAISE EXCEPTION 'mrl_search: k must be a positive integer, got %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The table's prefixes, each with a single-column HNSW index, found from catalog facts:
    -- STORED generated columns whose expression (pg_depend of its pg_attrdef) reads exactly
    -- one other column and calls pgvector's subvector, maybe l2_normalize (a function of an
    -- extension is recorded there, a built-in is not); and the plain columns an online
    -- migration keeps current with a trigger "mrl_pg_<column>" BEFORE INSERT OR UPDATE OF
    -- <full column>, <column> (pg_trigger.tgattr). Staging columns of an unfinished online
    -- migration (named *_mrl_next) are not prefixes yet. A trigger-maintained prefix is
    -- normalized when its index is for inner product, as mrl_pg builds it. Then the
    -- index-only prefixes: valid HNSW indexes on one expression whose dependencies (pg_depend
    -- of the index) are one column of the table and pgvector's subvector; each is named
    -- <name> when its index is ix_<table>_<name>_hnsw, else by its index, and searched by the
    -- expression as PostgreSQL prints it (pg_get_indexdef), so that the index serves it.
    FOR candidate IN
        SELECT a.attname AS prefix_name, format('t.%I', a.attname) AS prefix_sql,
               0 AS kind, a.attnum::integer AS position,
               format_type(a.atttypid, a.atttypmod) AS prefix_type,
               a.atttypmod AS prefix_dims, vec.nspname AS vector_schema,
               coalesce(src.normalized, oc.opcname LIKE '%\_ip\_ops') AS normalized,
               f.attname AS full_name, format_type(f.atttypid, f.atttypmod) AS full_type,
               f.atttypid AS full_type_oid, f.atttypmod AS full_dims,
               opn.nspname AS index_op_schema, op.oprname AS index_op,
               pt.typname = 'bit' AS is_bit
        FROM pg_attribute a
        JOIN pg_type pt ON pt.oid = a.atttypid AND pt.typname IN ('vector', 'halfvec', 'bit')
        CROSS JOIN LATERAL (
            SELECT e.oid, n.nspname FROM pg_extension e
            JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'
        ) vec
        JOIN LATERAL (
            SELECT reads.cols[1] AS full_attnum, 'l2_normalize' = ANY(calls.names) AS normalized
            FROM pg_attrdef d
            CROSS JOIN LATERAL (
                SELECT ARRAY(
                    SELECT DISTINCT dep.refobjsubid FROM pg_depend dep
                    WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
                      AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid = a.attrelid
                      AND dep.refobjsubid NOT IN (0, a.attnum)) AS cols
            ) reads
            CROSS JOIN LATERAL (
                SELECT ARRAY(
                    SELECT p.proname::text FROM pg_depend dep
                    JOIN pg_proc p ON p.oid = dep.refobjid
                    JOIN pg_depend member ON member.classid = 'pg_proc'::regclass
                         AND member.objid = p.oid AND member.deptype = 'e'
                         AND member.refclassid = 'pg_extension'::regclass
                         AND member.refobjid = vec.oid
                    WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
                      AND dep.refclassid = 'pg_proc'::regclass) AS names
            ) calls
            WHERE a.attgenerated = 's' AND d.adrelid = a.attrelid AND d.adnum = a.attnum
              AND cardinality(reads.cols) = 1 AND 'subvector' = ANY(calls.names)
            UNION ALL
            SELECT others.cols[1], NULL
            FROM pg_trigger tg
            CROSS JOIN LATERAL (
                SELECT ARRAY(
                    SELECT c FROM unnest(tg.tgattr::int2[]) AS c WHERE c <> a.attnum) AS cols
            ) others
            WHERE a.attgenerated = '' AND tg.tgrelid = a.attrelid AND NOT tg.tgisinternal
              AND tg.tgname LIKE 'mrl\_pg\_%'
              -- the name mrl_pg gives it, unless too long and shortened with a hash
              AND (tg.tgname = 'mrl_pg_' || a.attname
                   OR octet_length('mrl_pg_' || a.attname) > 63)
              AND a.attnum = ANY(tg.tgattr::int2[]) AND cardinality(others.cols) = 1
              AND cardinality(tg.tgattr::int2[]) = 2
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
          AND a.atttypmod > 0
        UNION ALL
        SELECT CASE WHEN left(ic.relname, length(named.head)) = named.head
                         AND right(ic.relname, 5) = '_hnsw'
                         AND length(ic.relname) > length(named.head) + 5
                    THEN substr(ic.relname, length(named.head) + 1,
                                length(ic.relname) - length(named.head) - 5)
                    ELSE ic.relname END::name,
               pg_get_indexdef(x.indexrelid, 1, false), 1, x.indexrelid::integer,
               format_type(ia.atttypid, ia.atttypmod), ia.atttypmod, vec.nspname,
               'l2_normalize' = ANY(calls.names),
               f.attname, format_type(f.atttypid, f.atttypmod), f.atttypid, f.atttypmod,
               opn.nspname, op.oprname, pt.typname = 'bit'
        FROM pg_index x
        JOIN pg_class ic ON ic.oid = x.indexrelid
        JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'hnsw'
        CROSS JOIN LATERAL (
            SELECT 'ix_' || t.relname || '_' AS head FROM pg_class t WHERE t.oid = x.indrelid
        ) named
        JOIN pg_attribute ia ON ia.attrelid = x.indexrelid AND ia.attnum = 1
        JOIN pg_type pt ON pt.oid = ia.atttypid AND pt.typname IN ('vector', 'halfvec', 'bit')
        CROSS JOIN LATERAL (
            SELECT e.oid, n.nspname FROM pg_extension e
            JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'
        ) vec
        CROSS JOIN LATERAL (
            SELECT ARRAY(
                SELECT DISTINCT dep.refobjsubid FROM pg_depend dep
                WHERE dep.classid = 'pg_class'::regclass AND dep.objid = x.indexrelid
                  AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid = x.indrelid
                  AND dep.refobjsubid <> 0) AS cols
        ) reads
        CROSS JOIN LATERAL (
            SELECT ARRAY(
                SELECT p.proname::text FROM pg_depend dep
                JOIN pg_proc p ON p.oid = dep.refobjid
                JOIN pg_depend member ON member.classid = 'pg_proc'::regclass
                     AND member.objid = p.oid AND member.deptype = 'e'
                     AND member.refclassid = 'pg_extension'::regclass
                     AND member.refobjid = vec.oid
                WHERE dep.classid = 'pg_class'::regclass AND dep.objid = x.indexrelid
                  AND dep.refclassid = 'pg_proc'::regclass) AS names
        ) calls
        JOIN pg_attribute f ON f.attrelid = x.indrelid AND f.attnum = reads.cols[1]
        JOIN pg_type ft ON ft.oid = f.atttypid AND ft.typname IN ('vector', 'halfvec')
        JOIN pg_opclass oc ON oc.oid = x.indclass[0]
        JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amoppurpose = 'o'
        JOIN pg_operator op ON op.oid = ao.amopopr
        JOIN pg_namespace opn ON opn.oid = op.oprnamespace
        WHERE x.indrelid = tbl AND x.indnatts = 1 AND x.indkey[0] = 0
          AND x.indpred IS NULL AND x.indisvalid AND ic.relname !~ '_next$'
          AND cardinality(reads.cols) = 1 AND 'subvector' = ANY(calls.names)
          AND ia.atttypmod > 0
        ORDER BY kind, position
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
                      'halfvec column, with an HNSW index, or an HNSW index on such an '
                      'expression.';
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

    -- The filter: one condition per key, on a column of the table, its value taken from the
    -- bound jsonb ($4) and read as the column's type.
    IF filter IS NOT NULL AND jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'mrl_search: filter must be a jsonb object of column: value, got %',
                filter
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR filter_key IN SELECT jsonb_object_keys(coalesce(filter, '{}')) LOOP
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type INTO filter_column
        FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attname = filter_key AND a.attnum > 0
          AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'mrl_search: filter names %, which is not a column of %',
                    quote_ident(filter_key), tbl
                USING ERRCODE = 'undefined_column';
        END IF;
        where_sql := where_sql || CASE jsonb_typeof(filter -> filter_key)
            WHEN 'null' THEN format(' AND t.%I IS NULL', filter_column.attname)
            WHEN 'array' THEN format(
                ' AND t.%I = ANY (ARRAY(SELECT jsonb_array_elements_text($4 -> %L))::%s[])',
                filter_column.attname, filter_key, filter_column.type)
            ELSE format(' AND t.%I = ($4 ->> %L)::%s',
                filter_column.attname, filter_key, filter_column.type)
        END;
    END LOOP;

    -- Candidates and hnsw.ef_search, by the same rules as the Python library.
    IF candidates IS NULL AND where_sql <> '' THEN
        pool := CASE WHEN chosen.is_bit THEN greatest(k * 10, 200) ELSE greatest(k * 10, 100) END;
    ELSIF candidates IS NULL THEN
        pool := CASE WHEN chosen.is_bit THEN greatest(k * 10, 200) ELSE greatest(k * 4, 40) END;
    ELSIF candidates < k THEN
        RAISE EXCEPTION 'mrl_search: candidates (%) must be at least k (%)', candidates, k
            USING ERRCODE = 'invalid_parameter_value';
    ELSE
        pool := candidates;
    END IF;
    -- hnsw.ef_search twice the candidates, within pgvector's default (40) and limit (1000).
    ef := least(greatest(pool * 2, 40), 1000);
    -- Local to this call: the SET clauses above restore the caller's values on exit.
    PERFORM set_config('hnsw.ef_search', ef::text, true);
    IF pool > ef OR where_sql <> '' THEN
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    END IF;
    IF where_sql <> '' THEN
        PERFORM set_config('hnsw.max_scan_tuples', '100000', true);
    END IF;

    -- The query's prefix, computed as the column's values are.
    query_prefix := format('%I.subvector($1::%s, 1, %s)',
        chosen.vector_schema, chosen.full_type, chosen.prefix_dims);
    IF chosen.is_bit THEN
        query_prefix := format('%I.binary_quantize(%s)', chosen.vector_schema, query_prefix);
    ELSIF chosen.normalized THEN
        query_prefix := format('%I.l2_normalize(%s)', chosen.vector_schema, query_prefix);
    END IF;

    search_sql := format(
        'SELECT jsonb_build_object(%s), c.mrl_full OPERATOR(%I.%s) $1::%s AS mrl_distance '
        'FROM (SELECT %s, t.%I AS mrl_full FROM %s AS t WHERE true%s '
        'ORDER BY %s OPERATOR(%I.%s) (SELECT (%s)::%s) '
        'LIMIT $2) AS c ORDER BY mrl_distance LIMIT $3',
        pk_json, full_op.nspname, full_op.oprname, chosen.full_type,
        pk_select, chosen.full_name, tbl, where_sql,
        chosen.prefix_sql, chosen.index_op_schema, chosen.index_op, query_prefix,
        chosen.prefix_type);
    RETURN QUERY EXECUTE search_sql USING query, pool, k, filter;
END
$mrl_search$;

COMMENT ON FUNCTION mrl_search(regclass, vector, integer, integer, name, text, jsonb) IS
    'mrl_pg 0.1.0: nearest k rows of a table by two-stage Matryoshka search; returns each '
    'row''s primary key as jsonb and its exact full-vector distance, nearest first.';
