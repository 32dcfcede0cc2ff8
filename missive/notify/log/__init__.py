"""The notification log: every notification is a row, written before it is sent.

Each row is one (recipient, channel, dedupe key); its id is a UUID5 of the three, so a
rerun of any step computes the same ids and ``ON CONFLICT DO NOTHING`` / status guards
make it change nothing twice. Every method works on all the rows it is given in a few
bulk statements (``unnest`` arrays, ``UPDATE ... FROM``), whatever the group size.
Times always come from the caller (workflow time), never from the clock here.

NotificationLog is made of one part per job, each in its own private module: planning
(``_plan``), dispatch with fallback (``_dispatch``), digests (``_digest``), claiming and
recording sends (``_delivery``), the in-app inbox (``_inbox``), reading rows for
operators (``_rows``), settling receipts (``_settle``) and withdrawing what a delete or
a removal took back (``_withdraw``), over what they share
(``_shared``, ``_sql``). Import every name from here.
"""

from __future__ import annotations

from missive.notify.log._delivery import (
    CLAIM_LEASE,
    ClaimedNotification,
    Delivery,
    Outcome,
    PushClear,
    Recipient,
)
from missive.notify.log._digest import Digests
from missive.notify.log._dispatch import FALLBACK_ORDER, Dispatch
from missive.notify.log._inbox import Inbox
from missive.notify.log._plan import Planning
from missive.notify.log._rows import OverdueSummary, Rows
from missive.notify.log._settle import ReaderWatermark, SettledMany, Settling
from missive.notify.log._shared import (
    NOTIFICATION_NAMESPACE,
    OPEN_STATUSES,
    REASON_ALL_OFF,
    REASON_DELIVERED,
    REASON_GONE,
    REASON_LEFT,
    REASON_NO_DEVICE,
    REASON_NO_EMAIL,
    REASON_NO_FALLBACK,
    REASON_PREFERENCES,
    REASON_QUIET,
    REASON_READ,
    REASON_SENT_AS_FALLBACK,
    InAppNotice,
    NoticeMessage,
    NotificationRow,
    message_dedupe_key,
    notification_id,
)
from missive.notify.log._sql import UNREAD_COUNT_CAP
from missive.notify.log._withdraw import Withdrawal, Withdrawn


class NotificationLog(Planning, Dispatch, Digests, Delivery, Inbox, Rows, Settling, Withdrawal):
    """Writes and moves notification rows; holds no state between calls.

    Built with the session factory (``NotificationLog(sessions)``); each part's
    methods are in its module.
    """


__all__ = [
    "CLAIM_LEASE",
    "FALLBACK_ORDER",
    "NOTIFICATION_NAMESPACE",
    "OPEN_STATUSES",
    "REASON_ALL_OFF",
    "REASON_DELIVERED",
    "REASON_GONE",
    "REASON_LEFT",
    "REASON_NO_DEVICE",
    "REASON_NO_EMAIL",
    "REASON_NO_FALLBACK",
    "REASON_PREFERENCES",
    "REASON_QUIET",
    "REASON_READ",
    "REASON_SENT_AS_FALLBACK",
    "UNREAD_COUNT_CAP",
    "ClaimedNotification",
    "InAppNotice",
    "NoticeMessage",
    "NotificationLog",
    "NotificationRow",
    "Outcome",
    "OverdueSummary",
    "PushClear",
    "ReaderWatermark",
    "Recipient",
    "SettledMany",
    "Withdrawn",
    "message_dedupe_key",
    "notification_id",
]
