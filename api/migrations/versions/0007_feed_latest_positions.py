"""The feed keeps one row per candidate: its latest position.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Earlier versions added a row at each visible change of a candidate and kept the old ones:
    # a platform reading from an earlier cursor got the case once per change. Only the
    # position the candidate holds now (candidates.feed_pos) is its place in the feed.
    op.get_bind().execute(
        sa.text(
            "DELETE FROM feed WHERE NOT EXISTS (SELECT 1 FROM candidates"
            " WHERE candidates.id = feed.candidate_id AND candidates.feed_pos = feed.position)"
        )
    )


def downgrade() -> None:
    # The removed rows named positions no candidate holds: nothing to put back.
    pass
