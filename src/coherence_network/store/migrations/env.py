"""Alembic environment: runs against the engine handed over in config.attributes (no alembic.ini needed)."""

from alembic import context

from coherence_network.store.schema import metadata

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
