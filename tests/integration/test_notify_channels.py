"""The channel senders through the real pyfcm, twilio and aiosmtplib clients, local servers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fakes import Failure, FcmSink, Inbox, TwilioSink, serve, start_smtp
from missive.config import Settings
from missive.errors import InvalidInput, InvalidRecipient, ProviderUnavailable, RateLimited
from missive.notify.endpoints import (
    DEV_FCM_SINK_URL,
    DEV_SMTP_SINK,
    DEV_TWILIO_SINK_URL,
    fcm_endpoint,
    smtp_server,
    twilio_base_url,
)
from missive.notify.mail import Email, EmailSender, message_id
from missive.notify.push import PushMessage, PushSender, load_service_account
from missive.notify.sms import SmsSender
from tests.conftest import free_port

pytestmark = pytest.mark.integration

PROJECT = "missive-test"
ACCOUNT = "ACtest0000000000000000000000000000"
REFUSED_DOMAIN = "nowhere.example"


# --- FCM ---


@pytest.fixture
def service_account_file(tmp_path: Path, fcm: tuple[FcmSink, str]) -> Path:
    """A real service-account file whose token_uri is the sink's OAuth endpoint."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "test-key",
        "private_key": pem,
        "client_email": f"sender@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{fcm[1]}/token",
    }
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(info))
    return path


@pytest.fixture
def push(fcm: tuple[FcmSink, str], service_account_file: Path) -> PushSender:
    return PushSender(
        project_id=PROJECT,
        credentials=load_service_account(service_account_file),
        endpoint=fcm[1],
    )


async def test_push_arrives_at_fcm(fcm: tuple[FcmSink, str], push: PushSender) -> None:
    sink, _ = fcm
    name = await push.send(
        PushMessage(token="tok-1", title="Ana", body="hello", data={"message_id": "m1"})
    )
    assert name.startswith(f"projects/{PROJECT}/messages/")
    assert len(sink.received) == 1
    got = sink.received[0]
    assert got["name"] == name
    assert got["authorization"].startswith("Bearer ya29.sink-")  # OAuth via token_uri
    assert got["message"]["token"] == "tok-1"
    assert got["message"]["notification"] == {"title": "Ana", "body": "hello"}
    assert got["message"]["data"] == {"message_id": "m1"}


async def test_push_data_only_with_collapse_key(fcm: tuple[FcmSink, str], push: PushSender) -> None:
    sink, _ = fcm
    await push.send(PushMessage(token="tok-2", data={"clear": "m1"}, collapse_key="m1"))
    message = sink.received[0]["message"]
    assert "notification" not in message
    assert message["android"] == {"collapse_key": "m1"}
    assert message["apns"] == {"headers": {"apns-collapse-id": "m1"}}


@pytest.mark.parametrize("failure", [Failure.INVALID_RECIPIENT, Failure.INVALID_ARGUMENT])
async def test_push_invalid_token(
    fcm: tuple[FcmSink, str], push: PushSender, failure: Failure
) -> None:
    sink, _ = fcm
    sink.fail("dead-token-123456", failure)
    with pytest.raises(InvalidRecipient, match="push token dead-token-1"):
        await push.send(PushMessage(token="dead-token-123456", title="t", body="b"))
    assert sink.received == []


async def test_push_server_error(fcm: tuple[FcmSink, str], push: PushSender) -> None:
    sink, _ = fcm
    sink.fail("tok-500", Failure.SERVER_ERROR, times=1)
    with pytest.raises(ProviderUnavailable, match="500"):
        await push.send(PushMessage(token="tok-500", title="t", body="b"))
    assert sink.received == []
    await push.send(PushMessage(token="tok-500", title="t", body="b"))
    assert len(sink.received) == 1


