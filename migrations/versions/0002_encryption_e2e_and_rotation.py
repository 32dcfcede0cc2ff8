"""e2e message headers and an index for key rotation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Applies this revision."""
    # The key metadata of an end-to-end encrypted message, relayed untouched.
    op.add_column("messages", sa.Column("e2e_header", postgresql.JSONB(), nullable=True))
    # Master-key rotation scans the data keys still wrapped by an old master.
    op.create_index(
        "ix_conversation_keys_master_version",
        "conversation_keys",
        ["master_key_version"],
        unique=False,
    )


def downgrade() -> None:
    """Reverts this revision."""
    op.drop_index("ix_conversation_keys_master_version", table_name="conversation_keys")
    op.drop_column("messages", "e2e_header")
