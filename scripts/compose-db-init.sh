#!/bin/sh
# docker-compose's PostgreSQL runs this once, when its data volume is first created
# (/docker-entrypoint-initdb.d): the owner and runtime roles of scripts/db-roles.sql.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner="$EMAIL_OWNER_ROLE" -v owner_password="$EMAIL_OWNER_PASSWORD" \
    -v runtime="$EMAIL_RUNTIME_ROLE" -v runtime_password="$EMAIL_RUNTIME_PASSWORD" \
    -f /email-service/db-roles.sql
