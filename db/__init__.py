"""Persistence: SQLAlchemy models, sessions with tenant scoping, Alembic migrations."""
