"""sealed batch items: staged payloads encrypted, and removed once their item is settled

Revision ID: 0010
Revises: 0004
Create Date: 2027-01-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # payload_sealed: nonce || AES-256-GCM ciphertext || tag of the item's JSON line;
    # payload_key names the staging key (codec:<v> or master:<v>, see StagingCipher).
    op.add_column("batch_items", sa.Column("payload_sealed", sa.LargeBinary(), nullable=True))
    op.add_column("batch_items", sa.Column("payload_key", sa.Text(), nullable=True))
    # The plaintext column stays only for items staged before this revision (no keys
    # here to seal them): still pending ones are stored from it, then cleared.
    op.alter_column("batch_items", "payload", nullable=True)
    op.execute("UPDATE batch_items SET payload = NULL WHERE state <> 0")
    op.create_check_constraint(
        "batch_item_payload_sealed_or_legacy",
        "batch_items",
        "payload IS NULL OR payload_sealed IS NULL",
    )


def downgrade() -> None:
    op.drop_constraint("batch_item_payload_sealed_or_legacy", "batch_items")
    # Sealed items cannot be read back without the keys: pending ones are lost.
    op.execute("DELETE FROM batch_items WHERE payload IS NULL AND state = 0")
    op.execute("UPDATE batch_items SET payload = 'null'::jsonb WHERE payload IS NULL")
    op.alter_column("batch_items", "payload", nullable=False)
    op.drop_column("batch_items", "payload_key")
    op.drop_column("batch_items", "payload_sealed")
