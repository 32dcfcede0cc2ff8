"""ChannelSenders: claim notification rows, render them, send them, record every outcome.

The notification log is the record of what went out: a row is claimed
(``sending``) before its provider call and its outcome is written after, in one
statement per outcome kind. A retry of the same ids sends only the rows still
``queued``, or ``sending`` under a claim that lapsed (CLAIM_LEASE); rows already sent,
failed or cancelled are left alone, and so are rows another live attempt holds.

An attempt uses its claim only within SEND_WITHIN (provider calls start) and
RECORD_WITHIN (outcomes recorded, retried through a database outage) of claiming,
both well inside CLAIM_LEASE: by the time another attempt may claim a row again, the
one that held it has stopped touching it, so no row is sent by two attempts at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from missive.errors import (
    DecryptionFailed,
    InvalidInput,
    InvalidRecipient,
    KeyVersionMissing,
    MessageNotVisible,
    PermanentError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
)
from missive.metrics import Metrics
from missive.notify.content import (
    email_content,
    preview,
    push_content,
    sms_text,
)
from missive.notify.log import (
    CLAIM_LEASE,
    REASON_GONE,
    REASON_NO_DEVICE,
    REASON_NO_EMAIL,
    ClaimedNotification,
    NotificationLog,
    Outcome,
    PushClear,
)
from missive.notify.mail import Email, EmailSender
from missive.notify.preferences import REASON_NO_PHONE, PreferenceService
from missive.notify.push import PushMessage, PushSender
from missive.notify.quota import Grant, ProviderQuota
from missive.notify.sms import SmsSender
from missive.schemas import Channel, NotificationStatus, SendNotificationsResult
from missive.services.messages import MessageService
from missive.validation import require_uuid

log = logging.getLogger("missive.notify")

T = TypeVar("T")

SEND_CONCURRENCY = 16
"""Provider calls one send activity has in flight at once."""

LOAD_CONCURRENCY = 4
"""Messages decrypted at once for previews (each holds a pooled connection briefly)."""

MAX_IDS = 1_000
"""Most rows one send activity takes (the workflows send push_batch_size, digests one)."""

SEND_WITHIN = timedelta(seconds=45)
"""Provider calls start only this long after the claim; later rows are put back queued.
A call started by then ends within its client timeout (10-30 s) before CLAIM_LEASE."""

RECORD_WITHIN = timedelta(seconds=100)
"""Outcomes are recorded (retried through a database outage) only this long after the
claim: sent rows must not be claimed and sent again, and past CLAIM_LEASE another
attempt may own them."""

RECORD_RETRY_DELAY = (0.2, 2.0)
"""First and longest pause between tries to record outcomes (seconds, doubling)."""

PREPARE_WITHIN = timedelta(seconds=20)
"""The claim and what happens between it and the provider calls (reading the messages
for their previews) are retried through a database outage this long, inside the
attempt's 30 s. An attempt that gave up after claiming would leave its rows ``sending``
until CLAIM_LEASE lapses; one that gave up claiming would wait out the activity's
provider backoff (doubling to an hour). Either is minutes of delay for a database
restart of a few seconds."""

_SEND_BY: contextvars.ContextVar[datetime | None] = contextvars.ContextVar(
    "missive_notify_send_by", default=None
)
"""The latest time the current send may start a provider call (its claim + SEND_WITHIN)."""


def collapse_key(conversation_id: str) -> str:
    """The collapse key of a conversation's pushes: a later one replaces the shown one."""
    return f"conv-{conversation_id}"


@dataclass
class _Attempt:
    """What happened to one row (or one push clear)."""

    outcome: Outcome
    invalid_tokens: list[str] = field(default_factory=list)
    error: TransientError | None = None


Send = Callable[[ClaimedNotification, dict[str, str]], Awaitable[_Attempt]]


