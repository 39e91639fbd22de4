"""An index on the candidate of missing_evidence rows, and no rows for cases that wait no more.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A case's rows are deleted by its id when it stops waiting (complete, rejected, merged);
    # the primary key starts with the file, so without this each delete read the whole table.
    op.create_index("ix_missing_evidence_candidate", "missing_evidence", ["candidate_id"])
    # Earlier versions deleted a row only when its file arrived: every case rejected or merged
    # while it waited for a file that never came, and every case completed with a latest frame
    # replaced before its upload, kept its rows for good. Only incomplete and returned cases
    # wait for files.
    op.get_bind().execute(
        sa.text(
            "DELETE FROM missing_evidence WHERE candidate_id NOT IN "
            "(SELECT id FROM candidates WHERE status IN ('incomplete', 'returned'))"
        )
    )


def downgrade() -> None:
    op.drop_index("ix_missing_evidence_candidate", table_name="missing_evidence")
