"""Items addressed to a user: their direct conversation with the sender, found or created."""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from missive.crypto import MessageCipher
from missive.errors import UserNotFound
from missive.services.batch._items import failure_reason
from missive.services.batch._parse import Item
from missive.services.directory import direct_conversation_id

_FIND_DIRECT = """
SELECT DISTINCT ON (x.sender, x.recipient) x.sender, x.recipient, c.id
FROM unnest($1::uuid[], $2::uuid[]) AS x(sender, recipient)
JOIN participants pr ON pr.user_id = x.recipient
JOIN conversations c ON c.id = pr.conversation_id AND c.kind = 'direct'
JOIN participants ps ON ps.conversation_id = c.id AND ps.user_id = x.sender
WHERE (SELECT count(*) FROM participants o WHERE o.conversation_id = c.id) = 2
ORDER BY x.sender, x.recipient, c.encryption_mode = 'e2e', c.created_at, c.id
"""
"""The direct conversation of each (sender, recipient) pair that has one."""


def _found(found: dict[tuple[str, str], str], pair: tuple[str, ...]) -> bool:
    a, b = pair
    return (a, b) in found or (b, a) in found


async def direct_conversations(
    conn: asyncpg.Connection,
    cipher: MessageCipher,
    items: list[Item],
    failures: dict[int, str],
) -> list[Item]:
    """Gives each item addressed to a recipient its direct conversation with the
    sender: found (a standard one before an end-to-end one, then the oldest) or
    created, with its data key and both participants, in bulk.

    Created conversations get ids derived from the pair, and every insert is
    ``ON CONFLICT DO NOTHING``: a retry, a concurrent chunk or another batch
    creating the same pair's conversation end up with the same one. Items
    whose sender or recipient does not exist go to ``failures``.
    """
    pairs = sorted({(i.sender, i.recipient) for i in items if i.recipient is not None})
    people = sorted({user for pair in pairs for user in pair})
    users = {
        str(r["id"])
        for r in await conn.fetch("SELECT id FROM users WHERE id = ANY($1::uuid[])", people)
    }
    known = [p for p in pairs if p[0] in users and p[1] in users]
    found = {
        (str(r["sender"]), str(r["recipient"])): str(r["id"])
        for r in await conn.fetch(_FIND_DIRECT, [p[0] for p in known], [p[1] for p in known])
    }
    created = {direct_conversation_id(a, b): tuple(sorted((a, b))) for a, b in known}
    created = {cid: pair for cid, pair in created.items() if not _found(found, pair)}
    if created:
        ids = sorted(created)
        keys = [cipher.new_data_key(cid, 1) for cid in ids]
        # Ids in order: concurrent creators wait on each other without deadlocking.
        await conn.execute(
            "INSERT INTO conversations (id, kind)"
            " SELECT id, 'direct' FROM unnest($1::uuid[]) AS x(id) ORDER BY id"
            " ON CONFLICT (id) DO NOTHING",
            ids,
        )
        await conn.execute(
            "INSERT INTO conversation_keys (conversation_id, version, master_key_version,"
            "                               wrapped_key)"
            " SELECT x.id, 1, x.master, x.wrapped"
            " FROM unnest($1::uuid[], $2::int4[], $3::bytea[]) AS x(id, master, wrapped)"
            " ON CONFLICT DO NOTHING",
            ids,
            [k.master_key_version for k in keys],
            [k.wrapped for k in keys],
        )
        await conn.execute(
            "INSERT INTO participants (conversation_id, user_id)"
            " SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
            [cid for cid in ids for _ in range(2)],
            [user for cid in ids for user in created[cid]],
        )
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
            pair = (item.sender, item.recipient)
            cid = found.get(pair) or direct_conversation_id(*pair)
            resolved.append(replace(item, cid=cid))
    return resolved
