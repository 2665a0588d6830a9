"""Dependency graph: projects, their dependency edges and the indexers' crawl frontier.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

# What coherence_network.store.schema.UTCDateTime renders in DDL, copied: a revision imports no live code that
# could change under it.
UTCDateTime = sa.DateTime(timezone=True)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ecosystem", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(255), nullable=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("license", sa.String(255), nullable=True),
        sa.Column("homepage", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("indexed_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("ecosystem", "name", name="uq_projects_ecosystem_name"),
    )
    op.create_index("ix_projects_ecosystem_status", "projects", ["ecosystem", "status"])
    op.create_table(
        "dependencies",
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("to_ecosystem", sa.String(16), nullable=False),
        sa.Column("to_name", sa.String(255), nullable=False),
        sa.Column("requirement", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "to_ecosystem", "to_name", "kind", name="pk_dependencies"),
    )
    op.create_index("ix_dependencies_target", "dependencies", ["to_ecosystem", "to_name"])
    op.create_table(
        "index_frontier",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ecosystem", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.UniqueConstraint("ecosystem", "name", name="uq_index_frontier_ecosystem_name"),
    )
    op.create_index("ix_index_frontier_queue", "index_frontier", ["ecosystem", "state", "depth", "seq"])


def downgrade() -> None:
    op.drop_table("index_frontier")
    op.drop_table("dependencies")
    op.drop_table("projects")