async def test_push_rate_limited(fcm: tuple[FcmSink, str], push: PushSender) -> None:
    sink, _ = fcm
    sink.fail("tok-429", Failure.RATE_LIMITED, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        await push.send(PushMessage(token="tok-429", title="t", body="b"))
    assert caught.value.retry_after == 7
    assert sink.received == []


async def test_push_fcm_down() -> None:
    sender = PushSender(
        project_id=PROJECT,
        credentials=_sink_credentials(),
        endpoint=f"http://127.0.0.1:{free_port()}",
        timeout=5,
    )
    with pytest.raises(ProviderUnavailable, match="did not answer"):
        await sender.send(PushMessage(token="t", title="t", body="b"))


def _sink_credentials() -> Any:
    from missive.notify.push import _StaticSinkCredentials

    return _StaticSinkCredentials()


# --- Twilio ---


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[TwilioSink, SmsSender]]:
    sink = TwilioSink()
    runner, url = await serve(sink.app())
    sender = SmsSender(
        account_sid=ACCOUNT, auth_token="secret", from_number="+15005550006", base_url=url
    )
    yield sink, sender
    await sender.close()
    await runner.cleanup()


async def test_sms_arrives_at_twilio(twilio: tuple[TwilioSink, SmsSender]) -> None:
    sink, sms = twilio
    sid = await sms.send(to="+14155550100", body="Ana: hello")
    assert sid.startswith("SM")
    assert sink.received == [
        {
            **sink.received[0],
            "sid": sid,
            "account_sid": ACCOUNT,
            "to": "+14155550100",
            "from": "+15005550006",
            "body": "Ana: hello",
        }
    ]


@pytest.mark.parametrize(
    ("failure", "code"), [(Failure.INVALID_RECIPIENT, 21211), (Failure.INVALID_ARGUMENT, 21614)]
)
async def test_sms_invalid_number(
    twilio: tuple[TwilioSink, SmsSender], failure: Failure, code: int
) -> None:
    sink, sms = twilio
    sink.fail("+14155550101", failure)
    with pytest.raises(
        InvalidRecipient, match=f"\\+14155550101 is invalid for SMS \\(Twilio {code}"
    ):
        await sms.send(to="+14155550101", body="x")
    assert sink.received == []


async def test_sms_malformed_number_is_refused_before_sending(
    twilio: tuple[TwilioSink, SmsSender],
) -> None:
    sink, sms = twilio
    with pytest.raises(InvalidRecipient, match=r"'0612' is not in E\.164"):
        await sms.send(to="0612", body="x")
    assert sink.received == []


async def test_sms_rate_limited(twilio: tuple[TwilioSink, SmsSender]) -> None:
    sink, sms = twilio
    sink.fail("+14155550102", Failure.RATE_LIMITED, retry_after=3)
    with pytest.raises(RateLimited) as caught:
        await sms.send(to="+14155550102", body="x")
    assert caught.value.retry_after == 3


async def test_sms_server_error(twilio: tuple[TwilioSink, SmsSender]) -> None:
    sink, sms = twilio
    sink.fail("+14155550103", Failure.SERVER_ERROR)
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        await sms.send(to="+14155550103", body="x")
    assert sink.received == []


# --- SMTP ---


