"""Items addressed to a user: their direct conversation with the sender, found or created."""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from missive.crypto import MessageCipher
from missive.errors import UserNotFound
from missive.services.batch._items import failure_reason
from missive.services.batch._parse import Item
from missive.services.directory import find_or_create_direct


async def direct_conversations(
    conn: asyncpg.Connection,
    cipher: MessageCipher,
    items: list[Item],
    failures: dict[int, str],
) -> list[Item]:
    """Gives each item addressed to a recipient its direct conversation with the
    sender, found or created in bulk by the directory (find_or_create_direct).
    Items whose sender or recipient does not exist go to ``failures``.
    """
    pairs = sorted({(i.sender, i.recipient) for i in items if i.recipient is not None})
    users, found = await find_or_create_direct(conn, cipher, pairs)
    resolved: list[Item] = []
    for item in items:
        if item.recipient is None:
            resolved.append(item)
        elif item.sender not in users:
            failures[item.item_no] = failure_reason(
                UserNotFound(f"user {item.sender} does not exist")
            )
        elif item.recipient not in users:
            failures[item.item_no] = failure_reason(
                UserNotFound(f"user {item.recipient} does not exist")
            )
        else:
            resolved.append(replace(item, cid=found[(item.sender, item.recipient)]))
    return resolved
