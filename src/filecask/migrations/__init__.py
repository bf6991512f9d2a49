"""Alembic migrations of the metadata store (script_location `filecask:migrations`)."""
