"""Key files in the data directory: generated on first run, 0600, atomically written, never logged.

Formats match the reference server so keys can be moved between them:

* ``msg-signing-key.secret`` — raw 32-byte Ed25519 seed (message signatures)
* ``verifier-signing-key.secret`` — raw 32-byte Ed25519 seed (credential verifier)
* ``db-encryption-key.secret`` — raw 32-byte AES-256 key, random (stored messages)
* ``iroh-key.secret`` — 64 lowercase hex characters (iroh endpoint identity; federation only)
"""
from __future__ import annotations

import binascii
import hashlib
import os
import stat
from typing import Callable, Optional

from twisted.logger import Logger

log = Logger()

MSG_SIGNING_KEY = "msg-signing-key.secret"
VERIFIER_SIGNING_KEY = "verifier-signing-key.secret"
DB_ENCRYPTION_KEY = "db-encryption-key.secret"
IROH_KEY = "iroh-key.secret"


class KeyFileError(Exception):
    """A key file is unusable; the message is one line for the operator and never contains key material."""


def write_secret_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 via a temporary file, fsync and rename."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _tighten(path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warn("Key file {path} had permissions {mode}; tightened to 0600", path=path, mode=oct(mode))


def _raw32(data: bytes) -> Optional[bytes]:
    return data if len(data) == 32 else None


def _hex64(data: bytes) -> Optional[bytes]:
    text = data.strip()
    if len(text) != 64:
        return None
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        return None


def _load_or_create(path: str, parse: Callable[[bytes], Optional[bytes]], make: Callable[[], bytes],
                    expected: str, create: bool = True) -> bytes:
    if os.path.exists(path):
        try:
            _tighten(path)
            with open(path, "rb") as f:
                data = f.read(4096)
        except OSError as e:
            raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
        value = parse(data)
        if value is None:
            raise KeyFileError(
                f"key file {path} is not {expected} ({len(data)} bytes); refusing to start. "
                f"Restore it from backup; it is never replaced automatically")
        return value
    if not create:
        raise KeyFileError(f"key file {path} is missing")
    raw = make()
    try:
        write_secret_atomically(path, raw)
    except OSError as e:
        raise KeyFileError(f"cannot write key file {path}: {e.strerror}") from None
    log.info("Generated key file {path}", path=path)
    value = parse(raw)
    assert value is not None
    return value


def load_raw_key(data_dir: str, name: str, create: bool = True) -> bytes:
    """Load (or create) a raw 32-byte key file in ``data_dir``."""
    return _load_or_create(os.path.join(data_dir, name), _raw32, lambda: os.urandom(32),
                           "a raw 32-byte key", create)


def load_iroh_key(data_dir: str, create: bool = True) -> bytes:
    """Load (or create) ``iroh-key.secret``: 64 lowercase hex characters, no newline."""
    return _load_or_create(os.path.join(data_dir, IROH_KEY), _hex64,
                           lambda: binascii.hexlify(os.urandom(32)), "64 hex characters", create)


def fingerprint(key: bytes) -> str:
    """A short public fingerprint of a key (16 hex characters); reveals nothing usable about it."""
    return hashlib.sha256(b"freeq-key-fingerprint\0" + key).hexdigest()[:16]
