"""Notification preferences: which channels a message gets, and when quiet hours end."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime, time, timedelta

import pytest

from missive.errors import InvalidInput
from missive.models import DevicePlatform
from missive.notify.preferences import (
    MAX_PUSH_TOKEN,
    REASON_NO_PHONE,
    allowed_channels,
    conversation_preferences,
    format_hhmm,
    parse_hhmm,
    phone_problem,
    quiet_hours_end,
    require_platform,
    require_push_token,
    require_timezone,
    resolve_timezone,
    user_preferences,
    validate_conversation_preferences,
    validate_user_preferences,
)
from missive.schemas import Channel, ConversationPreferences, NotificationPreferences

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
DEFAULT = NotificationPreferences()
IN_APP, PUSH, EMAIL, SMS = Channel.IN_APP, Channel.PUSH, Channel.EMAIL, Channel.SMS


def channels(
    user: NotificationPreferences = DEFAULT,
    conv: ConversationPreferences | None = None,
    *,
    mention: bool = False,
    muted_until: datetime | None = None,
) -> frozenset[Channel] | None:
    return allowed_channels(user, conv, mention=mention, muted_until=muted_until, now=NOW)


def quiet(start: str, end: str, **more: object) -> NotificationPreferences:
    return NotificationPreferences(quiet_start=start, quiet_end=end, **more)  # type: ignore[arg-type]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- channel resolution ---


def test_defaults_are_in_app_push_and_email_and_sms_needs_opting_in() -> None:
    assert channels() == {IN_APP, PUSH, EMAIL}
    assert channels(NotificationPreferences(sms=True)) == {IN_APP, PUSH, EMAIL, SMS}


def test_conversation_overrides_win_and_none_inherits() -> None:
    user = NotificationPreferences(push=False, sms=False)
    assert channels(user, ConversationPreferences()) == {IN_APP, EMAIL}
    assert channels(user, ConversationPreferences(push=True, email=False, sms=True)) == {
        IN_APP,
        PUSH,
        SMS,
    }
    assert channels(DEFAULT, ConversationPreferences(in_app=False)) == {PUSH, EMAIL}


def test_muted_conversation_or_temporary_mute_means_no_notification_at_all() -> None:
    assert channels(DEFAULT, ConversationPreferences(muted=True)) is None
    assert channels(DEFAULT, ConversationPreferences(muted=True), mention=True) is None
    assert channels(muted_until=NOW + timedelta(minutes=5)) is None
    assert channels(muted_until=NOW - timedelta(minutes=5)) == {IN_APP, PUSH, EMAIL}


def test_mentions_only_lets_only_mentions_through() -> None:
    user = NotificationPreferences(mentions_only=True)
    assert channels(user) is None
    assert channels(user, mention=True) == {IN_APP, PUSH, EMAIL}
    # A conversation can relax or tighten the user's choice.
    assert channels(user, ConversationPreferences(mentions_only=False)) == {IN_APP, PUSH, EMAIL}
    assert channels(DEFAULT, ConversationPreferences(mentions_only=True)) is None
    assert channels(DEFAULT, ConversationPreferences(mentions_only=True), mention=True) == {
        IN_APP,
        PUSH,
        EMAIL,
    }


def test_every_channel_off_is_an_empty_set_not_a_mute() -> None:
    off = NotificationPreferences(in_app=False, push=False, email=False, sms=False)
    assert channels(off) == frozenset()
    assert channels(DEFAULT, ConversationPreferences(in_app=False, push=False, email=False)) == (
        frozenset()
    )


# --- HH:MM and validation ---


@pytest.mark.parametrize(("value", "parsed"), [("00:00", time(0, 0)), ("23:59", time(23, 59))])
def test_parse_hhmm(value: str, parsed: time) -> None:
    assert parse_hhmm(value) == parsed


@pytest.mark.parametrize("value", ["7:30", "24:00", "12:60", "12:30:00", "", "noon", 730, None])
def test_bad_hhmm_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidInput, match="quiet_end must be a 24-hour time HH:MM"):
        parse_hhmm(value, what="quiet_end")


def test_user_preferences_are_validated() -> None:
    assert validate_user_preferences(quiet("22:00", "07:00")) == (time(22), time(7))
    assert validate_user_preferences(DEFAULT) == (None, None)
    with pytest.raises(InvalidInput, match="both quiet_start and quiet_end"):
        validate_user_preferences(NotificationPreferences(quiet_start="22:00"))
    with pytest.raises(InvalidInput, match="quiet_start must be a 24-hour time"):
        validate_user_preferences(quiet("25:00", "07:00"))
    with pytest.raises(InvalidInput, match="both 07:00"):
        validate_user_preferences(quiet("07:00", "07:00"))
    with pytest.raises(InvalidInput, match="push must be true or false"):
        validate_user_preferences(NotificationPreferences(push="yes"))  # type: ignore[arg-type]


def test_conversation_preferences_are_validated() -> None:
    validate_conversation_preferences(ConversationPreferences(muted=True, push=None, sms=False))
    with pytest.raises(InvalidInput, match="muted must be true or false"):
        validate_conversation_preferences(ConversationPreferences(muted=None))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="email must be true, false or null"):
        validate_conversation_preferences(ConversationPreferences(email=1))  # type: ignore[arg-type]


def test_timezones_tokens_platforms_and_phones() -> None:
    assert require_timezone("Europe/Paris") == "Europe/Paris"
    for bad in ("Mars/Olympus", "", "../etc/passwd", None):
        with pytest.raises(InvalidInput, match="timezone"):
            require_timezone(bad)
    assert require_push_token("fcm:APA91b-x_y.z") == "fcm:APA91b-x_y.z"
    for bad_token in ("", "has space", "x" * 5_000, "tab\there", "ünïcode"):
        with pytest.raises(InvalidInput, match=r"push token .* is malformed"):
            require_push_token(bad_token)
    assert require_platform("ios") is DevicePlatform.IOS
    with pytest.raises(InvalidInput, match="platform must be one of ios, android, web"):
        require_platform("symbian")
    assert phone_problem("+14155550100") is None
    assert phone_problem(None) == "no phone number"
    problem = phone_problem("0612345678")
    assert problem is not None and "not E.164" in problem


# --- quiet hours ---


def test_no_quiet_hours_or_equal_ends_never_defer() -> None:
    assert quiet_hours_end(DEFAULT, "UTC", NOW, mention=False) == (None, None)
    assert quiet_hours_end(quiet("12:00", "12:00"), "UTC", NOW, mention=False) == (None, None)


def test_quiet_hours_within_a_day() -> None:
    prefs = quiet("11:30", "13:15")
    assert quiet_hours_end(prefs, "UTC", NOW, mention=False) == (utc(2026, 1, 10, 13, 15), None)
    assert quiet_hours_end(prefs, "UTC", utc(2026, 1, 10, 11, 30), mention=False)[0] is not None
    # The end is exclusive, and before the start is outside.
    assert quiet_hours_end(prefs, "UTC", utc(2026, 1, 10, 13, 15), mention=False)[0] is None
    assert quiet_hours_end(prefs, "UTC", utc(2026, 1, 10, 11, 29), mention=False)[0] is None


@pytest.mark.parametrize(
    ("now", "end"),
    [
        (utc(2026, 1, 10, 22, 0), utc(2026, 1, 11, 7, 0)),  # the start: inside
        (utc(2026, 1, 10, 23, 30), utc(2026, 1, 11, 7, 0)),  # before midnight: ends tomorrow
        (utc(2026, 1, 11, 3, 0), utc(2026, 1, 11, 7, 0)),  # after midnight: ends today
        (utc(2026, 1, 11, 6, 59), utc(2026, 1, 11, 7, 0)),
        (utc(2026, 1, 11, 7, 0), None),  # the end: outside
        (utc(2026, 1, 10, 12, 0), None),  # midday: outside
        (utc(2026, 1, 10, 21, 59), None),
    ],
)
def test_quiet_hours_across_midnight(now: datetime, end: datetime | None) -> None:
    assert quiet_hours_end(quiet("22:00", "07:00"), "UTC", now, mention=False) == (end, None)


def test_quiet_hours_are_wall_clock_in_the_users_timezone() -> None:
    prefs = quiet("22:00", "07:00")
    # 14:00 UTC is 23:00 in Tokyo (UTC+9): quiet until 07:00 JST = 22:00 UTC.
    now = utc(2026, 1, 10, 14, 0)
    assert quiet_hours_end(prefs, "Asia/Tokyo", now, mention=False) == (
        utc(2026, 1, 10, 22, 0),
        None,
    )
    # The same instant is 09:00 in New York: not quiet there.
    assert quiet_hours_end(prefs, "America/New_York", now, mention=False) == (None, None)


def test_a_timezone_change_applies_at_the_next_evaluation() -> None:
    prefs = quiet("22:00", "07:00")
    now = utc(2026, 1, 10, 14, 0)
    assert quiet_hours_end(prefs, "UTC", now, mention=False)[0] is None
    # The user moves to Tokyo: the same preferences are now read on Tokyo's clock.
    assert quiet_hours_end(prefs, "Asia/Tokyo", now, mention=False)[0] == utc(2026, 1, 10, 22)


def test_mentions_break_through_only_when_the_user_says_so() -> None:
    now = utc(2026, 1, 10, 23, 0)
    strict = quiet("22:00", "07:00")
    lenient = quiet("22:00", "07:00", quiet_mentions=True)
    assert quiet_hours_end(strict, "UTC", now, mention=True)[0] == utc(2026, 1, 11, 7)
    assert quiet_hours_end(lenient, "UTC", now, mention=True) == (None, None)
    assert quiet_hours_end(lenient, "UTC", now, mention=False)[0] == utc(2026, 1, 11, 7)


def test_an_unknown_timezone_is_taken_as_utc_with_a_note() -> None:
    end, note = quiet_hours_end(
        quiet("22:00", "07:00"), "Mars/Olympus", utc(2026, 1, 10, 23), mention=False
    )
    assert end == utc(2026, 1, 11, 7)
    assert note is not None and "Mars/Olympus" in note and "UTC" in note


def test_the_end_follows_daylight_saving_time() -> None:
    prefs = quiet("22:00", "07:00")
    # Paris: 07:00 is 06:00 UTC in winter (CET) and 05:00 UTC in summer (CEST).
    assert quiet_hours_end(prefs, "Europe/Paris", utc(2026, 1, 10, 23), mention=False)[0] == (
        utc(2026, 1, 11, 6)
    )
    assert quiet_hours_end(prefs, "Europe/Paris", utc(2026, 7, 10, 23), mention=False)[0] == (
        utc(2026, 7, 11, 5)
    )
    # The night the clocks go forward (29 March 2026, 02:00 -> 03:00): 23:00 CET is
    # 22:00 UTC, and the night ends at 07:00 CEST, 05:00 UTC (7 hours later, not 8).
    assert quiet_hours_end(prefs, "Europe/Paris", utc(2026, 3, 28, 22), mention=False)[0] == (
        utc(2026, 3, 29, 5)
    )
    # The night they go back (25 October 2026): ends at 07:00 CET, 06:00 UTC.
    assert quiet_hours_end(prefs, "Europe/Paris", utc(2026, 10, 24, 21), mention=False)[0] == (
        utc(2026, 10, 25, 6)
    )


def test_an_end_inside_the_skipped_hour_is_the_jump() -> None:
    # New York, 8 March 2026: 02:00 EST jumps to 03:00 EDT (07:00 UTC); 02:30 never
    # shows on the clock, so quiet hours ending then end at the jump.
    prefs = quiet("23:00", "02:30")
    one_am = utc(2026, 3, 8, 6, 0)  # 01:00 EST
    end, _ = quiet_hours_end(prefs, "America/New_York", one_am, mention=False)
    assert end == utc(2026, 3, 8, 7, 0)
    # At that instant the clock shows 03:00: outside, so no endless deferral.
    assert quiet_hours_end(prefs, "America/New_York", end, mention=False)[0] is None


def test_an_end_inside_the_repeated_hour_is_the_occurrence_ahead() -> None:
    # New York, 1 November 2026: 02:00 EDT goes back to 01:00 EST; 01:30 happens twice
    # (05:30 and 06:30 UTC).
    prefs = quiet("22:00", "01:30")
    first_pass = utc(2026, 11, 1, 5, 10)  # 01:10 EDT
    second_pass = utc(2026, 11, 1, 6, 10)  # 01:10 EST
    assert quiet_hours_end(prefs, "America/New_York", first_pass, mention=False)[0] == (
        utc(2026, 11, 1, 5, 30)
    )
    assert quiet_hours_end(prefs, "America/New_York", second_pass, mention=False)[0] == (
        utc(2026, 11, 1, 6, 30)
    )


def test_quiet_hours_never_end_in_the_past() -> None:
    prefs = quiet("22:00", "07:00")
    start = utc(2026, 1, 1)
    for zone in ("UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris", "Australia/Lord_Howe"):
        for hours in range(0, 24 * 366, 5):
            now = start + timedelta(hours=hours, minutes=17)
            end, _ = quiet_hours_end(prefs, zone, now, mention=False)
            if end is not None:
                assert now < end <= now + timedelta(hours=10), (zone, now, end)
                assert quiet_hours_end(prefs, zone, end, mention=False)[0] is None, (zone, end)


# --- more edges: exact messages, rows, timezones ---


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


def test_a_mute_ending_now_is_over() -> None:
    assert channels(muted_until=NOW) == {IN_APP, PUSH, EMAIL}
    assert channels(muted_until=NOW + timedelta(microseconds=1)) is None


def test_a_conversation_mute_wins_over_every_channel_override() -> None:
    loud = ConversationPreferences(muted=True, in_app=True, push=True, email=True, sms=True)
    assert channels(NotificationPreferences(sms=True), loud, mention=True) is None


def test_the_resolved_channels_are_a_frozenset() -> None:
    assert isinstance(channels(), frozenset)


def test_format_hhmm_drops_seconds_and_round_trips_parse() -> None:
    assert format_hhmm(time(7, 5, 59)) == "07:05"
    for value in ("00:00", "09:30", "23:59"):
        assert format_hhmm(parse_hhmm(value)) == value


def test_parse_hhmm_names_the_field_and_shows_the_value() -> None:
    with pytest.raises(
        InvalidInput, match=exactly("quiet_start must be a 24-hour time HH:MM, got '7pm'")
    ):
        parse_hhmm("7pm", what="quiet_start")
    with pytest.raises(InvalidInput, match=exactly("time must be a 24-hour time HH:MM, got None")):
        parse_hhmm(None)


def test_resolve_timezone() -> None:
    zone, note = resolve_timezone("Asia/Tokyo")
    assert zone == zoneinfo.ZoneInfo("Asia/Tokyo") and note is None
    for unknown in ("Mars/Olympus", "../etc/passwd", "", None):
        zone, note = resolve_timezone(unknown)
        assert zone is UTC
        assert note == f"unknown timezone {unknown!r}: quiet hours taken in UTC"


def test_an_unknown_timezone_notes_it_even_outside_quiet_hours() -> None:
    end, note = quiet_hours_end(quiet("22:00", "07:00"), "Nowhere/Land", NOW, mention=False)
    assert end is None
    assert note == "unknown timezone 'Nowhere/Land': quiet hours taken in UTC"


def test_a_mention_that_breaks_through_reads_no_timezone() -> None:
    lenient = quiet("22:00", "07:00", quiet_mentions=True)
    assert quiet_hours_end(lenient, "Nowhere/Land", utc(2026, 1, 10, 23), mention=True) == (
        None,
        None,
    )


def test_user_preferences_from_a_row() -> None:
    assert user_preferences({"user_id": None}) == NotificationPreferences()
    assert user_preferences({}) == NotificationPreferences()
    row = {
        "np_user_id": "u1",
        "np_in_app": False,
        "np_push": True,
        "np_email": False,
        "np_sms": True,
        "np_mentions_only": True,
        "np_quiet_start": time(22, 0),
        "np_quiet_end": time(6, 45, 30),
        "np_quiet_mentions": True,
    }
    assert user_preferences(row, prefix="np_") == NotificationPreferences(
        in_app=False,
        push=True,
        email=False,
        sms=True,
        mentions_only=True,
        quiet_start="22:00",
        quiet_end="06:45",
        quiet_mentions=True,
    )
    no_quiet = {**row, "np_quiet_start": None, "np_quiet_end": None}
    prefs = user_preferences(no_quiet, prefix="np_")
    assert (prefs.quiet_start, prefs.quiet_end) == (None, None)


def test_conversation_preferences_from_a_row() -> None:
    assert conversation_preferences({"cp_user_id": None}, prefix="cp_") is None
    assert conversation_preferences({}) is None
    row = {
        "user_id": "u1",
        "muted": False,
        "mentions_only": None,
        "in_app": True,
        "push": None,
        "email": False,
        "sms": None,
    }
    assert conversation_preferences(row) == ConversationPreferences(
        muted=False, mentions_only=None, in_app=True, push=None, email=False, sms=None
    )


def test_validation_messages_are_exact() -> None:
    with pytest.raises(
        InvalidInput, match=exactly("quiet hours need both quiet_start and quiet_end (or neither)")
    ):
        validate_user_preferences(NotificationPreferences(quiet_end="07:00"))
    with pytest.raises(InvalidInput, match=exactly("quiet_start and quiet_end are both 07:00")):
        validate_user_preferences(quiet("07:00", "07:00"))
    with pytest.raises(InvalidInput, match=exactly("sms must be true or false, got None")):
        validate_user_preferences(NotificationPreferences(sms=None))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=exactly("quiet_mentions must be true or false, got 1")):
        validate_user_preferences(NotificationPreferences(quiet_mentions=1))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=exactly("muted must be true or false, got 'no'")):
        validate_conversation_preferences(ConversationPreferences(muted="no"))  # type: ignore[arg-type]
    with pytest.raises(
        InvalidInput, match=exactly("mentions_only must be true, false or null, got 'yes'")
    ):
        validate_conversation_preferences(ConversationPreferences(mentions_only="yes"))  # type: ignore[arg-type]


def test_a_flag_is_checked_before_the_quiet_hours() -> None:
    prefs = NotificationPreferences(email="yes", quiet_start="bad")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"^email must be true or false"):
        validate_user_preferences(prefs)


def test_require_timezone_messages() -> None:
    with pytest.raises(
        InvalidInput,
        match=exactly("timezone must be an IANA name like 'Europe/Paris', got '  '"),
    ):
        require_timezone("  ")
    with pytest.raises(
        InvalidInput, match=exactly("timezone must be an IANA name like 'Europe/Paris', got 3")
    ):
        require_timezone(3)
    with pytest.raises(InvalidInput, match=exactly("timezone 'Mars/Olympus' does not exist")):
        require_timezone("Mars/Olympus")
    assert require_timezone("UTC") == "UTC"
    assert require_timezone("America/Argentina/Buenos_Aires") == "America/Argentina/Buenos_Aires"


def test_push_token_limits_and_messages() -> None:
    longest = "x" * MAX_PUSH_TOKEN
    assert require_push_token(longest) == longest
    assert require_push_token("!~") == "!~"  # the ends of printable ASCII
    with pytest.raises(InvalidInput, match=exactly("push token must be a string, got bytes")):
        require_push_token(b"token")
    with pytest.raises(InvalidInput) as info:
        require_push_token("x" * (MAX_PUSH_TOKEN + 1))
    # A long token is shown by its first 24 characters only.
    assert str(info.value) == (
        f"push token {'x' * 24 + '...'!r} is malformed: expected 1-4096 printable "
        "ASCII characters without spaces"
    )
    with pytest.raises(InvalidInput, match=r"^push token 'a b' is malformed: expected 1-4096"):
        require_push_token("a b")


def test_a_push_token_with_a_trailing_newline_is_malformed() -> None:
    with pytest.raises(InvalidInput, match="is malformed"):
        require_push_token("fcm-token\n")


@pytest.mark.parametrize("platform", list(DevicePlatform))
def test_every_platform_is_accepted_by_its_value(platform: DevicePlatform) -> None:
    assert require_platform(platform.value) is platform
    assert require_platform(platform) is platform


@pytest.mark.parametrize("bad", ["IOS", "", None, 1])
def test_a_platform_is_refused_listing_the_choices(bad: object) -> None:
    with pytest.raises(
        InvalidInput, match=exactly(f"platform must be one of ios, android, web, got {bad!r}")
    ):
        require_platform(bad)


@pytest.mark.parametrize(
    ("phone", "problem"),
    [
        ("+33612345678", None),
        (None, REASON_NO_PHONE),
        ("", REASON_NO_PHONE),
        ("   ", REASON_NO_PHONE),
        ("+33 6 12 34 56 78", "phone number '+33 6 12 34 56 78' is not E.164 (+ then 7-15 digits)"),
        ("+14155550100\n", "phone number '+14155550100\\n' is not E.164 (+ then 7-15 digits)"),
    ],
)
def test_phone_problem(phone: str | None, problem: str | None) -> None:
    assert phone_problem(phone) == problem
