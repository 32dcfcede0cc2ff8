"""The codec server: decodes and encodes Temporal payloads for the Web UI and the CLI."""

from codec_server.app import create_app

__all__ = ["create_app"]
