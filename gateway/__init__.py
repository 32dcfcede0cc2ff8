"""The Socket.IO gateway clients connect to; it also hosts a worker for eager workflow starts."""

from gateway.app import create_app

__all__ = ["create_app"]