class ChannelSenders:
    """Sends claimed push / email / SMS notification rows through the providers."""

    def __init__(
        self,
        log: NotificationLog,
        messages: MessageService,
        *,
        push: PushSender,
        email: EmailSender,
        sms: SmsSender,
        devices: PreferenceService,
        concurrency: int = SEND_CONCURRENCY,
        quota: ProviderQuota | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Keeps the log, the message service, the three providers and the devices.

        Args:
            log: The notification log (claims and outcomes).
            messages: Loads and decrypts messages for previews (standard conversations).
            push: The FCM sender.
            email: The SMTP sender.
            sms: The Twilio sender.
            devices: Removes the push tokens the provider calls invalid.
            concurrency: Provider calls in flight at once per send.
            quota: Each provider's rows per second, shared by every worker (none: no
                limit but the concurrency).
            metrics: Counts every outcome by channel, if given.
            clock: The current time (tests); default the wall clock in UTC.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._log = log
        self._messages = messages
        self._push = push
        self._email = email
        self._sms = sms
        self._devices = devices
        self._limit = asyncio.Semaphore(concurrency)
        self._load_limit = asyncio.Semaphore(LOAD_CONCURRENCY)
        self._quota = quota
        self._metrics = metrics
        self._clock = clock or (lambda: datetime.now(UTC))

    # -- the three channels ------------------------------------------------

    async def send_push(self, ids: Sequence[str]) -> SendNotificationsResult:
        """Sends push rows: one FCM message per device of the recipient.

        Raises:
            InvalidInput: an id is not a UUID, or too many ids.
            RateLimited: FCM asked to slow down for some rows (those are queued again).
            ProviderUnavailable: FCM failed for some rows (those are queued again).
        """
        return await self._send(Channel.PUSH, ids, self._push_row)

    async def send_email(self, ids: Sequence[str]) -> SendNotificationsResult:
        """Sends email rows (a message's or a digest's), one email each.

        Raises:
            InvalidInput: an id is not a UUID, or too many ids.
            RateLimited: never in practice (SMTP has no 429), kept for symmetry.
            ProviderUnavailable: the SMTP server was down or deferred some rows.
        """
        return await self._send(Channel.EMAIL, ids, self._email_row)

    async def send_sms(self, ids: Sequence[str]) -> SendNotificationsResult:
        """Sends SMS rows (a message's or a digest's), one SMS each.

        Raises:
            InvalidInput: an id is not a UUID, or too many ids.
            RateLimited: Twilio answered 429 for some rows (those are queued again).
            ProviderUnavailable: Twilio failed for some rows (those are queued again).
        """
        return await self._send(Channel.SMS, ids, self._sms_row)

    async def clear_pushes(self, ids: Sequence[str]) -> SendNotificationsResult:
        """Sends a data-only "clear" push for sent push rows the recipient has now read.

        Each device of the reader gets ``{"type": "clear", "conversation_id",
        "up_to_seq"}`` with the conversation's collapse key, which replaces the
        notification shown. Clearing twice is harmless, so a retry resends them all.

        Raises:
            InvalidInput: an id is not a UUID, or too many ids.
            RateLimited / ProviderUnavailable: FCM failed for some devices.
        """
        checked = _require_ids(ids)
        if not checked:
            return SendNotificationsResult()
        clears = await self._log.push_clears(checked)
        grant = await self._reserve(Channel.PUSH, len(clears))
        now, later = clears[: grant.rows], clears[grant.rows :]
        if grant.wait:
            await asyncio.sleep(grant.wait)
        attempts = list(await asyncio.gather(*(self._clear(clear) for clear in now)))
        attempts += [_over_quota(c.notification_id, Channel.PUSH, grant) for c in later]
        tokens = [token for attempt in attempts for token in attempt.invalid_tokens]
        removed = await self._devices.remove_tokens(tokens) if tokens else 0
        counts = _count(attempts)
        for attempt in attempts:
            self._count_metric(Channel.PUSH, "cleared", attempt)
        _raise_if_transient(Channel.PUSH, attempts)
        return SendNotificationsResult(
            sent=counts[NotificationStatus.SENT],
            failed=counts[NotificationStatus.FAILED],
            skipped=counts[NotificationStatus.SKIPPED],
            removed_tokens=removed,
        )

    # -- the common path ---------------------------------------------------

    async def _send(
        self, channel: Channel, ids: Sequence[str], send: Send
    ) -> SendNotificationsResult:
        checked = _require_ids(ids)
        if not checked:
            return SendNotificationsResult()
        claimed_at = self._clock()
        # Through a database outage within this attempt: the activity's own retries back
        # off like a provider's (doubling to an hour), far too slowly for a restart.
        claimed, cancelled = await self._through_outage(
            lambda: self._log.claim(checked, channel, now=claimed_at),
            until=claimed_at + PREPARE_WITHIN,
            what=f"claiming {len(checked)} {channel} notification(s)",
        )
        if self._metrics is not None and cancelled:
            for _ in range(cancelled):
                self._metrics.notification(str(channel), "cancelled")
        held: list[str] = []
        if len(claimed) + cancelled < len(checked):
            # Rows another attempt holds (e.g. one whose record failed, retrying it):
            # not sent here; the activity is retried until that claim settles or lapses.
            mine = {row.id for row in claimed}
            held = [
                i for i in await self._log.held(checked, channel, now=claimed_at) if i not in mine
            ]
        previews = await self._through_outage(
            lambda: self._previews(claimed),
            until=claimed_at + PREPARE_WITHIN,
            what=f"reading the messages of {len(claimed)} claimed notification(s)",
        )
        grant = await self._through_outage(
            lambda: self._reserve(channel, len(claimed)),
            until=claimed_at + PREPARE_WITHIN,
            what=f"reserving {len(claimed)} {channel} notification(s) of the provider's quota",
        )
        now, later = claimed[: grant.rows], claimed[grant.rows :]
        if grant.wait:
            await asyncio.sleep(grant.wait)  # at most HORIZON: the reservation's turn
        send_by = _SEND_BY.set(claimed_at + SEND_WITHIN)  # read by _call in the tasks below
        try:
            attempts = list(await asyncio.gather(*(send(row, previews) for row in now)))
        finally:
            _SEND_BY.reset(send_by)
        attempts += [_over_quota(row.id, channel, grant) for row in later]
        outcomes = [
            dataclasses.replace(a.outcome, claim=row.attempts)
            for a, row in zip(attempts, claimed, strict=True)
        ]
        await self._record(outcomes, until=claimed_at + RECORD_WITHIN)
        tokens = [token for attempt in attempts for token in attempt.invalid_tokens]
        removed = await self._devices.remove_tokens(tokens) if tokens else 0
        for attempt in attempts:
            self._count_metric(channel, None, attempt)
        _raise_if_transient(channel, attempts)
        if held:
            raise ProviderUnavailable(
                f"{len(held)} {channel} notification(s) are being sent by another attempt "
                f"(claimed less than {int(CLAIM_LEASE.total_seconds())} s ago); retried"
            )
        counts = _count(attempts)
        return SendNotificationsResult(
            sent=counts[NotificationStatus.SENT],
            failed=counts[NotificationStatus.FAILED],
            cancelled=cancelled + counts[NotificationStatus.CANCELLED],
            skipped=counts[NotificationStatus.SKIPPED],
            removed_tokens=removed,
        )

    async def _record(self, outcomes: list[Outcome], *, until: datetime) -> None:
        """Records outcomes, retrying through a database outage until ``until``.

        The provider calls are made: giving up here would leave sent rows ``sending``
        for a later attempt to send again once the claim lapses.
        """
        await self._through_outage(
            lambda: self._log.record(outcomes, now=self._clock()),
            until=until,
            what=f"recording {len(outcomes)} notification outcome(s)",
        )

    async def _through_outage(
        self, call: Callable[[], Awaitable[T]], *, until: datetime, what: str
    ) -> T:
        """``call()``, tried again through a database outage until ``until`` (then its
        error); a refusal (PermanentError) is not an outage and is raised at once."""
        delay, longest = RECORD_RETRY_DELAY
        while True:
            try:
                return await call()
            except PermanentError:
                raise
            except Exception as err:
                if self._clock() + timedelta(seconds=delay) >= until:
                    raise
                log.warning("%s failed (%s: %s); retrying", what, type(err).__name__, err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def _reserve(self, channel: Channel, rows: int) -> Grant:
        """The provider's quota for ``rows`` rows (all of them at once without a quota)."""
        if self._quota is None:
            return Grant(rows=rows, wait=0.0, retry_after=0.0)
        return await self._quota.reserve(channel, rows)

    async def _previews(self, rows: Sequence[ClaimedNotification]) -> dict[str, str]:
        """Decrypted previews of the rows' messages, standard conversations only, once each."""
        wanted = list(
            dict.fromkeys(m.message_id for row in rows for m in row.messages if not m.e2e)
        )
        loaded = await asyncio.gather(*(self._preview(mid) for mid in wanted))
        return {mid: text for mid, text in zip(wanted, loaded, strict=True) if text}

    async def _preview(self, message_id: str) -> str | None:
        async with self._load_limit:
            try:
                stored = await self._messages.load(message_id)
            except MessageNotVisible:
                return None  # purged since: announced without content
            except (DecryptionFailed, KeyVersionMissing) as err:
                log.warning("no preview for message %s: %s", message_id, type(err).__name__)
                return None
        if stored.deleted_at is not None or stored.e2e_header is not None:
            return None
        return preview(stored.body)

    async def _call(self, call: Callable[[], Awaitable[str]]) -> str | Exception:
        """One provider call within the concurrency limit; its error returned, not raised."""
        async with self._limit:
            send_by = _SEND_BY.get()
            if send_by is not None and self._clock() >= send_by:
                return ProviderUnavailable(
                    f"not sent within {int(SEND_WITHIN.total_seconds())} s of its claim "
                    "(waited for a free provider call); queued again"
                )
            try:
                return await call()
            except (PermanentError, TransientError) as err:
                return err
            except Exception as err:  # a bug or an unmapped client error: retry the row
                log.exception("provider call failed unexpectedly")
                return ProviderUnavailable(f"unexpected {type(err).__name__}: {err}")

    # -- per row -----------------------------------------------------------

    async def _push_row(self, row: ClaimedNotification, previews: dict[str, str]) -> _Attempt:
        if not row.messages:
            return _outcome(row, NotificationStatus.CANCELLED, REASON_GONE)
        if not row.devices:
            return _outcome(row, NotificationStatus.SKIPPED, REASON_NO_DEVICE)
        message = max(row.messages, key=lambda m: m.seq)
        content = push_content(row.messages, previews, mention=row.mention)
        data = {
            "type": "message",
            "message_id": message.message_id,
            "conversation_id": message.conversation_id,
            "seq": str(message.seq),
            "notification_id": row.id,
        }
        pushes = [
            PushMessage(
                token=token,
                title=content.title,
                body=content.body,
                data=data,
                collapse_key=collapse_key(message.conversation_id),
            )
            for token in row.devices
        ]
        return _push_outcome(row.id, await self._push_all(pushes))

    async def _clear(self, clear: PushClear) -> _Attempt:
        if not clear.devices:
            return _Attempt(
                Outcome(clear.notification_id, NotificationStatus.SKIPPED, "no push device")
            )
        data = {
            "type": "clear",
            "conversation_id": clear.conversation_id,
            "up_to_seq": str(clear.up_to_seq),
        }
        pushes = [
            PushMessage(token=token, data=data, collapse_key=collapse_key(clear.conversation_id))
            for token in clear.devices
        ]
        return _push_outcome(clear.notification_id, await self._push_all(pushes))

    async def _push_all(self, pushes: list[PushMessage]) -> list[tuple[str, str | Exception]]:
        async def one(push: PushMessage) -> tuple[str, str | Exception]:
            return push.token, await self._call(lambda: self._push.send(push))

        return list(await asyncio.gather(*(one(push) for push in pushes)))

    async def _email_row(self, row: ClaimedNotification, previews: dict[str, str]) -> _Attempt:
        if not row.messages:
            return _outcome(row, NotificationStatus.CANCELLED, REASON_GONE)
        address = (row.recipient.email or "").strip()
        if not address:
            return _outcome(row, NotificationStatus.SKIPPED, REASON_NO_EMAIL)
        content = email_content(
            row.messages, previews, recipient_name=row.recipient.display_name, mention=row.mention
        )
        email = Email(
            notification_id=row.id,
            to=address,
            to_name=row.recipient.display_name,
            subject=content.subject,
            text=content.text,
            html=content.html,
        )
        return _single_outcome(row, await self._call(lambda: self._email.send(email)))

    async def _sms_row(self, row: ClaimedNotification, previews: dict[str, str]) -> _Attempt:
        if not row.messages:
            return _outcome(row, NotificationStatus.CANCELLED, REASON_GONE)
        phone = (row.recipient.phone or "").strip()
        if not phone:
            return _outcome(row, NotificationStatus.SKIPPED, REASON_NO_PHONE)
        body = sms_text(row.messages, previews, mention=row.mention)
        return _single_outcome(row, await self._call(lambda: self._sms.send(to=phone, body=body)))

    def _count_metric(self, channel: Channel, label: str | None, attempt: _Attempt) -> None:
        if self._metrics is None:
            return
        status = attempt.outcome.status
        outcome = "retry" if status is NotificationStatus.QUEUED else str(status)
        if label is not None and status is NotificationStatus.SENT:
            outcome = label
        self._metrics.notification(str(channel), outcome)


# -- outcomes --------------------------------------------------------------


def _require_ids(ids: Sequence[str]) -> list[str]:
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"notification_ids has {len(ids)} ids; at most {MAX_IDS} per call")
    return list(dict.fromkeys(require_uuid(i, "notification_ids[]") for i in ids))


