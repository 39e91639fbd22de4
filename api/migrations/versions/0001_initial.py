"""Candidates, idempotency keys and the feed.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gridpatrol.api.db import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "candidates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64)),
        sa.Column("camera_id", sa.String(64)),
        sa.Column("sensor_id", sa.String(64)),
        sa.Column("source_system", sa.String(128)),
        sa.Column("source_event_id", sa.String(256)),
        sa.Column("urgency", sa.String(16)),
        sa.Column("reject_reason", sa.String(32)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("hold_until", UtcDateTime()),
        sa.Column("arrive_by", UtcDateTime()),
        sa.Column("arrived_at", UtcDateTime()),
        sa.Column("feed_pos", sa.BigInteger()),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.UniqueConstraint("source_system", "source_event_id", name="uq_candidates_natural"),
    )
    op.create_index("ix_candidates_created", "candidates", ["created_at", "id"])
    op.create_index("ix_candidates_status", "candidates", ["status"])
    op.create_index("ix_candidates_type", "candidates", ["type"])
    op.create_index("ix_candidates_camera", "candidates", ["camera_id"])
    op.create_index("ix_candidates_sensor", "candidates", ["sensor_id"])
    op.create_index("ix_candidates_hold", "candidates", ["hold_until"])
    op.create_table(
        "idempotency",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("principal", sa.String(100), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("response", sa.Text()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "feed",
        sa.Column("position", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("candidate_id", sa.String(36), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_feed_candidate_id", "feed", ["candidate_id"])
    op.create_table(
        "feed_counter",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO feed_counter (id, last) VALUES (1, 0)")
    op.create_table(
        "feed_cursors",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("feed_cursors", "feed_counter", "feed", "idempotency", "candidates"):
        op.drop_table(table)
