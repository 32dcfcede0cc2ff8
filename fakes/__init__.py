"""Fake third-party providers, used by ``dev.py`` and by the tests alike.

Each speaks its provider's real protocol and records what it accepted: FCM HTTP v1
(``fcm``), Twilio's Messages API (``twilio``), SMTP through aiosmtpd (``smtp``). The
HTTP ones answer a failure they are told to (``Sink.fail``) in the real API's shape.
``python -m fakes`` serves the FCM and Twilio fakes as a process of their own.
"""

from fakes.fcm import FcmSink
from fakes.http import Failure, Rule, Sink, serve
from fakes.smtp import Inbox, MailFolder, start_smtp
from fakes.twilio import TwilioSink

__all__ = [
    "Failure",
    "FcmSink",
    "Inbox",
    "MailFolder",
    "Rule",
    "Sink",
    "TwilioSink",
    "serve",
    "start_smtp",
]
