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
from freeq.store.db import Store, StoreError, hwm_path, read_high_water_mark

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
        path = db_path_for(config)
        try:
            lost = _must_exist(config, path)
            store = Store.open(path, reactor, must_exist=None if config.accept_data_loss else lost,
                               max_messages_per_target=config.max_messages_per_channel,
                               retention_days=config.message_retention_days)
        except StoreError as e:
            raise ConfigError(str(e)) from None
        if lost and store.created:
            log.warn("--accept-data-loss: {reason}; starting with an empty database", reason=lost.split(";")[0])
        try:
            mark = _check_high_water_mark(config, store)
            recorded = store.recorded_key_fingerprint()
            key_path = os.path.join(config.data_dir, keys.DB_ENCRYPTION_KEY)
            if os.path.exists(key_path + ".new"):
                raise ConfigError(f"a key rotation is in progress ({key_path}.new exists); finish it with "
                                  f"`freeq-admin rekey --data-dir {config.data_dir}` before starting the server")
            if recorded is not None and not os.path.exists(key_path):
                raise ConfigError(f"{key_path} is missing but the database holds messages encrypted with key "
                                  f"fingerprint {recorded}; restore the key file (a new key would make them unreadable)")
            db_key = keys.load_raw_key(config.data_dir, keys.DB_ENCRYPTION_KEY)
            _warn_if_signing_key_lost(config, store)
            signer = MessageSigner(keys.load_raw_key(config.data_dir, keys.MSG_SIGNING_KEY))
            verifier = keys.load_raw_key(config.data_dir, keys.VERIFIER_SIGNING_KEY)
            store.use_cipher(MessageCipher(db_key, keys.fingerprint(db_key)))
            store.record_signing_key(signer.public_key_b64, now)
            try:
                store.rebaseline(mark)
            except OSError as e:
                raise ConfigError(f"cannot write the high-water mark {store.hwm_file}: {e.strerror}") from None
        except keys.KeyFileError as e:
            store.conn.close()
            raise ConfigError(str(e)) from None
        except StoreError as e:
            store.conn.close()
            raise ConfigError(str(e)) from None
        except BaseException:
            store.conn.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise
    return Persistence(store, signer, verifier, lock_fd)


_RESTORE = "restore it from a backup, or start once with --accept-data-loss"


def _must_exist(config: Config, path: str) -> Optional[str]:
    """Why the database must already hold data (key files or a high-water mark exist), or None.

    A missing or empty database beside them means it was lost or replaced; starting a fresh one
    would silently drop every channel, nick and message (issue #10 item 11).
    """
    if path == ":memory:":
        return None
    evidence = [p for p in (os.path.join(config.data_dir, keys.DB_ENCRYPTION_KEY), hwm_path(path))
                if os.path.exists(p)]
    if not evidence:
        return None
    return (f"{path} is missing or empty but {os.path.basename(evidence[0])} exists: the database was lost "
            f"or replaced; {_RESTORE}")


def _check_high_water_mark(config: Config, store: Store) -> int:
    """The generation to re-baseline to; ConfigError if the database is behind its high-water mark."""
    if store.hwm_file is None:
        return store.generation
    try:
        mark = read_high_water_mark(store.hwm_file)
    except StoreError as e:
        if not config.accept_data_loss:
            raise ConfigError(f"{e}; delete it after checking the database, or start once with "
                              f"--accept-data-loss") from None
        log.warn("--accept-data-loss: {error}; writing a new one", error=str(e))
        return store.generation
    if mark is None:
        if store.generation > 0:  # deleted: the check is off until the mark is rewritten just below
            log.warn("High-water mark {path} is missing; writing a new one (a roll-back before now "
                     "cannot be detected)", path=store.hwm_file)
        return store.generation
    if store.generation < mark:
        reason = (f"{store.path} is behind its high-water mark (generation {store.generation} < {mark}): "
                  f"the database was rolled back or replaced")
        if not config.accept_data_loss:
            raise ConfigError(f"{reason}; {_RESTORE}")
        log.warn("--accept-data-loss: {reason}; starting with it and re-baselining the mark", reason=reason)
    return max(mark, store.generation)


def _warn_if_signing_key_lost(config: Config, store: Store) -> None:
    """Say what a missing ``msg-signing-key.secret`` beside an existing database means (a new one is made)."""
    path = os.path.join(config.data_dir, keys.MSG_SIGNING_KEY)
    if store.created or os.path.exists(path):
        return
    previous = [k for k, _start, until in store.signing_keys() if until is None]
    if previous:
        log.warn("{path} is missing beside an existing database: a new message-signing key is generated (expected "
                 "when rotating it on purpose; otherwise restore the file from a backup). Signatures made with the "
                 "old key {old_key} stay verifiable through its public key, kept in the database and listed as "
                 "previous_keys at /api/v1/signing-key, but this server can no longer sign with it; if the file was "
                 "stolen rather than lost, old-key signatures may be forged.", path=path, old_key=previous[-1])
    else:
        log.warn("{path} is missing beside an existing database: a new message-signing key is generated, and "
                 "messages signed with the old key can no longer be verified by this server (its public key was "
                 "never recorded); restore the file from a backup if you can.", path=path)


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
