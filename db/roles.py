"""The database roles the service runs as, and the refusal to run as a privileged one.

Row-level security (migration 0002) is the second wall between tenants. A role that
is a superuser, has ``BYPASSRLS`` or owns the tables can switch it off (``ALTER TABLE
... DISABLE ROW LEVEL SECURITY``, ``NO FORCE``, ``DROP POLICY``) or never meets it, so
on PostgreSQL the API, worker and scheduler refuse to start as such a role. Two roles
are meant instead:

- the **owner** role owns the schema: ``email-service migrate`` runs as it;
- the **runtime** role has only ``SELECT/INSERT/UPDATE/DELETE`` on the tables and use
  of the sequences, granted by the owner's *default privileges*, so tables a later
  migration creates are granted without anyone writing a GRANT; of the search index
  it reads no text (``message_search.document``), only the owner's function that
  answers searches for the transaction's tenant (migration 0020r). A role that can
  read that column is refused as well.

:func:`runtime_grants` is that set of statements (``scripts/db-roles.sql`` holds the
same for operators, and the test suite and the benchmarks use this function).
``DATABASE_ALLOW_PRIVILEGED_ROLE=true`` lifts the refusal for development.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

__all__ = ["PrivilegedRole", "RoleFacts", "refuse_privileged_role", "role_facts", "runtime_grants"]


class PrivilegedRole(RuntimeError):
    """The service's database role could switch row-level security off."""


@dataclass(frozen=True)
class RoleFacts:
    role: str
    superuser: bool
    bypass_rls: bool
    # Tables of the schema the role owns, directly or as a member of the owning role.
    owned_tables: tuple[str, ...]
    # It may read the search index's text, every tenant's (migration 0020r takes that
    # away; a GRANT on all tables made after it gives it back).
    reads_search_documents: bool = False

    @property
    def problems(self) -> list[str]:
        found = []
        if self.superuser:
            found.append("is a superuser (or may become one)")
        if self.bypass_rls:
            found.append("has BYPASSRLS (or may take a role that has it)")
        if self.owned_tables:
            shown = ", ".join(self.owned_tables[:5])
            more = f" and {len(self.owned_tables) - 5} more" if len(self.owned_tables) > 5 else ""
            found.append(f"owns the tables ({shown}{more})")
        if self.reads_search_documents:
            found.append(
                "may read every tenant's search index text (SELECT on message_search.document;"
                " db.roles.runtime_grants or scripts/db-roles.sql grant what it needs)"
            )
        return found


def role_facts(engine: Engine) -> RoleFacts:
    """What the engine's PostgreSQL role may do that row-level security cannot stop.

    Membership counts: a role that can ``SET ROLE`` to a superuser, a ``BYPASSRLS`` role
    or a table's owner has that power as soon as one SQL statement asks for it.
    """
    with engine.connect() as conn:
        role = conn.execute(text("SELECT current_user")).scalar_one()
        superuser, bypass = conn.execute(
            text(
                "SELECT coalesce(bool_or(rolsuper), false), coalesce(bool_or(rolbypassrls), false) "
                "FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER')"
            )
        ).one()
        owned = conn.execute(
            text(
                "SELECT c.relname FROM pg_class c "
                "WHERE c.relnamespace = current_schema()::text::regnamespace "
                "AND c.relkind IN ('r', 'p') "
                "AND pg_has_role(current_user, c.relowner, 'MEMBER') "
                "ORDER BY c.relname"
            )
        ).scalars()
        reads_documents = conn.execute(
            text(
                "SELECT to_regclass('message_search') IS NOT NULL"
                " AND has_column_privilege('message_search', 'document', 'SELECT')"
            )
        ).scalar_one()
        return RoleFacts(role, bool(superuser), bool(bypass), tuple(owned), bool(reads_documents))


def refuse_privileged_role(engine: Engine) -> None:
    """Raise :class:`PrivilegedRole` when the role could switch row-level security off.

    No-op on SQLite (no roles, no row-level security).
    """
    if engine.dialect.name != "postgresql":
        return
    facts = role_facts(engine)
    if facts.problems:
        raise PrivilegedRole(
            f"The database role '{facts.role}' {'; '.join(facts.problems)}: it could switch "
            "off the row-level security that separates tenants, so the service will not run "
            "as it. Run migrations as the owner role and the service as a runtime role (see "
            "README, 'Database roles'), or set DATABASE_ALLOW_PRIVILEGED_ROLE=true for "
            "development only."
        )


SEARCH_FUNCTION = "search_documents(text[], tsquery, tsquery[], tsquery, integer)"


def runtime_grants(owner: str, runtime: str, *, schema: str = "public") -> list[str]:
    """Statements (run by ``owner`` or a superuser) giving ``runtime`` what the service needs.

    Existing tables and sequences are granted directly; the owner's default privileges
    grant the same on everything it creates later, which is how new migrations' tables
    reach the runtime role.
    """
    o, r, s = _ident(owner), _ident(runtime), _ident(schema)
    return [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} "
        f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r}",
        # The search index's text is read through the owner's function only (migration
        # 0020r, which does this for the roles that exist when it runs).
        f"DO $grant$ BEGIN IF to_regprocedure('{s}.{SEARCH_FUNCTION}') IS NOT NULL THEN "  # noqa: S608
        f"REVOKE SELECT ON {s}.message_search FROM {r}; "
        f"GRANT SELECT (message_id, tenant_id, pending) ON {s}.message_search TO {r}; "
        f"GRANT EXECUTE ON FUNCTION {s}.{SEARCH_FUNCTION} TO {r}; "
        "END IF; END $grant$",
    ]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
