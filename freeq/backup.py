"""``freeq-admin backup`` and ``freeq-admin restore`` (issue #13 item 7).

**Backup** runs beside a running server. The database is copied with SQLite's online backup API
from a connection of its own, in one step, so the copy is one consistent snapshot (WAL mode: the
server's DB thread goes on committing while the copy reads). The data directory's lock
(``freeq.lock``) is *not* taken: the server holds it for as long as it runs. The key files are
copied 0600 beside the database, into a destination directory created 0700. The copy is written
with ``journal_mode=DELETE`` so it is one self-contained file, integrity-checked, and its own
high-water mark (``freeq.db.hwm``, see :mod:`freeq.store.high_water`) is written beside it with
*the copy's* commit generation, not the live server's (which moves on). A manifest
(``freeq-backup.json``) records the generation, schema version, the key's public fingerprint and
every file's SHA-256.

**Restore** needs the server stopped: it takes the data directory's lock. It refuses a non-empty
data directory unless ``--force``, checks the manifest's hashes, refuses a backup whose database
holds encrypted history without ``db-encryption-key.secret``, removes a stale ``-wal``/``-shm``
(which SQLite would otherwise replay over the restored file), and writes the high-water mark from the
restored database's own generation: restoring an older backup on purpose is not a roll-back, so
the first start needs no ``--accept-data-loss``, and a later roll-back below the restored state is
still noticed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import sys
import time
import urllib.parse
from typing import NoReturn, Optional, TextIO

from freeq import __version__
from freeq.store import keys
from freeq.store.high_water import GENERATION_KEY, hwm_path, write_high_water_mark
from freeq.store.service import LOCK_FILE, DataDirLocked, lock_data_dir

DB_NAME = "freeq.db"
MANIFEST = "freeq-backup.json"
#: Key files copied with the database (those present); a rotation's ``.new`` key too, so a backup
#: taken mid-rotation can finish it after a restore.
KEY_FILES = (keys.DB_ENCRYPTION_KEY, keys.DB_ENCRYPTION_KEY + ".new", keys.MSG_SIGNING_KEY,
             keys.VERIFIER_SIGNING_KEY, keys.IROH_KEY)
#: Seconds the backup's connection waits for a lock held by the server's writer.
BUSY_TIMEOUT = 30.0
#: The largest key file copied (key files are 32 or 64 bytes).
MAX_KEY_BYTES = 4096
NO_KEY_WARNING = ("warning: a backup without db-encryption-key.secret is useless: stored messages cannot be "
                  "decrypted without it. Keep the key with the backup (or separately, as safely) and protect both.")


class BackupError(Exception):
    """A backup or restore cannot proceed; one line for the operator, never a secret."""


@dataclasses.dataclass(frozen=True)
class BackupInfo:
    """What a backup holds: its directory, the database's commit generation and schema, and the key files."""

    path: str
    generation: int
    schema_version: int
    key_fingerprint: Optional[str]
    key_files: tuple[str, ...]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _meta(conn: sqlite3.Connection, key: str) -> Optional[str]:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _read_key(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_KEY_BYTES)


