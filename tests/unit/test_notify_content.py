"""What notifications say: titles, previews, digest summaries, escaping, and no e2e content."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from missive.notify.content import (
    SMS_CHARS,
    PushContent,
    conversation_label,
    email_content,
    headline,
    in_app_title,
    names,
    preview,
    push_content,
    sms_text,
    summary,
)

pytestmark = pytest.mark.unit

OPS = "c0000000-0000-0000-0000-000000000001"
DM = "c0000000-0000-0000-0000-000000000002"
ANA = "a0000000-0000-0000-0000-000000000001"
BEN = "b0000000-0000-0000-0000-000000000001"
CY = "d0000000-0000-0000-0000-000000000001"


@dataclass(frozen=True)
class Msg:
    """A notice as the log hands it over (the fields of log.NoticeMessage)."""

    message_id: str
    conversation_id: str = OPS
    seq: int = 1
    sender_id: str = ANA
    sender_name: str = "Ana"
    conversation_title: str | None = "ops"
    conversation_kind: str = "group"
    e2e: bool = False


def dm(message_id: str, **fields: object) -> Msg:
    values: dict[str, object] = {
        "conversation_id": DM,
        "conversation_title": None,
        "conversation_kind": "direct",
        **fields,
    }
    return Msg(message_id, **values)  # type: ignore[arg-type]


def test_preview_collapses_whitespace_and_truncates() -> None:
    assert preview("  deploy\n\tdone  ") == "deploy done"
    assert preview("bell\x07 ring") == "bell ring"
    long = preview("x" * 500)
    assert len(long) == 140 and long.endswith("…")


def test_names() -> None:
    assert names(["Ana"]) == "Ana"
    assert names(["Ana", "Ben"]) == "Ana and Ben"
    assert names(["Ana", "Ben", "Cy"]) == "Ana, Ben and Cy"
    assert names(["Ana", "Ben", "Cy", "Di", "Ed"]) == "Ana, Ben and 3 others"


def test_summary_one_sender_in_a_group() -> None:
    messages = [Msg("m1", seq=1), Msg("m2", seq=2), Msg("m3", seq=3)]
    assert summary(messages) == "3 new messages from Ana in #ops"


def test_summary_direct_has_no_place() -> None:
    assert summary([dm("m1")]) == "1 new message from Ana"


def test_summary_several_senders() -> None:
    messages = [Msg("m1"), Msg("m2", sender_id=BEN, sender_name="Ben"), Msg("m3")]
    assert summary(messages) == "3 new messages from Ana and Ben in #ops"


def test_summary_several_conversations() -> None:
    messages = [Msg("m1"), dm("m2", sender_id=CY, sender_name="Cy")]
    assert summary(messages) == "2 new messages from Ana and Cy in 2 conversations"


def test_channel_title_and_untitled_group() -> None:
    assert summary([Msg("m1", conversation_kind="channel", conversation_title="#news")]) == (
        "1 new message from Ana in #news"
    )
    assert summary([Msg("m1", conversation_title=None)]) == "1 new message from Ana in a group"


def test_push_standard_has_sender_and_preview() -> None:
    content = push_content([Msg("m1")], {"m1": "deploy done"})
    assert (content.title, content.body) == ("Ana in #ops", "deploy done")
    direct = push_content([dm("m1")], {"m1": "hi"})
    assert (direct.title, direct.body) == ("Ana", "hi")
    mention = push_content([Msg("m1")], {"m1": "@ben look"}, mention=True)
    assert mention.title == "Ana mentioned you in #ops"


def test_push_e2e_never_has_content_even_with_a_preview() -> None:
    content = push_content([Msg("m1", e2e=True)], {"m1": "ciphertext-looking"})
    assert content.title == "New message from Ana in #ops"
    assert content.body is None
    direct = push_content([dm("m1", e2e=True)], {})
    assert (direct.title, direct.body) == ("New message from Ana", None)


def test_push_without_preview_is_a_headline() -> None:
    assert push_content([Msg("m1")], {}).title == "New message from Ana in #ops"


def test_in_app_title_never_has_text() -> None:
    assert in_app_title(Msg("m1")) == "New message from Ana in #ops"
    assert in_app_title(dm("m1"), mention=True) == "Ana mentioned you"


def test_email_single_message() -> None:
    mail = email_content([Msg("m1")], {"m1": "deploy done"}, recipient_name="Ben")
    assert mail.subject == "New message from Ana in #ops"
    assert "Hi Ben," in mail.text
    assert "  Ana: deploy done" in mail.text
    assert "<strong>Ana</strong>: deploy done" in mail.html


def test_email_digest_subject_and_groups() -> None:
    messages = [
        Msg("m1", seq=2),
        dm("m2", sender_id=BEN, sender_name="Ben"),
        Msg("m3", seq=1, sender_id=CY, sender_name="Cy"),
    ]
    previews = {"m1": "second", "m2": "hello", "m3": "first"}
    mail = email_content(messages, previews, recipient_name="Di")
    assert mail.subject == "3 new messages from Ana, Ben and Cy in 2 conversations"
    text = mail.text
    # Grouped by conversation, each in seq order.
    assert text.index("#ops") < text.index("Cy: first") < text.index("Ana: second")
    assert text.index("Ana: second") < text.index("Direct message from Ben") < text.index("hello")


def test_email_escapes_every_name_title_and_preview() -> None:
    evil = Msg(
        "m1",
        sender_name="<script>alert(1)</script>",
        conversation_title='a"b<i>',
    )
    mail = email_content([evil], {"m1": "<img src=x onerror=alert(2)> & co"}, recipient_name="<b>")
    assert "<script>" not in mail.html and "<img" not in mail.html and "<i>" not in mail.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; co" in mail.html
    assert "#a&quot;b&lt;i&gt;" in mail.html
    assert "Hi &lt;b&gt;," in mail.html
    # The text part is plain: no escaping needed there.
    assert "<img src=x onerror=alert(2)> & co" in mail.text


def test_email_e2e_has_no_content() -> None:
    mail = email_content(
        [Msg("m1", e2e=True), Msg("m2", seq=2)],
        {"m1": "secret", "m2": "visible"},
        recipient_name="Ben",
    )
    assert "secret" not in mail.text and "secret" not in mail.html
    assert "Ana sent an end-to-end encrypted message" in mail.text
    assert "Ana: visible" in mail.text


def test_sms() -> None:
    assert sms_text([Msg("m1")], {"m1": "deploy done"}) == "Missive: Ana in #ops: deploy done"
    assert sms_text([dm("m1", e2e=True)], {"m1": "x"}) == "Missive: New message from Ana"
    digest = sms_text([Msg("m1"), Msg("m2", seq=2)], {"m1": "a", "m2": "b"})
    assert digest == "Missive: 2 new messages from Ana in #ops"
    long = sms_text([Msg("m1", conversation_title="t" * 100)], {"m1": "y" * 140})
    assert len(long) == SMS_CHARS and long.endswith("...")


def test_nothing_to_render_is_refused() -> None:
    with pytest.raises(ValueError):
        push_content([], {})
    with pytest.raises(ValueError):
        email_content([], {}, recipient_name="x")
    with pytest.raises(ValueError):
        sms_text([], {})


# --- the pieces: labels, names, headlines, truncation ---


def test_preview_keeps_a_body_at_the_limit_and_trims_before_the_ellipsis() -> None:
    assert preview("x" * 140) == "x" * 140
    assert preview("abc def", limit=5) == "abc…"  # "abc " + "…" would end in a space
    assert preview("abcdef", limit=5) == "abcd…"
    assert preview("a\u2028b\u00a0c") == "a b c"  # line separator and no-break space
    assert preview("\n\t ") == ""


def test_conversation_label() -> None:
    assert conversation_label(dm("m1")) is None
    assert conversation_label(dm("m1", conversation_title="ignored for direct")) is None
    assert conversation_label(Msg("m1", conversation_title="  ops  ")) == "#ops"
    assert conversation_label(Msg("m1", conversation_title="## ops")) == "#ops"
    assert conversation_label(Msg("m1", conversation_title="#")) == "a group"
    assert conversation_label(Msg("m1", conversation_title="  ")) == "a group"
    untitled = Msg("m1", conversation_kind="channel", conversation_title=None)
    assert conversation_label(untitled) == "a channel"


def test_names_of_nobody_and_of_four() -> None:
    assert names([]) == "someone"
    assert names(["Ana", "Ben", "Cy", "Di"]) == "Ana, Ben and 2 others"


def test_a_blank_sender_name_is_someone() -> None:
    anonymous = Msg("m1", sender_name="   ")
    assert headline(anonymous) == "New message from Someone in #ops"
    assert push_content([anonymous], {"m1": "hi"}).title == "Someone in #ops"
    assert summary([anonymous]) == "1 new message from Someone in #ops"


def test_headline() -> None:
    assert headline(Msg("m1")) == "New message from Ana in #ops"
    assert headline(Msg("m1"), mention=True) == "Ana mentioned you in #ops"
    assert headline(dm("m1")) == "New message from Ana"
    assert headline(dm("m1"), mention=True) == "Ana mentioned you"


def test_a_summary_counts_each_sender_once_in_first_seen_order() -> None:
    messages = [
        Msg("m1", sender_id=BEN, sender_name="Ben"),
        Msg("m2"),
        Msg("m3", sender_id=BEN, sender_name="Benjamin"),  # the first name seen wins
    ]
    assert summary(messages) == "3 new messages from Ben and Ana in #ops"


# --- push, email and SMS edges ---


def test_a_push_of_several_messages_is_a_summary_without_text() -> None:
    content = push_content([Msg("m1"), Msg("m2", seq=2)], {"m1": "a", "m2": "b"}, mention=True)
    assert content == PushContent(title="2 new messages from Ana in #ops", body=None)


def test_an_empty_preview_is_no_preview() -> None:
    assert push_content([Msg("m1")], {"m1": ""}) == PushContent(
        title="New message from Ana in #ops", body=None
    )
    mail = email_content([Msg("m1")], {"m1": ""}, recipient_name="Ben")
    assert "  Ana sent a message" in mail.text
    assert "<li><strong>Ana</strong> <em>sent a message</em></li>" in mail.html


def test_a_single_email_is_laid_out_in_full() -> None:
    mail = email_content([dm("m1")], {"m1": "see you"}, recipient_name=" Ben ", mention=True)
    assert mail.subject == "Ana mentioned you"
    assert mail.text == (
        "Hi Ben,\n"
        "\n"
        "1 new message from Ana:\n"
        "\n"
        "Direct message from Ana\n"
        "  Ana: see you\n"
        "\n"
        "Open Missive to read and reply. You can change which notifications you get"
        " in Missive's notification settings.\n"
    )
    assert mail.html == (
        '<!DOCTYPE html><html><body style="font-family:sans-serif">'
        "<p>Hi Ben,</p>"
        "<p><strong>1 new message from Ana</strong></p>"
        "<h3>Direct message from Ana</h3>"
        "<ul><li><strong>Ana</strong>: see you</li></ul>"
        '<p style="color:#666;font-size:small">Open Missive to read and reply. You can change'
        " which notifications you get in Missive&#x27;s notification settings.</p>"
        "</body></html>"
    )


def test_an_email_without_a_recipient_name_just_says_hi() -> None:
    mail = email_content([Msg("m1")], {"m1": "x"}, recipient_name="  ")
    assert mail.text.startswith("Hi,\n")
    assert mail.html.startswith(
        '<!DOCTYPE html><html><body style="font-family:sans-serif"><p>Hi,</p>'
    )


def test_an_e2e_line_in_html_is_emphasised_not_quoted() -> None:
    mail = email_content([Msg("m1", e2e=True)], {}, recipient_name="Ben")
    assert "<li><strong>Ana</strong> <em>sent an end-to-end encrypted message</em></li>" in (
        mail.html
    )


def test_sms_mention_and_truncation_to_one_segment() -> None:
    assert sms_text([Msg("m1")], {"m1": "look"}, mention=True) == (
        "Missive: Ana mentioned you in #ops: look"
    )
    # Cut at 157 characters, which end in a space: trimmed before the dots.
    long = sms_text([Msg("m1")], {"m1": "word " * 40})
    assert long == "Missive: Ana in #ops: " + "word " * 26 + "word..."
    assert len(long) == SMS_CHARS - 1
    exact = "x" * (SMS_CHARS - len("Missive: Ana in #ops: "))
    assert sms_text([Msg("m1")], {"m1": exact}) == f"Missive: Ana in #ops: {exact}"


@pytest.mark.parametrize(
    ("render", "message"),
    [
        (lambda: push_content([], {}), "a push needs at least one message"),
        (lambda: email_content([], {}, recipient_name="x"), "an email needs at least one message"),
        (lambda: sms_text([], {}), "an SMS needs at least one message"),
    ],
    ids=["push", "email", "sms"],
)
def test_nothing_to_render_names_the_channel(render: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        render()
