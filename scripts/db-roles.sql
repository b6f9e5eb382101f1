-- The two PostgreSQL roles of the email service (README, "Database roles").
--
--   owner    owns the database and the tables; `email-service migrate` runs as it.
--   runtime  what the API, worker and scheduler run as: it reads and writes rows and
--            nothing else, so it cannot switch row-level security off (the service
--            refuses to start as a superuser, a BYPASSRLS role or the tables' owner).
--
-- Run once per database, as a superuser (or a role with CREATEROLE that owns the
-- database), connected to that database:
--
--   psql -v ON_ERROR_STOP=1 -d email_service \
--        -v owner=email_owner -v owner_password='...' \
--        -v runtime=email_app -v runtime_password='...' \
--        -f scripts/db-roles.sql
--
-- The runtime role's grants come from the owner's default privileges, so tables and
-- sequences created by later migrations are granted without editing this file. Keep
-- the statements below in step with db.roles.runtime_grants.
\set ON_ERROR_STOP on

CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password'
    NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE ROLE :"runtime" LOGIN PASSWORD :'runtime_password'
    NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;

SELECT current_database() AS dbname \gset
ALTER DATABASE :"dbname" OWNER TO :"owner";
ALTER SCHEMA public OWNER TO :"owner";
-- Nobody but the owner creates objects in the schema (PostgreSQL < 15 let everyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

GRANT USAGE ON SCHEMA public TO :"runtime";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"runtime";
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO :"runtime";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"runtime";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO :"runtime";
-- The search index's text (message_search.document) is read through the owner's
-- function only (migration 0020r does this for the roles that exist when it runs; this
-- does it for a runtime role created after it).
SELECT format('REVOKE SELECT ON message_search FROM %I', :'runtime'),
       format('GRANT SELECT (message_id, tenant_id, pending) ON message_search TO %I',
              :'runtime'),
       format('GRANT EXECUTE ON FUNCTION'
              ' search_documents(text[], tsquery, tsquery[], tsquery, integer) TO %I',
              :'runtime')
 WHERE to_regprocedure('search_documents(text[], tsquery, tsquery[], tsquery, integer)')
       IS NOT NULL
\gexec