def _empty_dir(path: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """The entries of ``path`` (sorted), except ``ignore``."""
    return sorted(e for e in os.listdir(path) if e not in ignore)


def _make_private_dir(path: str) -> None:
    """Create ``path`` 0700 (parents as needed); an existing one is tightened to 0700."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # makedirs' mode is filtered by the umask, and an existing directory keeps its own
    except OSError as e:
        raise BackupError(f"cannot create {path}: {e.strerror}") from None


def _copy_database(source: sqlite3.Connection, target_path: str) -> tuple[int, int, Optional[str]]:
    """Copy ``source`` into a new file ``target_path`` (0600) in one backup step; check it.

    Returns the copy's (commit generation, schema version, recorded key fingerprint).
    """
    os.close(os.open(target_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    target = sqlite3.connect(target_path)
    try:
        source.backup(target)  # pages=-1: one step, one read transaction on the source, one snapshot
        mode = target.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise BackupError(f"cannot make {target_path} a self-contained file (journal mode {mode})")
        check = target.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the copy failed its integrity check ({check})")
        try:
            generation = int(_meta(target, GENERATION_KEY) or 0)
            schema = int(_meta(target, "schema_version") or 0)
            recorded = _meta(target, "db_key_fingerprint")
        except sqlite3.DatabaseError:
            raise BackupError("the database is not a freeq database (no meta table)") from None
    finally:
        target.close()
    fd = os.open(target_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return generation, schema, recorded


def backup(data_dir: str, dest: str, db_path: Optional[str] = None, out: TextIO = sys.stdout) -> BackupInfo:
    """Back up the database and key files of ``data_dir`` into the new directory ``dest``.

    Safe while a server runs on ``data_dir``. Raises :class:`BackupError`.
    """
    if not os.path.isdir(data_dir):
        raise BackupError(f"--data-dir: {data_dir} does not exist")
    path = db_path or os.path.join(data_dir, DB_NAME)
    if path == ":memory:" or path.lower() == "none" or not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise BackupError(f"no database at {path}")
    if os.path.exists(dest) and (not os.path.isdir(dest) or _empty_dir(dest)):
        raise BackupError(f"{dest} exists and is not an empty directory; give a new directory")
    _make_private_dir(dest)
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"  # never create: only read through it
    try:
        source = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as e:
        raise BackupError(f"cannot open {path}: {e}") from None
    tmp = os.path.join(dest, f".{DB_NAME}.tmp-{os.getpid()}")
    try:
        generation, schema, recorded = _copy_database(source, tmp)
    except (sqlite3.Error, BackupError) as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise BackupError(f"cannot copy {path}: {e}") from None
    finally:
        source.close()
    target_db = os.path.join(dest, DB_NAME)
    os.replace(tmp, target_db)
    write_high_water_mark(hwm_path(target_db), generation)
    copied = []
    for name in KEY_FILES:
        src = os.path.join(data_dir, name)
        if not os.path.exists(src):
            continue
        try:
            keys.write_secret_atomically(os.path.join(dest, name), _read_key(src))
        except OSError as e:
            raise BackupError(f"cannot copy {src}: {e.strerror}") from None
        copied.append(name)
    key_fp = None
    if keys.DB_ENCRYPTION_KEY in copied:
        key_fp = keys.fingerprint(_read_key(os.path.join(dest, keys.DB_ENCRYPTION_KEY)))
    files = {name: _sha256(os.path.join(dest, name)) for name in [DB_NAME] + copied}
    manifest = {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "freeq": __version__,
                "generation": generation, "schema_version": schema, "db_key_fingerprint": recorded, "files": files}
    keys.write_secret_atomically(os.path.join(dest, MANIFEST), json.dumps(manifest, indent=1).encode())
    _fsync_dir(dest)
    print(f"backed up {path} (commit generation {generation}, schema v{schema}) and {len(copied)} key file(s) "
          f"to {dest}", file=out)
    if keys.DB_ENCRYPTION_KEY not in copied:
        print(f"{NO_KEY_WARNING} {os.path.join(data_dir, keys.DB_ENCRYPTION_KEY)} was not found.", file=out)
    else:
        if recorded is not None and recorded != key_fp and not (
                keys.DB_ENCRYPTION_KEY + ".new" in copied and recorded == keys.fingerprint(
                    _read_key(os.path.join(dest, keys.DB_ENCRYPTION_KEY + ".new")))):
            print(f"warning: {keys.DB_ENCRYPTION_KEY} does not match the key the database records (fingerprint "
                  f"{recorded}); this backup's history will not decrypt", file=out)
        print(NO_KEY_WARNING, file=out)
    return BackupInfo(dest, generation, schema, recorded, tuple(copied))


def _load_manifest(src: str) -> Optional[dict]:
    path = os.path.join(src, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read(1 << 20))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError
    except (OSError, ValueError):
        raise BackupError(f"{path} is unreadable or corrupt") from None
    return manifest


def restore(src: str, data_dir: str, db_path: Optional[str] = None, force: bool = False,
            out: TextIO = sys.stdout) -> BackupInfo:
    """Restore the backup directory ``src`` into ``data_dir`` (the server stopped). Raises :class:`BackupError`."""
    src_db = os.path.join(src, DB_NAME)
    if not os.path.isfile(src_db):
        raise BackupError(f"{src} holds no {DB_NAME}; not a freeq backup")
    manifest = _load_manifest(src)
    if manifest is not None:
        for name, digest in manifest["files"].items():
            if os.path.basename(str(name)) != name or not os.path.isfile(os.path.join(src, name)):
                raise BackupError(f"{src}: {name} listed in {MANIFEST} is missing")
            if _sha256(os.path.join(src, name)) != digest:
                raise BackupError(f"{src}: {name} does not match its checksum in {MANIFEST}; the backup is damaged")
    if not os.path.isdir(data_dir):
        _make_private_dir(data_dir)
    elif not force and _empty_dir(data_dir, ignore=(LOCK_FILE,)):
        _refuse_non_empty(data_dir, _empty_dir(data_dir, ignore=(LOCK_FILE,)))  # before even creating the lock file
    try:
        lock = lock_data_dir(data_dir)
    except DataDirLocked:
        raise BackupError(f"{data_dir} is in use by a running freeq server; stop it first") from None
    except OSError as e:
        raise BackupError(f"cannot lock {data_dir}: {e.strerror}") from None
    try:
        return _restore_locked(src, src_db, data_dir, db_path, force, out)
    finally:
        os.close(lock)


def _refuse_non_empty(data_dir: str, present: list[str]) -> NoReturn:
    """Raise the one-line refusal to restore over ``present`` entries without ``--force``."""
    raise BackupError(f"{data_dir} is not empty ({', '.join(present[:4])}{', ...' if len(present) > 4 else ''}); "
                      "give --force to overwrite it")


def _restore_locked(src: str, src_db: str, data_dir: str, db_path: Optional[str], force: bool,
                    out: TextIO) -> BackupInfo:
    path = db_path or os.path.join(data_dir, DB_NAME)
    present = _empty_dir(data_dir, ignore=(LOCK_FILE,))
    if db_path and os.path.exists(db_path):
        present.append(db_path)
    if present and not force:
        _refuse_non_empty(data_dir, present)
    _make_private_dir(data_dir)  # an existing directory is tightened only once it is ours to overwrite
    key_names = [n for n in KEY_FILES if os.path.isfile(os.path.join(src, n))]
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise BackupError(f"--db-path: directory {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.restore-{os.getpid()}")
    try:
        source = sqlite3.connect("file:" + urllib.parse.quote(os.path.abspath(src_db)) + "?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise BackupError(f"cannot open {src_db}: {e}") from None
    try:
        generation, schema, recorded = _copy_database(source, tmp)
    except (sqlite3.Error, BackupError) as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise BackupError(f"{src_db}: {e}") from None
    finally:
        source.close()
    if recorded is not None and keys.DB_ENCRYPTION_KEY not in key_names:
        os.unlink(tmp)
        raise BackupError(f"{src} has no {keys.DB_ENCRYPTION_KEY} but its database holds history encrypted with key "
                          f"fingerprint {recorded}; add the key file to the backup first")
    for suffix in ("-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):  # a stale WAL would be replayed over the restored database
            os.unlink(path + suffix)
    os.replace(tmp, path)
    for name in key_names:
        keys.write_secret_atomically(os.path.join(data_dir, name), _read_key(os.path.join(src, name)))
    stale_rotation = os.path.join(data_dir, keys.DB_ENCRYPTION_KEY + ".new")
    if keys.DB_ENCRYPTION_KEY + ".new" not in key_names and os.path.exists(stale_rotation):
        os.unlink(stale_rotation)  # a rotation of the database that was replaced; the server would refuse to start
    write_high_water_mark(hwm_path(path), generation)
    _fsync_dir(directory)
    _fsync_dir(data_dir)
    print(f"restored {path} (commit generation {generation}, schema v{schema}) and {len(key_names)} key file(s) "
          f"from {src}", file=out)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        print(f"note: restored as root; give the files to the server's user (e.g. chown -R freeq:freeq {data_dir})",
              file=out)
    return BackupInfo(data_dir, generation, schema, recorded, tuple(key_names))