class Recorder(Inbox):
    """An inbox that refuses one domain at RCPT."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.endswith("@" + REFUSED_DOMAIN):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, int]]:
    recorder = Recorder()
    port = free_port()
    controller = start_smtp(recorder, port)
    yield recorder, port
    controller.stop()


def _email(**overrides: Any) -> Email:
    fields: dict[str, Any] = {
        "notification_id": "notif-42",
        "to": "bob@example.com",
        "to_name": "Bob",
        "subject": "3 new messages from Ana in #ops",
        "text": "Ana: deploy done",
        "html": "<p><b>Ana</b>: deploy done</p>",
    }
    fields.update(overrides)
    return Email(**fields)


def _sender(port: int) -> EmailSender:
    return EmailSender(host="127.0.0.1", port=port, sender="Missive <notify@missive.example>")


async def test_email_arrives_once_with_headers_and_parts(smtp: tuple[Recorder, int]) -> None:
    recorder, port = smtp
    sent_id = await _sender(port).send(_email())
    assert len(recorder.emails) == 1
    envelope, mail = recorder.emails[0]
    assert envelope.mail_from == "notify@missive.example"
    assert envelope.rcpt_tos == ["bob@example.com"]
    assert mail["From"] == "Missive <notify@missive.example>"
    assert mail["To"] == "Bob <bob@example.com>"
    assert mail["Subject"] == "3 new messages from Ana in #ops"
    assert mail["Date"] is not None and mail["Date"].datetime is not None
    assert mail["Message-ID"] == sent_id == message_id("notif-42", "missive.example")
    assert mail.get_content_type() == "multipart/alternative"
    parts = [(p.get_content_type(), p.get_content().strip()) for p in mail.iter_parts()]
    assert parts == [
        ("text/plain", "Ana: deploy done"),
        ("text/html", "<p><b>Ana</b>: deploy done</p>"),
    ]


async def test_email_message_id_is_deterministic(smtp: tuple[Recorder, int]) -> None:
    recorder, port = smtp
    sender = _sender(port)
    first = await sender.send(_email())
    again = await sender.send(_email(subject="resend"))
    other = await sender.send(_email(notification_id="notif-43"))
    assert first == again != other
    assert [m["Message-ID"] for _, m in recorder.emails] == [first, first, other]


@pytest.mark.parametrize("address", ["bob", "bob@", "bo b@example.com", "a@b\r\nBcc: x@y.com"])
async def test_email_malformed_address(smtp: tuple[Recorder, int], address: str) -> None:
    recorder, port = smtp
    with pytest.raises(InvalidRecipient, match="email address"):
        await _sender(port).send(_email(to=address))
    assert recorder.emails == []


async def test_email_refused_address(smtp: tuple[Recorder, int]) -> None:
    recorder, port = smtp
    with pytest.raises(InvalidRecipient, match=f"bob@{REFUSED_DOMAIN} was refused: 550"):
        await _sender(port).send(_email(to=f"bob@{REFUSED_DOMAIN}"))
    assert recorder.emails == []


async def test_email_server_down() -> None:
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        await _sender(free_port()).send(_email())


# --- settings ---


def test_without_credentials_every_channel_targets_the_dev_sinks() -> None:
    bare = Settings(
        fcm_credentials_file=None, fcm_endpoint=None, smtp_host=None, twilio_auth_token=""
    )
    assert fcm_endpoint(bare) == DEV_FCM_SINK_URL
    assert twilio_base_url(bare) == DEV_TWILIO_SINK_URL
    assert smtp_server(bare) == DEV_SMTP_SINK
    real = Settings(
        fcm_credentials_file=Path("sa.json"), twilio_auth_token="t", smtp_host="mx", smtp_port=587
    )
    assert fcm_endpoint(real) == "https://fcm.googleapis.com"
    assert twilio_base_url(real) == "https://api.twilio.com"
    assert smtp_server(real) == ("mx", 587)


def test_bad_fcm_credentials_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(InvalidInput, match=r"FCM_CREDENTIALS_FILE .*missing\.json: cannot be read"):
        PushSender.from_settings(Settings(fcm_credentials_file=missing))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{}")
    with pytest.raises(InvalidInput, match="not a service account"):
        PushSender.from_settings(Settings(fcm_credentials_file=garbage))


async def test_email_sender_from_settings(smtp: tuple[Recorder, int]) -> None:
    recorder, port = smtp
    sender = EmailSender.from_settings(
        Settings(smtp_host="127.0.0.1", smtp_port=port, email_from="Ops <ops@missive.example>")
    )
    await sender.send(_email())
    [(envelope, mail)] = recorder.emails
    assert envelope.mail_from == "ops@missive.example"
    assert mail["Message-ID"] == message_id("notif-42", "missive.example")
