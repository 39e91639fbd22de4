"""Evidence incomplete candidates wait for.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "missing_evidence",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("candidate_id", sa.String(36), primary_key=True),
    )
    # Incomplete candidates stored before: each of their evidence files may be the one they
    # wait for (a row for a file the store holds already only costs a lookup).
    rows = op.get_bind().execute(
        sa.text("SELECT id, doc FROM candidates WHERE status = 'incomplete'")
    )
    waiting = set()
    for cid, doc in rows:
        for item in json.loads(doc).get("evidence") or []:
            sha = item.get("sha256") if isinstance(item, dict) else None
            if isinstance(sha, str):
                waiting.add((sha, cid))
    if waiting:
        op.bulk_insert(table, [{"sha256": s, "candidate_id": c} for s, c in sorted(waiting)])


def downgrade() -> None:
    op.drop_table("missing_evidence")
