"""The secrets dev.py needs: from the environment, else generated once into keys.env."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

KEY_NAMES = ("MASTER_KEYS", "CODEC_KEYS", "GATEWAY_SECRET", "CODEC_SERVER_TOKEN")


def new_key() -> str:
    """A random 32-byte key, base64."""
    return base64.b64encode(os.urandom(32)).decode()


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a file (blank lines and ``#`` comments skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[name.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Writes ``NAME=value`` lines readable by the owner only (0600)."""
    text = "".join(f"{name}={value}\n" for name, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def load_keys(data_dir: Path, environ: Mapping[str, str]) -> tuple[dict[str, str], Path | None]:
    """The secrets from the environment, else from ``<data-dir>/keys.env`` (made once).

    Returns:
        The secrets and the keys file, or None when the environment had them all.
    """
    if all(environ.get(name) for name in KEY_NAMES):
        return {name: environ[name] for name in KEY_NAMES}, None
    path = data_dir / "keys.env"
    stored = read_env_file(path) if path.exists() else {}
    generated = {
        "MASTER_KEYS": f"1:{new_key()}",
        "CODEC_KEYS": f"1:{new_key()}",
        "GATEWAY_SECRET": new_key(),
        "CODEC_SERVER_TOKEN": secrets.token_urlsafe(32),
    }
    if any(name not in stored for name in KEY_NAMES):
        stored = {**generated, **stored}
        write_env_file(path, stored)
    return {name: environ.get(name) or stored[name] for name in KEY_NAMES}, path