def _outcome(row: ClaimedNotification, status: NotificationStatus, reason: str) -> _Attempt:
    return _Attempt(Outcome(row.id, status, reason))


def _over_quota(notification_id: str, channel: Channel, grant: Grant) -> _Attempt:
    """A row the provider's quota has no room for within its horizon: queued again, and
    the activity retried once there is room."""
    error = RateLimited(
        f"the {channel} quota is reserved as far ahead as a send may wait; "
        f"queued again, retried in {grant.retry_after * 1000:.0f} ms",
        retry_after=grant.retry_after,
    )
    return _Attempt(Outcome(notification_id, NotificationStatus.QUEUED, str(error)), error=error)


def _single_outcome(row: ClaimedNotification, result: str | Exception) -> _Attempt:
    """The outcome of a row sent with one provider call (email, SMS)."""
    if isinstance(result, str):
        return _Attempt(Outcome(row.id, NotificationStatus.SENT, provider_ref=result))
    if isinstance(result, TransientError):
        return _Attempt(Outcome(row.id, NotificationStatus.QUEUED, str(result)), error=result)
    return _Attempt(Outcome(row.id, NotificationStatus.FAILED, str(result)))


def _push_outcome(notification_id: str, results: list[tuple[str, str | Exception]]) -> _Attempt:
    """One push row from its devices: sent if any device took it, else retry or failed."""
    accepted = [r for _, r in results if isinstance(r, str)]
    invalid = [token for token, r in results if isinstance(r, InvalidRecipient)]
    transient = [r for _, r in results if isinstance(r, TransientError)]
    refused = [
        r
        for _, r in results
        if isinstance(r, Exception) and not isinstance(r, InvalidRecipient | TransientError)
    ]
    if accepted:
        ref = accepted[0] if len(accepted) == 1 else f"{accepted[0]} (+{len(accepted) - 1})"
        return _Attempt(
            Outcome(notification_id, NotificationStatus.SENT, provider_ref=ref),
            invalid_tokens=invalid,
        )
    if transient:
        error = _worst(transient)
        return _Attempt(
            Outcome(notification_id, NotificationStatus.QUEUED, str(error)),
            invalid_tokens=invalid,
            error=error,
        )
    if refused:
        return _Attempt(
            Outcome(notification_id, NotificationStatus.FAILED, str(refused[0])),
            invalid_tokens=invalid,
        )
    return _Attempt(
        Outcome(
            notification_id,
            NotificationStatus.FAILED,
            f"every push token of the recipient is invalid ({len(invalid)} removed)",
        ),
        invalid_tokens=invalid,
    )


def _worst(errors: Sequence[Exception]) -> TransientError:
    """The error to retry with: a rate limit (longest delay) before any other."""
    limited = [e for e in errors if isinstance(e, RateLimited)]
    if limited:
        delays = [e.retry_after for e in limited if e.retry_after is not None]
        return RateLimited(str(limited[0]), retry_after=max(delays) if delays else None)
    first = errors[0]
    return first if isinstance(first, TransientError) else ProviderUnavailable(str(first))


def _count(attempts: Sequence[_Attempt]) -> dict[NotificationStatus, int]:
    counts = dict.fromkeys(NotificationStatus, 0)
    for attempt in attempts:
        counts[attempt.outcome.status] += 1
    return counts


def _raise_if_transient(channel: Channel, attempts: Sequence[_Attempt]) -> None:
    """Raises RateLimited (longest delay) or ProviderUnavailable when rows must be retried."""
    errors = [a.error for a in attempts if a.error is not None]
    if not errors:
        return
    worst = _worst(errors)
    message = f"{len(errors)} of {len(attempts)} {channel} notifications not sent: {worst}"
    if isinstance(worst, RateLimited):
        raise RateLimited(message, retry_after=worst.retry_after)
    raise ProviderUnavailable(message)
