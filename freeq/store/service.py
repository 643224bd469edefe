"""Start-up of persistence: lock the data directory, open the store, load keys, check them."""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from freeq.config import Config, ConfigError
from freeq.signing import MessageSigner
from freeq.store import keys
from freeq.store.crypto import MessageCipher
from freeq.store.db import Store, StoreError

log = Logger()
LOCK_FILE = "freeq.lock"


@dataclass
class Persistence:
    """What start-up produced: the store, the signer, and the data-directory lock."""

    store: Optional[Store]  # None with --db-path none
    signer: MessageSigner
    verifier_seed: bytes
    lock_fd: int


def persistence_disabled(config: Config) -> bool:
    """``--db-path none``: nothing is stored (no history, no channel state across restarts)."""
    return (config.db_path or "").lower() == "none"


def db_path_for(config: Config) -> str:
    """The database path: ``--db-path``, or ``freeq.db`` in the data directory."""
    return config.db_path or os.path.join(config.data_dir, "freeq.db")


class DataDirLocked(Exception):
    """Another process (a running server, or freeq-admin) holds the data directory."""


def lock_data_dir(data_dir: str) -> int:
    """Take the data directory's exclusive lock (``freeq.lock``) for this process; return the fd.

    The server holds it while it runs and ``freeq-admin`` while it works, so they never share a
    database. Raises :class:`DataDirLocked`.
    """
    path = os.path.join(data_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(path) from None
    return fd


def open_persistence(config: Config, reactor: Any, now: float) -> Persistence:
    """Open everything on disk, in an order that never loses data; ConfigError on any problem."""
    try:
        lock_fd = lock_data_dir(config.data_dir)
    except DataDirLocked:
        raise ConfigError(f"--data-dir: {config.data_dir} is already used by another running freeq") from None
    if persistence_disabled(config):
        try:
            signer = MessageSigner(keys.load_raw_key(config.data_dir, keys.MSG_SIGNING_KEY))
            verifier = keys.load_raw_key(config.data_dir, keys.VERIFIER_SIGNING_KEY)
        except keys.KeyFileError as e:
            os.close(lock_fd)
            raise ConfigError(str(e)) from None
        log.warn("--db-path none: nothing is persisted and CHATHISTORY answers empty batches")
        return Persistence(None, signer, verifier, lock_fd)
    try:
        try:
            store = Store.open(db_path_for(config), reactor,
                               max_messages_per_target=config.max_messages_per_channel,
                               retention_days=config.message_retention_days)
        except StoreError as e:
            raise ConfigError(str(e)) from None
        try:
            recorded = store.recorded_key_fingerprint()
            key_path = os.path.join(config.data_dir, keys.DB_ENCRYPTION_KEY)
            if os.path.exists(key_path + ".new"):
                raise ConfigError(f"a key rotation is in progress ({key_path}.new exists); finish it with "
                                  f"`freeq-admin rekey --data-dir {config.data_dir}` before starting the server")
            if recorded is not None and not os.path.exists(key_path):
                raise ConfigError(f"{key_path} is missing but the database holds messages encrypted with key "
                                  f"fingerprint {recorded}; restore the key file (a new key would make them unreadable)")
            db_key = keys.load_raw_key(config.data_dir, keys.DB_ENCRYPTION_KEY)
            signer = MessageSigner(keys.load_raw_key(config.data_dir, keys.MSG_SIGNING_KEY))
            verifier = keys.load_raw_key(config.data_dir, keys.VERIFIER_SIGNING_KEY)
            store.use_cipher(MessageCipher(db_key, keys.fingerprint(db_key)))
            store.record_signing_key(signer.public_key_b64, now)
        except keys.KeyFileError as e:
            raise ConfigError(str(e)) from None
        except StoreError as e:
            raise ConfigError(str(e)) from None
    except BaseException:
        os.close(lock_fd)
        raise
    return Persistence(store, signer, verifier, lock_fd)


class StoreService(service.Service):
    """Runs the DB thread while the server runs; on stop, flushes every queued write first."""

    def __init__(self, store: Optional[Store], lock_fd: int = -1) -> None:
        self.store = store
        self.lock_fd = lock_fd

    def startService(self) -> None:
        super().startService()
        if self.store is not None:
            self.store.start()

    def stopService(self) -> Any:
        super().stopService()
        d = self.store.stop() if self.store is not None else defer.succeed(None)
        d.addBoth(self._unlock)
        return d

    def _unlock(self, result: Any) -> Any:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
        return result
