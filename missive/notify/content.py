"""What a notification says: push, email, SMS and in-app text from the messages it covers.

Pure functions over the notices (sender and conversation names, e2e flag) and the
decrypted previews the caller loaded. A message of an end-to-end encrypted
conversation never has content here: the server cannot read it, so it is
announced by sender and conversation only ("New message from Ana").
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

PREVIEW_CHARS = 140
"""Longest preview of a message body, in characters."""

SMS_CHARS = 160
"""Longest SMS text: one GSM-7 segment."""

ELLIPSIS = "…"

APP_NAME = "Missive"


class Notice(Protocol):
    """The facts about one message a notification may show (log.NoticeMessage has them)."""

    @property
    def message_id(self) -> str:
        """The message."""

    @property
    def conversation_id(self) -> str:
        """Its conversation."""

    @property
    def seq(self) -> int:
        """Its position in the conversation."""

    @property
    def sender_id(self) -> str:
        """Its sender."""

    @property
    def sender_name(self) -> str:
        """The sender's display name."""

    @property
    def conversation_title(self) -> str | None:
        """The conversation's title (groups and channels; None for most direct chats)."""

    @property
    def conversation_kind(self) -> str:
        """direct, group or channel."""

    @property
    def e2e(self) -> bool:
        """End-to-end encrypted: never any content."""


Previews = Mapping[str, str]
"""message_id -> decrypted preview (standard conversations only)."""


@dataclass(frozen=True)
class PushContent:
    """The visible part of a push."""

    title: str
    """Notification title."""
    body: str | None
    """Notification text; None when there is no content to show (e2e, several messages)."""


@dataclass(frozen=True)
class EmailContent:
    """One notification email."""

    subject: str
    """Subject line (no message text in it)."""
    text: str
    """Plain-text body."""
    html: str
    """HTML body; every name, title and preview in it is escaped."""


def preview(body: str, *, limit: int = PREVIEW_CHARS) -> str:
    """A one-line preview of a message body: whitespace collapsed, at most ``limit`` chars."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in body).split())
    return _truncate(line, limit)


def _truncate(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(ellipsis)].rstrip() + ellipsis


def _sender(message: Notice) -> str:
    return message.sender_name.strip() or "Someone"


def conversation_label(message: Notice) -> str | None:
    """How a conversation is named after "in": ``#ops``; None for a direct chat."""
    if message.conversation_kind == "direct":
        return None
    title = (message.conversation_title or "").strip().lstrip("#").strip()
    if title:
        return f"#{title}"
    return "a channel" if message.conversation_kind == "channel" else "a group"


def names(people: Sequence[str]) -> str:
    """``Ana``, ``Ana and Ben``, ``Ana, Ben and Cy``, ``Ana, Ben and 2 others``."""
    if not people:
        return "someone"
    if len(people) == 1:
        return people[0]
    if len(people) <= 3:
        return ", ".join(people[:-1]) + " and " + people[-1]
    return f"{people[0]}, {people[1]} and {len(people) - 2} others"


def _senders(messages: Sequence[Notice]) -> list[str]:
    seen: dict[str, str] = {}
    for message in messages:
        seen.setdefault(message.sender_id, _sender(message))
    return list(seen.values())


def _conversations(messages: Sequence[Notice]) -> list[list[Notice]]:
    """Messages grouped by conversation (first-seen order), each group by seq."""
    groups: dict[str, list[Notice]] = {}
    for message in messages:
        groups.setdefault(message.conversation_id, []).append(message)
    return [sorted(group, key=lambda m: m.seq) for group in groups.values()]


def summary(messages: Sequence[Notice]) -> str:
    """``3 new messages from Ana in #ops``, ``2 new messages from Ana and Ben``,
    ``5 new messages from Ana, Ben and Cy in 2 conversations``."""
    count = len(messages)
    noun = "message" if count == 1 else "messages"
    text = f"{count} new {noun} from {names(_senders(messages))}"
    conversations = _conversations(messages)
    if len(conversations) > 1:
        return f"{text} in {len(conversations)} conversations"
    label = conversation_label(messages[0]) if messages else None
    return f"{text} in {label}" if label else text


