"""dev.py's command line, and the checkout it runs from."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import devstack
from missive.config import Settings

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: alembic.ini, worker.py and the packages the children run."""


@dataclass
class Options:
    """The command line."""

    data_dir: Path
    """Keys, PostgreSQL data, Temporal's database and its log."""
    temporal_port: int = 7233
    """Port of the Temporal dev server's frontend."""
    ui_port: int = 8233
    """Port of the Temporal Web UI."""
    demo: bool = False
    """Whether to run the demo once everything is up."""
    codec_port: int | None = None
    """Port of the codec server; default CODEC_SERVER_PORT if set, else the UI's + 1."""

    @property
    def codec_server_port(self) -> int:
        """Where the codec server listens (next to the Web UI unless told)."""
        if self.codec_port is not None:
            return self.codec_port
        configured = os.environ.get("CODEC_SERVER_PORT")
        return int(configured) if configured else self.ui_port + 1


def parse_args(argv: list[str] | None = None) -> Options:
    """Reads the command line; the data dir defaults to the DATA_DIR setting."""
    parser = argparse.ArgumentParser(description=(devstack.__doc__ or "").splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="create demo users and chat")
    parser.add_argument("--data-dir", type=Path, default=Settings().data_dir)
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--ui-port", type=int, default=8233)
    parser.add_argument("--codec-port", type=int, default=None, help="default: --ui-port + 1")
    args = parser.parse_args(argv)
    return Options(
        args.data_dir.resolve(), args.temporal_port, args.ui_port, args.demo, args.codec_port
    )
