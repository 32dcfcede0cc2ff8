"""The domain error hierarchy: permanent errors are never retried, transient ones are."""

from __future__ import annotations


class MessagingError(Exception):
    """Base of every error Missive raises on purpose."""

    @property
    def type(self) -> str:
        """The error's name, as callers and ApplicationError.type see it."""
        return type(self).__name__


class PermanentError(MessagingError):
    """Retrying cannot help: the input or the state is wrong."""


class InvalidInput(PermanentError):
    """A field is missing, malformed or out of range; the message names it."""


class ConversationNotFound(PermanentError):
    """The conversation does not exist."""


class UserNotFound(PermanentError):
    """The user does not exist."""


class NotAMember(PermanentError):
    """The user does not take part in the conversation."""


class MessageNotVisible(PermanentError):
    """The message does not exist or the user cannot see it."""


class NotAllowed(PermanentError):
    """The user's role does not permit the change (editing another's message, removing a
    member as a plain member, removing the last owner); the message says who may."""


class MessageDeleted(PermanentError):
    """The message was deleted: it can no longer be edited."""


class DuplicateClientMessageId(PermanentError):
    """A client_message_id was reused with a different body: refused, never overwritten."""


class DecryptionFailed(PermanentError):
    """A ciphertext failed authentication (tampered, truncated or wrong key)."""


class KeyVersionMissing(PermanentError):
    """A ciphertext names a key version that is not configured."""


class InvalidToken(PermanentError):
    """A gateway token is missing, forged, malformed or expired."""


class InvalidRecipient(PermanentError):
    """A notification's recipient cannot be reached at that address: a push token
    the provider no longer knows, a malformed or refused email address, an
    invalid phone number. The message names the channel, the recipient and why."""


class TransientError(MessagingError):
    """A dependency is unavailable for now; retrying later may succeed."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds to wait before trying again, when known."""


class ProviderUnavailable(TransientError):
    """A provider or server did not answer or answered with a server error (or a
    gateway is too busy to take more work right now)."""


class RateLimited(TransientError):
    """A provider asked us to slow down, or a user sends faster than their limit."""


class TokenExpired(InvalidToken):
    """The token of an open socket expired: refresh it (``token:refresh``) or reconnect."""


class TokenRevoked(InvalidToken):
    """The user's tokens were revoked ("logout everywhere") after this one was issued."""


class SearchRejected(PermanentError):
    """Typesense refused a request as malformed (4xx); retrying cannot help."""
