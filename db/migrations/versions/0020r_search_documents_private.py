"""The search index's text is readable through the owner's functions only (PostgreSQL).

Migration 0016s let any row of ``message_search`` be read (the GIN index is not used
under a row-level security policy, since ``@@`` is not leakproof), so the runtime role
could read every tenant's ``document``, the indexed words of its mail. Here:

- the runtime role (every role granted ``SELECT`` on the table, found in its ACL) keeps
  ``SELECT`` on ``message_id``, ``tenant_id`` and ``pending`` only, and reads those under
  the tenant policy again (``search_read``); writing is unchanged (its policies of 0016s,
  and ``INSERT``/``UPDATE`` of ``document`` need no ``SELECT`` on it);
- searches ask :func:`search_documents`, a ``SECURITY DEFINER`` PL/pgSQL function of the
  owner with a fixed ``search_path``. It reads the transaction's tenant
  (``app.tenant_id``) itself and answers, for that tenant's entries only, which of the
  given tsqueries each entry matches and its rank: never the text. It builds its
  statement and runs it with ``EXECUTE ... USING``, so PostgreSQL plans it with the
  query's values (a common word among 500 given ids reads those 500 entries, a rare word
  reads the GIN index's few postings). The owner reads the table under a policy of its
  own that holds for every row (``search_definer``), so ``@@`` stays an index condition;
- ``EXECUTE`` on the function goes to the same roles as the table, not to ``PUBLIC``.

SQLite (one user's store, no roles) is unchanged.

Revision ID: 0020r
Revises: 0018f
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0020r"
down_revision = "0018f"
branch_labels = None
depends_on = None

TENANT = """(
    tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    OR (SELECT current_setting('app.scope', true)) = 'system'
)"""

SIGNATURE = "search_documents(text[], tsquery, tsquery[], tsquery, integer)"

# ``ids``: only these entries (NULL: all of the tenant's); ``required``: only entries that
# match it (NULL: no such condition; with no ids, its words are looked up in the GIN
# index); ``queries``: matched[i] is ``document @@ queries[i]``;
# ``ranking``: rank is ``ts_rank(document, ranking)`` (NULL: no rank); ``wanted``: the
# caller needs only the first ``wanted`` entries of ``ids`` (in its order) that match
# ``required``, so they are tested in that order, in growing slices, until that many
# matched (NULL: all of them). Only integers are formatted into the statement; every
# value goes in through USING, and EXECUTE plans it with those values.
FUNCTION = """
CREATE FUNCTION {schema}.search_documents(
    ids text[], required tsquery, queries tsquery[], ranking tsquery, wanted integer
) RETURNS TABLE (message_id text, matched boolean[], rank real)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
ROWS 100
AS $body$
DECLARE
    tenant uuid := NULLIF(current_setting('app.tenant_id', true), '')::uuid;
    tests text := '';
    sql_text text;
    first integer := 1;
    step integer := 64;
    found integer := 0;
    got integer;
BEGIN
    IF tenant IS NULL THEN
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(queries), 0) LOOP
        tests := tests || CASE WHEN i > 1 THEN ', ' ELSE '' END
            || format('s.document @@ $3[%s]', i);
    END LOOP;
    sql_text := 'SELECT s.message_id::text, '
        || CASE WHEN tests = '' THEN '''{{}}''::boolean[]' ELSE 'ARRAY[' || tests || ']' END
        || CASE WHEN ranking IS NULL THEN ', NULL::real' ELSE ', ts_rank(s.document, $4)' END
        || ' FROM {schema}.message_search s WHERE s.tenant_id = $5';
    IF ids IS NULL THEN
        -- The GIN index's matches of ``required``, or all of the tenant's entries (tested
        -- one by one when ``required`` has no word to look up: ``!word``).
        IF querytree(required) = 'T' THEN
            sql_text := sql_text || ' AND (s.document @@ $2) IS TRUE';
        ELSIF required IS NOT NULL THEN
            sql_text := sql_text || ' AND s.document @@ $2';
        END IF;
        RETURN QUERY EXECUTE sql_text USING ids, required, queries, ranking, tenant;
        RETURN;
    END IF;
    -- The given entries, by their ids. IS TRUE keeps ``@@`` from being an index
    -- condition: intersecting a few hundred ids with every GIN posting of a common word
    -- (or a prefix) costs more than testing those few hundred entries.
    sql_text := sql_text || ' AND s.message_id = ANY ($1)';
    IF required IS NOT NULL THEN
        sql_text := sql_text || ' AND (s.document @@ $2) IS TRUE';
    END IF;
    IF wanted IS NULL THEN
        RETURN QUERY EXECUTE sql_text USING ids, required, queries, ranking, tenant;
        RETURN;
    END IF;
    WHILE first <= coalesce(cardinality(ids), 0) LOOP
        RETURN QUERY EXECUTE sql_text
            USING ids[first:first + step - 1], required, queries, ranking, tenant;
        GET DIAGNOSTICS got = ROW_COUNT;
        found := found + got;
        EXIT WHEN found >= wanted;
        first := first + step;
        step := step * 2;
    END LOOP;
END
$body$
"""

# Roles other than the owner that may read the table: the runtime role(s).
READERS = """
SELECT DISTINCT grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = 'message_search'::regclass AND a.privilege_type = 'SELECT'
  AND a.grantee <> 0 AND a.grantee <> c.relowner
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.exec_driver_sql("SELECT quote_ident(current_schema())").scalar_one()
    readers = [row[0] for row in bind.exec_driver_sql(READERS)]
    op.execute("DROP POLICY search_read ON message_search")
    op.execute(f"CREATE POLICY search_read ON message_search FOR SELECT USING {TENANT}")
    # The owner (whose functions read for searches) reads every row; FORCE stays, so any
    # other statement of the owner's meets the write policies as before.
    op.execute(
        "CREATE POLICY search_definer ON message_search FOR SELECT TO CURRENT_USER USING (true)"
    )
    op.execute(FUNCTION.format(schema=schema))
    op.execute(f"REVOKE ALL ON FUNCTION {schema}.{SIGNATURE} FROM PUBLIC")
    for role in readers:  # names as regrole prints them: quoted where needed
        op.execute(f"REVOKE SELECT ON message_search FROM {role}")  # noqa: S608
        op.execute(f"GRANT SELECT (message_id, tenant_id, pending) ON message_search TO {role}")
        op.execute(f"GRANT EXECUTE ON FUNCTION {schema}.{SIGNATURE} TO {role}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    readers = [
        row[0]
        for row in bind.exec_driver_sql(
            "SELECT DISTINCT grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE c.oid = 'message_search'::regclass AND a.grantee <> 0"
            " AND a.grantee <> c.relowner"
        )
    ]
    readers += [
        row[0]
        for row in bind.exec_driver_sql(
            "SELECT DISTINCT attacl_role FROM ("
            " SELECT (aclexplode(a.attacl)).grantee::regrole::text AS attacl_role"
            " FROM pg_attribute a WHERE a.attrelid = 'message_search'::regclass"
            " AND a.attacl IS NOT NULL) r"
        )
    ]
    for role in sorted(set(readers)):
        op.execute(
            f"REVOKE SELECT (message_id, tenant_id, pending) ON message_search FROM {role}"  # noqa: S608
        )
        op.execute(f"GRANT SELECT ON message_search TO {role}")
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    op.execute("DROP POLICY IF EXISTS search_definer ON message_search")
    op.execute("DROP POLICY IF EXISTS search_read ON message_search")
    op.execute("CREATE POLICY search_read ON message_search FOR SELECT USING (true)")
