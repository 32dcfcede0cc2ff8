"""notifications overdue: open rows by due time, for the overdue check

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Applies this revision.

    ``starter stuck`` and the worker's overdue gauge look for open rows (pending,
    queued, sending) due long ago: this partial index holds only open rows, so the
    look reads the overdue ones and nothing else, however long the log grows.
    """
    op.create_index(
        "ix_notifications_overdue",
        "notifications",
        ["due_at"],
        postgresql_where=sa.text("status IN ('pending', 'queued', 'sending')"),
    )


def downgrade() -> None:
    """Reverts this revision."""
    op.drop_index("ix_notifications_overdue", table_name="notifications")