def headline(message: Notice, *, mention: bool = False) -> str:
    """A title without message text: ``New message from Ana in #ops``,
    ``Ana mentioned you in #ops``."""
    label = conversation_label(message)
    where = f" in {label}" if label else ""
    if mention:
        return f"{_sender(message)} mentioned you{where}"
    return f"New message from {_sender(message)}{where}"


def in_app_title(message: Notice, *, mention: bool = False) -> str:
    """The in-app notification's title (never any message text)."""
    return headline(message, mention=mention)


def _preview_of(message: Notice, previews: Previews) -> str | None:
    if message.e2e:
        return None
    text = previews.get(message.message_id)
    return text or None


def push_content(
    messages: Sequence[Notice], previews: Previews, *, mention: bool = False
) -> PushContent:
    """Title and text of a push: the sender and a preview, or no content for e2e.

    Raises:
        ValueError: ``messages`` is empty.
    """
    if not messages:
        raise ValueError("a push needs at least one message")
    if len(messages) > 1:
        return PushContent(title=summary(messages), body=None)
    message = messages[0]
    text = _preview_of(message, previews)
    if text is None:
        return PushContent(title=headline(message, mention=mention), body=None)
    label = conversation_label(message)
    title = _sender(message) + (" mentioned you" if mention else "")
    return PushContent(title=f"{title} in {label}" if label else title, body=text)


def _line(message: Notice, previews: Previews) -> tuple[str, str]:
    """(sender, what they sent) for a digest line."""
    text = _preview_of(message, previews)
    if text is not None:
        return _sender(message), text
    if message.e2e:
        return _sender(message), "sent an end-to-end encrypted message"
    return _sender(message), "sent a message"


def email_content(
    messages: Sequence[Notice],
    previews: Previews,
    *,
    recipient_name: str,
    mention: bool = False,
) -> EmailContent:
    """Subject, text and HTML of a notification or digest email.

    Raises:
        ValueError: ``messages`` is empty.
    """
    if not messages:
        raise ValueError("an email needs at least one message")
    subject = headline(messages[0], mention=mention) if len(messages) == 1 else summary(messages)
    lead = summary(messages)
    greeting = f"Hi {recipient_name.strip()}," if recipient_name.strip() else "Hi,"
    footer = (
        f"Open {APP_NAME} to read and reply. You can change which notifications you get"
        f" in {APP_NAME}'s notification settings."
    )
    text_parts = [greeting, "", f"{lead}:", ""]
    html_parts = [f"<p>{_e(greeting)}</p>", f"<p><strong>{_e(lead)}</strong></p>"]
    for group in _conversations(messages):
        label = conversation_label(group[0]) or f"Direct message from {_sender(group[0])}"
        text_parts.append(label)
        html_parts.append(f"<h3>{_e(label)}</h3>")
        html_parts.append("<ul>")
        for message in group:
            who, what = _line(message, previews)
            if _preview_of(message, previews) is not None:
                text_parts.append(f"  {who}: {what}")
                html_parts.append(f"<li><strong>{_e(who)}</strong>: {_e(what)}</li>")
            else:
                text_parts.append(f"  {who} {what}")
                html_parts.append(f"<li><strong>{_e(who)}</strong> <em>{_e(what)}</em></li>")
        html_parts.append("</ul>")
        text_parts.append("")
    text_parts.append(footer)
    html_parts.append(f'<p style="color:#666;font-size:small">{_e(footer)}</p>')
    body_html = (
        '<!DOCTYPE html><html><body style="font-family:sans-serif">'
        + "".join(html_parts)
        + "</body></html>"
    )
    return EmailContent(subject=subject, text="\n".join(text_parts) + "\n", html=body_html)


def sms_text(messages: Sequence[Notice], previews: Previews, *, mention: bool = False) -> str:
    """One SMS segment: ``Missive: Ana in #ops: <preview>`` or a summary for a digest.

    Raises:
        ValueError: ``messages`` is empty.
    """
    if not messages:
        raise ValueError("an SMS needs at least one message")
    if len(messages) > 1:
        text = f"{APP_NAME}: {summary(messages)}"
    else:
        content = push_content(messages, previews, mention=mention)
        text = f"{APP_NAME}: {content.title}"
        if content.body:
            text = f"{text}: {content.body}"
    return _truncate(text, SMS_CHARS, "...")


def _e(value: str) -> str:
    return html.escape(value, quote=True)
