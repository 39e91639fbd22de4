"""An index on when candidates last changed, for the event stream's replay.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_candidates_updated", "candidates", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_candidates_updated", table_name="candidates")
