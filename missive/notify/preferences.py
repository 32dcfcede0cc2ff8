"""Notification preferences: pure channel resolution and quiet hours, and PreferenceService."""

from __future__ import annotations

import re
import uuid
import zoneinfo
from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from missive.errors import ConversationNotFound, InvalidInput, NotAMember, UserNotFound
from missive.models import DevicePlatform
from missive.schemas import Channel, ConversationPreferences, NotificationPreferences
from missive.validation import E164, require_uuid

REASON_NO_PHONE = "no phone number"

MAX_PUSH_TOKEN = 4_096
"""Longest push token accepted (FCM tokens are a few hundred characters)."""

_PUSH_TOKEN = re.compile(r"^[\x21-\x7e]+\Z")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_CHANNEL_FLAGS = (
    (Channel.IN_APP, "in_app"),
    (Channel.PUSH, "push"),
    (Channel.EMAIL, "email"),
    (Channel.SMS, "sms"),
)


# --- pure functions ---


def parse_hhmm(value: object, *, what: str = "time") -> time:
    """Parses a 24-hour ``HH:MM`` wall-clock time.

    Raises:
        InvalidInput: naming ``what`` and the value when it is not ``HH:MM``.
    """
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(f"{what} must be a 24-hour time HH:MM, got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def format_hhmm(value: time) -> str:
    """``HH:MM`` of a time (seconds dropped)."""
    return value.strftime("%H:%M")


def allowed_channels(
    user: NotificationPreferences,
    conversation: ConversationPreferences | None,
    *,
    mention: bool,
    muted_until: datetime | None,
    now: datetime,
) -> frozenset[Channel] | None:
    """The channels a recipient wants for one message.

    A conversation override that is None inherits the user's choice.

    Args:
        user: The recipient's preferences (defaults when they never set any).
        conversation: Their overrides for the message's conversation, if any.
        mention: Whether the message mentions the recipient.
        muted_until: The participant's temporary mute (participants.muted_until).
        now: The time to judge ``muted_until`` against.

    Returns:
        None when the recipient wants no notification of this message at all (the
        conversation is muted, or only mentions notify and this is not one): nothing
        is recorded. Otherwise the channels switched on, possibly none (every channel
        off: the caller records that).
    """
    conv = conversation or ConversationPreferences()
    if conv.muted or (muted_until is not None and muted_until > now):
        return None
    mentions_only = user.mentions_only if conv.mentions_only is None else conv.mentions_only
    if mentions_only and not mention:
        return None
    chosen = set()
    for channel, name in _CHANNEL_FLAGS:
        override = getattr(conv, name)
        if getattr(user, name) if override is None else override:
            chosen.add(channel)
    return frozenset(chosen)


def resolve_timezone(name: str | None) -> tuple[zoneinfo.ZoneInfo | Any, str | None]:
    """The zone of an IANA name, or UTC with a note saying why when it is unknown."""
    if name:
        try:
            return zoneinfo.ZoneInfo(name), None
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return UTC, f"unknown timezone {name!r}: quiet hours taken in UTC"


def quiet_hours_end(
    prefs: NotificationPreferences, timezone: str | None, now: datetime, *, mention: bool
) -> tuple[datetime | None, str | None]:
    """When the quiet hours ``now`` falls in end, in UTC.

    Quiet hours are wall-clock times in the recipient's timezone, read at each call
    (a timezone change applies from the next evaluation). They may span midnight
    (``22:00``-``07:00``). Across a DST change the end is the first instant the wall
    clock shows the end time (a skipped time ends at the jump, a repeated one at the
    occurrence still ahead).

    Args:
        prefs: The recipient's preferences (quiet_start, quiet_end, quiet_mentions).
        timezone: Their IANA timezone name; unknown names are taken as UTC.
        now: The time to judge (aware).
        mention: Whether the notification is for a mention (quiet_mentions lets those
            through).

    Returns:
        (end, note): ``end`` None when ``now`` is outside quiet hours (or there are
        none, or a mention breaks through); ``note`` says when the timezone was
        unknown and UTC was used, else None.
    """
    if prefs.quiet_start is None or prefs.quiet_end is None:
        return None, None
    if mention and prefs.quiet_mentions:
        return None, None
    start = parse_hhmm(prefs.quiet_start, what="quiet_start")
    end = parse_hhmm(prefs.quiet_end, what="quiet_end")
    if start == end:
        return None, None
    zone, note = resolve_timezone(timezone)
    local = now.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    today = local.date()
    if start < end:
        if not start <= wall < end:
            return None, note
        end_day = today
    elif wall >= start:
        end_day = today + timedelta(days=1)
    elif wall < end:
        end_day = today
    else:
        return None, note
    for instant in _instants(end_day, end, zone):
        if instant > now:
            return instant, note
    return None, note


def _instants(day: date, wall: time, zone: Any) -> list[datetime]:
    """The UTC instants at which the wall clock of ``zone`` shows ``day wall``, ascending.

    One normally, two in a repeated (fall-back) hour; in a skipped (spring-forward)
    hour, the instant of the jump, when the clock first passes ``wall``.
    """
    naive = datetime.combine(day, wall)
    found = []
    for fold in (0, 1):
        utc = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if utc.astimezone(zone).replace(tzinfo=None) == naive and utc not in found:
            found.append(utc)
    if found:
        return sorted(found)
    # Skipped time: fold=1 lands before the jump, fold=0 after it; search the jump.
    lo = int(naive.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(naive.replace(tzinfo=zone, fold=0).astimezone(UTC).timestamp())
    lo, hi = min(lo, hi), max(lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return [datetime.fromtimestamp(hi, UTC)]


def user_preferences(row: Mapping[Any, Any], *, prefix: str = "") -> NotificationPreferences:
    """NotificationPreferences from a row of notification_preferences (defaults if absent).

    ``row`` has the table's columns, each named ``prefix + column``; ``prefix +
    "user_id"`` None (an outer join found no row) means the defaults.
    """
    if row.get(f"{prefix}user_id") is None:
        return NotificationPreferences()
    start, end = row[f"{prefix}quiet_start"], row[f"{prefix}quiet_end"]
    return NotificationPreferences(
        in_app=row[f"{prefix}in_app"],
        push=row[f"{prefix}push"],
        email=row[f"{prefix}email"],
        sms=row[f"{prefix}sms"],
        mentions_only=row[f"{prefix}mentions_only"],
        quiet_start=None if start is None else format_hhmm(start),
        quiet_end=None if end is None else format_hhmm(end),
        quiet_mentions=row[f"{prefix}quiet_mentions"],
    )


def conversation_preferences(
    row: Mapping[Any, Any], *, prefix: str = ""
) -> ConversationPreferences | None:
    """ConversationPreferences from a row of conversation_notification_preferences.

    None when ``prefix + "user_id"`` is None (no overrides).
    """
    if row.get(f"{prefix}user_id") is None:
        return None
    return ConversationPreferences(
        muted=row[f"{prefix}muted"],
        mentions_only=row[f"{prefix}mentions_only"],
        in_app=row[f"{prefix}in_app"],
        push=row[f"{prefix}push"],
        email=row[f"{prefix}email"],
        sms=row[f"{prefix}sms"],
    )


def phone_problem(phone: str | None) -> str | None:
    """Why SMS cannot go to this number (None: it can)."""
    if phone is None or not phone.strip():
        return REASON_NO_PHONE
    if not E164.match(phone):
        return f"phone number {phone!r} is not E.164 (+ then 7-15 digits)"
    return None


def validate_user_preferences(prefs: NotificationPreferences) -> tuple[time | None, time | None]:
    """Checks user preferences before they are stored; returns the parsed quiet hours.

    Raises:
        InvalidInput: a flag that is not a boolean, a quiet time that is not HH:MM,
            only one end of the quiet hours, or both ends equal.
    """
    for f in fields(NotificationPreferences):
        value = getattr(prefs, f.name)
        if f.name in ("quiet_start", "quiet_end"):
            continue
        if not isinstance(value, bool):
            raise InvalidInput(f"{f.name} must be true or false, got {value!r}")
    if (prefs.quiet_start is None) != (prefs.quiet_end is None):
        raise InvalidInput("quiet hours need both quiet_start and quiet_end (or neither)")
    if prefs.quiet_start is None or prefs.quiet_end is None:
        return None, None
    start = parse_hhmm(prefs.quiet_start, what="quiet_start")
    end = parse_hhmm(prefs.quiet_end, what="quiet_end")
    if start == end:
        raise InvalidInput(f"quiet_start and quiet_end are both {format_hhmm(start)}")
    return start, end


def validate_conversation_preferences(prefs: ConversationPreferences) -> None:
    """Checks conversation overrides before they are stored.

    Raises:
        InvalidInput: muted that is not a boolean, an override that is neither a
            boolean nor None.
    """
    if not isinstance(prefs.muted, bool):
        raise InvalidInput(f"muted must be true or false, got {prefs.muted!r}")
    for f in fields(ConversationPreferences):
        value = getattr(prefs, f.name)
        if f.name != "muted" and value is not None and not isinstance(value, bool):
            raise InvalidInput(f"{f.name} must be true, false or null, got {value!r}")


def require_timezone(name: object) -> str:
    """An IANA timezone name that exists, or InvalidInput naming it."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"timezone must be an IANA name like 'Europe/Paris', got {name!r}")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"timezone {name!r} does not exist") from None
    return name


def require_push_token(token: object) -> str:
    """A push token: 1-4096 printable ASCII characters without spaces."""
    if not isinstance(token, str):
        raise InvalidInput(f"push token must be a string, got {type(token).__name__}")
    if not token or len(token) > MAX_PUSH_TOKEN or not _PUSH_TOKEN.match(token):
        shown = token[:24] + "..." if len(token) > 24 else token
        raise InvalidInput(
            f"push token {shown!r} is malformed: expected 1-{MAX_PUSH_TOKEN} printable "
            "ASCII characters without spaces"
        )
    return token


def require_platform(platform: object) -> DevicePlatform:
    """A device platform (ios, android, web), or InvalidInput naming it."""
    try:
        return DevicePlatform(str(platform))
    except ValueError:
        names = ", ".join(p.value for p in DevicePlatform)
        raise InvalidInput(f"platform must be one of {names}, got {platform!r}") from None


# --- the service ---

_USER_PREFS = text(
    """
    SELECT u.id AS uid, np.*
      FROM users u
      LEFT JOIN notification_preferences np ON np.user_id = u.id
     WHERE u.id = :uid
    """
)

_SET_USER = text(
    """
    INSERT INTO notification_preferences AS np
           (user_id, in_app, push, email, sms, mentions_only,
            quiet_start, quiet_end, quiet_mentions, updated_at)
    SELECT u.id, :in_app, :push, :email, :sms, :mentions_only,
           :quiet_start, :quiet_end, :quiet_mentions, now()
      FROM users u WHERE u.id = :uid
    ON CONFLICT (user_id) DO UPDATE
       SET in_app = EXCLUDED.in_app, push = EXCLUDED.push, email = EXCLUDED.email,
           sms = EXCLUDED.sms, mentions_only = EXCLUDED.mentions_only,
           quiet_start = EXCLUDED.quiet_start, quiet_end = EXCLUDED.quiet_end,
           quiet_mentions = EXCLUDED.quiet_mentions, updated_at = now()
    RETURNING np.user_id
    """
)

_MEMBERSHIP = text(
    """
    SELECT EXISTS (SELECT 1 FROM users WHERE id = :uid) AS user_exists,
           EXISTS (SELECT 1 FROM conversations WHERE id = :cid) AS conversation_exists,
           EXISTS (SELECT 1 FROM participants
                    WHERE conversation_id = :cid AND user_id = :uid) AS is_member,
           cp.*
      FROM (SELECT 1) AS one
      LEFT JOIN conversation_notification_preferences cp
             ON cp.user_id = :uid AND cp.conversation_id = :cid
    """
)

_SET_CONVERSATION = text(
    """
    INSERT INTO conversation_notification_preferences AS cp
           (user_id, conversation_id, muted, mentions_only, in_app, push, email, sms)
    SELECT p.user_id, p.conversation_id, :muted, :mentions_only, :in_app, :push, :email, :sms
      FROM participants p WHERE p.conversation_id = :cid AND p.user_id = :uid
    ON CONFLICT (user_id, conversation_id) DO UPDATE
       SET muted = EXCLUDED.muted, mentions_only = EXCLUDED.mentions_only,
           in_app = EXCLUDED.in_app, push = EXCLUDED.push,
           email = EXCLUDED.email, sms = EXCLUDED.sms
    RETURNING cp.user_id
    """
)

# A token moves to whoever registers it last (a phone changing hands, a re-login).
_REGISTER_DEVICE = text(
    """
    INSERT INTO devices AS d (id, user_id, platform, push_token, last_seen_at)
    SELECT :id, u.id, CAST(:platform AS device_platform), :token, now()
      FROM users u WHERE u.id = :uid
    ON CONFLICT (push_token) DO UPDATE
       SET user_id = EXCLUDED.user_id, platform = EXCLUDED.platform,
           last_seen_at = EXCLUDED.last_seen_at
    RETURNING d.id::text AS id
    """
)


class PreferenceService:
    """Reads and writes notification preferences, timezones and push devices."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def get_user(self, user_id: str) -> NotificationPreferences:
        """A user's preferences (the defaults when never set).

        Raises:
            InvalidInput: a malformed id.
            UserNotFound: no such user.
        """
        uid = require_uuid(user_id, "user_id")
        async with self._sessions() as session:
            row = (await session.execute(_USER_PREFS, {"uid": uid})).mappings().one_or_none()
        if row is None:
            raise UserNotFound(f"user {uid} does not exist")
        return user_preferences(row)

    async def set_user(self, user_id: str, prefs: NotificationPreferences) -> None:
        """Stores a user's preferences (all of them: the dataclass is the whole set).

        Raises:
            InvalidInput: a malformed id, a quiet time that is not HH:MM, only one end
                of the quiet hours, both ends equal, a flag that is not a boolean.
            UserNotFound: no such user.
        """
        uid = require_uuid(user_id, "user_id")
        start, end = validate_user_preferences(prefs)
        params = {
            "uid": uid,
            "in_app": prefs.in_app,
            "push": prefs.push,
            "email": prefs.email,
            "sms": prefs.sms,
            "mentions_only": prefs.mentions_only,
            "quiet_start": start,
            "quiet_end": end,
            "quiet_mentions": prefs.quiet_mentions,
        }
        async with self._sessions() as session, session.begin():
            stored = (await session.execute(_SET_USER, params)).one_or_none()
        if stored is None:
            raise UserNotFound(f"user {uid} does not exist")

    async def get_conversation(self, user_id: str, conversation_id: str) -> ConversationPreferences:
        """A user's overrides for a conversation (no overrides when never set).

        Raises:
            InvalidInput: a malformed id.
            UserNotFound / ConversationNotFound: no such user / conversation.
            NotAMember: the user is not a participant.
        """
        uid = require_uuid(user_id, "user_id")
        cid = require_uuid(conversation_id, "conversation_id")
        async with self._sessions() as session:
            row = await self._membership(session, uid, cid)
        return conversation_preferences(row) or ConversationPreferences()

    async def set_conversation(
        self, user_id: str, conversation_id: str, prefs: ConversationPreferences
    ) -> None:
        """Stores a user's overrides for a conversation (None fields inherit).

        Raises:
            InvalidInput: a malformed id or a field of the wrong type.
            UserNotFound / ConversationNotFound: no such user / conversation.
            NotAMember: the user is not a participant.
        """
        uid = require_uuid(user_id, "user_id")
        cid = require_uuid(conversation_id, "conversation_id")
        validate_conversation_preferences(prefs)
        params = {
            "uid": uid,
            "cid": cid,
            "muted": prefs.muted,
            "mentions_only": prefs.mentions_only,
            "in_app": prefs.in_app,
            "push": prefs.push,
            "email": prefs.email,
            "sms": prefs.sms,
        }
        async with self._sessions() as session, session.begin():
            stored = (await session.execute(_SET_CONVERSATION, params)).one_or_none()
            if stored is None:
                await self._membership(session, uid, cid)

    async def _membership(self, session: AsyncSession, uid: str, cid: str) -> Mapping[Any, Any]:
        row = (await session.execute(_MEMBERSHIP, {"uid": uid, "cid": cid})).mappings().one()
        if not row["user_exists"]:
            raise UserNotFound(f"user {uid} does not exist")
        if not row["conversation_exists"]:
            raise ConversationNotFound(f"conversation {cid} does not exist")
        if not row["is_member"]:
            raise NotAMember(f"user {uid} is not a participant of conversation {cid}")
        return row

    async def set_timezone(self, user_id: str, name: str) -> None:
        """Sets a user's IANA timezone; quiet hours follow it from their next evaluation.

        Raises:
            InvalidInput: a malformed id, or a timezone name that does not exist (named).
            UserNotFound: no such user.
        """
        uid = require_uuid(user_id, "user_id")
        zone = require_timezone(name)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                text("UPDATE users SET timezone = :tz WHERE id = :uid RETURNING id"),
                {"tz": zone, "uid": uid},
            )
            if result.one_or_none() is None:
                raise UserNotFound(f"user {uid} does not exist")

    async def register_device(self, user_id: str, platform: str, token: str) -> str:
        """Registers a push token for a user (upsert by token) and returns the device id.

        Registering a token again refreshes it; a token registered by another user
        moves to this one.

        Raises:
            InvalidInput: a malformed id or token, an unknown platform.
            UserNotFound: no such user.
        """
        uid = require_uuid(user_id, "user_id")
        kind = require_platform(platform)
        checked = require_push_token(token)
        params = {"id": str(uuid.uuid4()), "uid": uid, "platform": kind.value, "token": checked}
        async with self._sessions() as session, session.begin():
            row = (await session.execute(_REGISTER_DEVICE, params)).one_or_none()
        if row is None:
            raise UserNotFound(f"user {uid} does not exist")
        return str(row.id)

    async def remove_device(self, token: str, *, user_id: str | None = None) -> bool:
        """Forgets a push token; returns whether it was registered.

        Args:
            token: The push token.
            user_id: Only if it is this user's (a client unregistering its own
                device); None: whoever's it is (operators, invalid-token pruning).

        Raises:
            InvalidInput: a malformed token or user id.
        """
        checked = require_push_token(token)
        owner = require_uuid(user_id, "user_id") if user_id is not None else None
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                text(
                    "DELETE FROM devices WHERE push_token = :token "
                    "AND (CAST(:owner AS uuid) IS NULL OR user_id = CAST(:owner AS uuid)) "
                    "RETURNING id"
                ),
                {"token": checked, "owner": owner},
            )
            return result.one_or_none() is not None

    async def remove_tokens(self, tokens: list[str]) -> int:
        """Deletes devices whose push tokens the provider called invalid; returns how many."""
        wanted = sorted({t for t in tokens if isinstance(t, str) and t})
        if not wanted:
            return 0
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                text("DELETE FROM devices WHERE push_token = ANY(CAST(:tokens AS text[]))"),
                {"tokens": wanted},
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
