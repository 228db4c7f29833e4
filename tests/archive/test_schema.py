"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sensecare.archive.db import Database
from sensecare.archive.models import Base


def test_migrations_match_models(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()  # idempotent: a restart upgrades nothing
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        db.dispose()
