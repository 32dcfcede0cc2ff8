"""User provisioning's checks: every field refused by name before anything is written."""

from __future__ import annotations

import re

import pytest

from missive.errors import InvalidInput
from missive.schemas import UserProfileInput
from missive.services.users import (
    MAX_DISPLAY_NAME_CHARS,
    MAX_EMAIL_CHARS,
    MAX_HANDLE_CHARS,
    _checked,
    require_handle,
)

pytestmark = pytest.mark.unit


def exactly(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


# --- require_handle ---


@pytest.mark.parametrize("handle", ["ana", "A", "9lives", "ana.b_c-d", "x" * MAX_HANDLE_CHARS])
def test_handles(handle: str) -> None:
    assert require_handle(handle) == handle


@pytest.mark.parametrize("bad", ["", "x" * (MAX_HANDLE_CHARS + 1), None, 42])
def test_a_handle_of_the_wrong_length_or_type(bad: object) -> None:
    with pytest.raises(InvalidInput, match=exactly("handle must be 1-64 characters")):
        require_handle(bad)


@pytest.mark.parametrize("bad", ["_ana", ".ana", "-ana", "ana b", "ana@x", "anä", "ana/..", " ana"])
def test_a_handle_with_other_characters_is_refused_by_name(bad: str) -> None:
    with pytest.raises(
        InvalidInput,
        match=exactly(
            f"handle {bad!r} may hold only letters, digits, '_', '.' and '-'"
            " (and start with a letter or digit)"
        ),
    ):
        require_handle(bad)


# --- _checked ---


def test_nothing_given_changes_nothing() -> None:
    assert _checked(UserProfileInput()) == {}
    assert _checked(UserProfileInput(user_id="u", client_user_id="c")) == {}


def test_every_field_given_is_a_column() -> None:
    assert _checked(
        UserProfileInput(
            handle="ana",
            display_name="Ana Lima",
            email="ana@example.com",
            phone="+5511987654321",
            timezone="America/Sao_Paulo",
            locale="pt-BR",
        )
    ) == {
        "handle": "ana",
        "display_name": "Ana Lima",
        "email": "ana@example.com",
        "phone": "+5511987654321",
        "timezone": "America/Sao_Paulo",
        "locale": "pt-BR",
    }


def test_an_empty_email_or_phone_clears_it() -> None:
    assert _checked(UserProfileInput(email="", phone="")) == {"email": None, "phone": None}


@pytest.mark.parametrize(
    "name",
    ["", "   ", "x" * (MAX_DISPLAY_NAME_CHARS + 1), 5],
    ids=["empty", "blank", "long", "int"],
)
def test_a_display_name_must_be_1_to_128_characters(name: object) -> None:
    with pytest.raises(InvalidInput, match=exactly("display_name must be 1-128 characters")):
        _checked(UserProfileInput(display_name=name))  # type: ignore[arg-type]


def test_the_longest_display_name_is_kept_as_given() -> None:
    name = " " + "x" * (MAX_DISPLAY_NAME_CHARS - 1)
    assert _checked(UserProfileInput(display_name=name)) == {"display_name": name}


@pytest.mark.parametrize(
    "email", ["ana", "ana@", "@example.com", "ana@example", "a b@example.com", "a@b@c.com"]
)
def test_an_email_that_is_not_an_address_is_refused(email: str) -> None:
    with pytest.raises(InvalidInput, match=exactly(f"email {email!r} is not an email address")):
        _checked(UserProfileInput(email=email))


def test_an_email_is_at_most_320_characters_and_shown_cut_short() -> None:
    longest = "a" * (MAX_EMAIL_CHARS - len("@example.com")) + "@example.com"
    assert _checked(UserProfileInput(email=longest)) == {"email": longest}
    too_long = "a" + longest
    with pytest.raises(InvalidInput) as info:
        _checked(UserProfileInput(email=too_long))
    assert str(info.value) == f"email {too_long[:64]!r} is not an email address"


def test_an_email_or_phone_that_is_not_a_string() -> None:
    with pytest.raises(InvalidInput, match=exactly("email must be a string")):
        _checked(UserProfileInput(email=["ana@example.com"]))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=exactly("phone must be a string")):
        _checked(UserProfileInput(phone=5511987654321))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "phone",
    ["11987654321", "+0123456789", "+55 11 98765 4321", "+55119876543219999", "+14155550100\n"],
)
def test_a_phone_that_is_not_e164_is_refused(phone: str) -> None:
    with pytest.raises(
        InvalidInput, match=exactly(f"phone {phone[:32]!r} is not E.164 (+ then 7-15 digits)")
    ):
        _checked(UserProfileInput(phone=phone))


def test_the_timezone_must_exist() -> None:
    with pytest.raises(InvalidInput, match=exactly("timezone 'Europe/Atlantis' does not exist")):
        _checked(UserProfileInput(timezone="Europe/Atlantis"))


@pytest.mark.parametrize("locale", ["en", "pt-BR", "zh-Hant-TW", "de-1996", "ENG"])
def test_locales(locale: str) -> None:
    assert _checked(UserProfileInput(locale=locale)) == {"locale": locale}


@pytest.mark.parametrize("bad", ["e", "en_US", "-en", "en-", "x" * 17, "en-123456789", 1])
def test_a_locale_that_is_no_language_tag_is_refused(bad: object) -> None:
    with pytest.raises(
        InvalidInput,
        match=exactly(f"locale must be a language tag like 'en' or 'pt-BR', got {bad!r}"),
    ):
        _checked(UserProfileInput(locale=bad))  # type: ignore[arg-type]


def test_fields_are_checked_in_order_and_the_first_bad_one_is_named() -> None:
    with pytest.raises(InvalidInput, match=r"^handle "):
        _checked(UserProfileInput(handle="bad handle", email="bad"))


# A ``$`` would match before a final newline too: the patterns end in ``\Z``.


def test_a_handle_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidInput, match="may hold only letters"):
        require_handle("ana\n")


def test_an_email_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidInput, match="is not an email address"):
        _checked(UserProfileInput(email="ana@example.com\n"))


def test_a_locale_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidInput, match="must be a language tag"):
        _checked(UserProfileInput(locale="en\n"))
