"""send rate buckets: one token bucket per user, shared by every gateway process

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Applies this revision.

    UNLOGGED: a bucket is a few seconds of state, rewritten on every send; losing
    it in a crash only refills everyone's bucket, so it skips the WAL (about half
    the cost of a logged upsert). There is one small row per user who ever sent
    through a gateway; an idle one is simply full the next time it is read.
    """
    op.execute(
        """
        CREATE UNLOGGED TABLE send_rate_buckets (
            user_id uuid PRIMARY KEY,
            tokens double precision NOT NULL,
            updated_at timestamptz NOT NULL,
            allowed boolean NOT NULL
        )
        """
    )


def downgrade() -> None:
    """Reverts this revision."""
    op.drop_table("send_rate_buckets")
