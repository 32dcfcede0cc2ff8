"""SQL that more than one part of the log runs: preference joins, bulk writes, counts."""

from __future__ import annotations

from sqlalchemy import text

# Preferences of a recipient for a conversation: user row (np), overrides (cp) and
# the membership (p, with its temporary mute). {r} / {c}: recipient / conversation.
_PREF_COLUMNS = """
    np.user_id AS np_user_id, np.in_app AS np_in_app, np.push AS np_push,
    np.email AS np_email, np.sms AS np_sms, np.mentions_only AS np_mentions_only,
    np.quiet_start AS np_quiet_start, np.quiet_end AS np_quiet_end,
    np.quiet_mentions AS np_quiet_mentions,
    cp.user_id AS cp_user_id, cp.muted AS cp_muted, cp.mentions_only AS cp_mentions_only,
    cp.in_app AS cp_in_app, cp.push AS cp_push, cp.email AS cp_email, cp.sms AS cp_sms,
    p.user_id IS NOT NULL AS is_member, p.muted_until
"""
_PREF_JOINS = """
    LEFT JOIN notification_preferences np ON np.user_id = {r}
    LEFT JOIN conversation_notification_preferences cp
           ON cp.user_id = {r} AND cp.conversation_id = {c}
    LEFT JOIN participants p ON p.user_id = {r} AND p.conversation_id = {c}
"""


def _prefs_sql(recipient: str, conversation: str) -> str:
    return _PREF_JOINS.format(r=recipient, c=conversation)


UNREAD_COUNT_CAP = 100
"""Unread in-app counts stop at this (a badge shows "99+"): counting stays an index
probe of at most this many entries per user, however many notifications pile up."""

_INSERT_ROWS = text(
    """
    INSERT INTO notifications (id, recipient_id, channel, dedupe_key, status, message_id,
                               conversation_id, seq, mention, due_at, reason, source_id,
                               digest_id, item_count, created_at, updated_at, sent_at)
    SELECT r.id, r.recipient_id, r.channel, r.dedupe_key, r.status, r.message_id,
           r.conversation_id, r.seq, r.mention, r.due_at, r.reason, r.source_id,
           r.digest_id, r.item_count, :now, :now,
           CASE WHEN r.status = 'sent' THEN CAST(:now AS timestamptz) END
      FROM unnest(CAST(:ids AS uuid[]), CAST(:recipients AS uuid[]), CAST(:channels AS text[]),
                  CAST(:keys AS text[]), CAST(:statuses AS text[]),
                  CAST(:message_ids AS uuid[]), CAST(:conversation_ids AS uuid[]),
                  CAST(:seqs AS bigint[]), CAST(:mentions AS boolean[]),
                  CAST(:dues AS timestamptz[]), CAST(:reasons AS text[]),
                  CAST(:sources AS uuid[]), CAST(:digests AS uuid[]), CAST(:counts AS int[]))
           AS r(id, recipient_id, channel, dedupe_key, status, message_id, conversation_id,
                seq, mention, due_at, reason, source_id, digest_id, item_count)
    ON CONFLICT (recipient_id, channel, dedupe_key) DO NOTHING
    RETURNING id::text AS id
    """
)

# Moves rows on; only rows still in the status they were read in (a receipt may
# have settled them meanwhile).
_APPLY_DECISIONS = text(
    """
    UPDATE notifications n
       SET status = u.status,
           reason = COALESCE(u.reason, n.reason),
           due_at = COALESCE(u.due_at, n.due_at),
           sent_at = CASE WHEN u.status = 'sent' THEN :now ELSE n.sent_at END,
           updated_at = :now
      FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]),
                  CAST(:dues AS timestamptz[])) AS u(id, status, reason, due_at)
     WHERE n.id = u.id AND n.status = ANY(CAST(:from_statuses AS text[]))
    RETURNING n.id::text AS id
    """
)

# Each recipient's unread in-app notifications, capped (see UNREAD_COUNT_CAP).
_UNREAD_COUNTS = text(
    f"""
    SELECT r.rid::text AS recipient_id, c.unread
      FROM unnest(CAST(:rids AS uuid[])) AS r(rid)
     CROSS JOIN LATERAL (
           SELECT count(*) AS unread FROM (
                  SELECT 1 FROM notifications
                   WHERE recipient_id = r.rid AND channel = 'in_app'
                     AND status = 'sent' AND read_at IS NULL
                   LIMIT {UNREAD_COUNT_CAP}) AS capped) AS c
    """
)

_NOTICE_MESSAGES = text(
    """
    SELECT m.id::text AS message_id, m.conversation_id::text AS conversation_id, m.seq,
           m.sender_id::text AS sender_id, s.display_name AS sender_name,
           c.title AS conversation_title, c.kind::text AS conversation_kind,
           c.encryption_mode::text = 'e2e' AS e2e
      FROM messages m
      JOIN users s ON s.id = m.sender_id
      JOIN conversations c ON c.id = m.conversation_id
     WHERE m.id = ANY(CAST(:ids AS uuid[])) AND m.deleted_at IS NULL
    """
)

_ROW_COLUMNS = """
    id::text AS id, recipient_id::text AS recipient_id, channel, dedupe_key, status,
    message_id::text AS message_id, conversation_id::text AS conversation_id, seq, mention,
    due_at, attempts, reason, provider_ref, digest_id::text AS digest_id,
    source_id::text AS source_id, item_count, created_at, updated_at, sent_at, read_at,
    cleared_at
"""
