"""Notification channels: push (FCM), email (SMTP) and SMS (Twilio) senders, and local sinks."""
