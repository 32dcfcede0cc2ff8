"""provider rate buckets: one token bucket per notification channel, shared by every worker

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Applies this revision.

    UNLOGGED for the reason send_rate_buckets is (0008): a bucket is seconds of state
    rewritten on every send activity; a crash only refills it. One row per channel.
    """
    op.execute(
        """
        CREATE UNLOGGED TABLE provider_rate_buckets (
            channel text PRIMARY KEY,
            tokens double precision NOT NULL,
            updated_at timestamptz NOT NULL,
            taken integer NOT NULL
        )
        """
    )


def downgrade() -> None:
    """Reverts this revision."""
    op.drop_table("provider_rate_buckets")
