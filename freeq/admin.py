"""``freeq-admin``: offline maintenance of a data directory.

``freeq-admin rekey --data-dir DIR`` rotates the database encryption key without losing
history: every stored history chunk is re-encrypted under a fresh key in batches of chunks, each
committed on its own, so killing the command at any point and running it again finishes the job.
Format-1 rows (messages carried over from schema v1) are rewritten as format-2 chunks on the way. Only when
no row is left under the old key does the database record the new key's fingerprint, and then
the new key file atomically replaces the old one.

``freeq-admin signing-keys --data-dir DIR`` lists every message-signing public key on record.

``freeq-admin hash-password`` prints the scrypt hash of an operator password for an ``[[oper]]`` block
(``password = "scrypt$..."``): asked twice on the terminal, or read from stdin when that is not a terminal,
never taken from the command line (which ``ps`` and the shell history would show).

``freeq-admin audit [--config FILE] [server flags]`` checks a configuration against the hardening checklist
(:mod:`freeq.audit`); ``freeq-admin backup DEST`` and ``freeq-admin restore SRC --data-dir DIR`` copy the
database and key files out and back (:mod:`freeq.backup`).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sqlite3
import sys
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

from freeq.store.crypto import DecryptionError, MessageCipher
from freeq.store import service
from freeq.store.db import Store, StoreError
from freeq.store.keys import DB_ENCRYPTION_KEY, KeyFileError, fingerprint, load_raw_key, write_secret_atomically
from freeq.store.redaction import reencrypt_side_rows

NEW_SUFFIX = ".new"


class AdminError(Exception):
    """A maintenance command cannot proceed; one line for the operator."""


def lock_data_dir(data_dir: str) -> int:
    """Take the data directory's lock (held by a running server); return the fd."""
    try:
        return service.lock_data_dir(data_dir)
    except service.DataDirLocked as e:
        raise AdminError(f"{data_dir} is in use by a running freeq server (lock {e}); stop it first") from None


def default_db_path(data_dir: str) -> str:
    """Where the database lives unless ``--db-path`` says otherwise."""
    return os.path.join(data_dir, "freeq.db")


def reencrypt_chunk(row: sqlite3.Row, old: MessageCipher, new: MessageCipher) -> bytes:
    """The payload of history chunk ``row`` (either format) re-encrypted under ``new`` as format 2.

    A format-1 row (a v1 message) becomes a one-message format-2 chunk: its clear v1 columns move
    into the encrypted payload. Raises :class:`DecryptionError` if the row does not decrypt.
    """
    if row["format"] == 2:
        plain = old.decrypt_chunk(row["payload"], row["target"], row["msgids"])
    else:
        try:
            body = json.loads(old.decrypt(row["payload"], row["msgids"], row["target"]))
            command, sender, account, shown_to = json.loads(row["legacy"])
            columns = [[row["first_ms"]], [command], [sender], [account], [shown_to], [body["text"]],
                       [body.get("tags", {})]]
        except (ValueError, KeyError, TypeError):
            raise DecryptionError(f"history row {row['id']} is malformed") from None
        plain = json.dumps(columns, separators=(",", ":")).encode()  # the format-2 layout, see freeq.store.chunks
    return new.encrypt_chunk(plain, row["target"], row["msgids"])


def rekey(data_dir: str, db_path: Optional[str] = None, batch_size: int = 500,
          max_batches: Optional[int] = None, out=sys.stdout) -> bool:
    """Re-encrypt every stored message under a new key; return True when the rotation is complete.

    ``batch_size`` counts history chunks (rows) per transaction.

    With ``max_batches`` it stops early (returning False) so a rotation can be staged; running
    it again resumes where it stopped.
    """
    if not os.path.isdir(data_dir):
        raise AdminError(f"--data-dir: {data_dir} does not exist")
    lock = lock_data_dir(data_dir)
    try:
        path = db_path or default_db_path(data_dir)
        if not os.path.exists(path):
            raise AdminError(f"no database at {path}")
        store = Store.open(path, reactor=None)
        conn = store.conn
        key_path = os.path.join(data_dir, DB_ENCRYPTION_KEY)
        new_path = key_path + NEW_SUFFIX
        recorded = store.recorded_key_fingerprint()
        if not os.path.exists(new_path):
            _generate_new_key(data_dir, key_path, new_path, recorded, out)
        new_cipher = _load_cipher(data_dir, DB_ENCRYPTION_KEY + NEW_SUFFIX)
        if recorded != new_cipher.fingerprint:
            old_cipher = _load_cipher(data_dir, DB_ENCRYPTION_KEY)
            if recorded is not None and recorded != old_cipher.fingerprint:
                raise AdminError(f"{key_path} does not match the database; refusing to rotate")
            done = _reencrypt_history(conn, old_cipher, new_cipher, batch_size, max_batches, out)
            if done is None:
                conn.close()
                return False
            print(f"re-encrypted {reencrypt_side_rows(conn, old_cipher, new_cipher)} edits, deletes and reactions",
                  file=out)
            _record_new_key(conn, new_cipher)
            print(f"re-encrypted {done} messages", file=out)
        conn.close()
        _install_new_key(data_dir, new_path, key_path)
        print(f"rotation complete: {key_path} now holds the key with fingerprint {new_cipher.fingerprint}", file=out)
        return True
    finally:
        os.close(lock)


def _generate_new_key(data_dir: str, key_path: str, new_path: str, recorded: Optional[str], out: TextIO) -> None:
    """Start a rotation: write a fresh random key to ``new_path``, once the current key file is checked
    against the fingerprint the database ``recorded`` (None: a database that never stored a message)."""
    old = load_raw_key(data_dir, DB_ENCRYPTION_KEY, create=False)
    if recorded is not None and recorded != fingerprint(old):
        raise AdminError(f"{key_path} does not match the database (fingerprint {fingerprint(old)} vs "
                         f"{recorded}); refusing to rotate")
    write_secret_atomically(new_path, os.urandom(32))
    print(f"generated new key {new_path}", file=out)


def _load_cipher(data_dir: str, name: str) -> MessageCipher:
    """The history cipher of the key file ``name`` in ``data_dir``."""
    key = load_raw_key(data_dir, name, create=False)
    return MessageCipher(key, fingerprint(key))


def _reencrypt_history(conn: sqlite3.Connection, old: MessageCipher, new: MessageCipher, batch_size: int,
                       max_batches: Optional[int], out: TextIO) -> Optional[int]:
    """Re-encrypt every chunk still under ``old`` in batches of ``batch_size`` rows, each committed on its
    own; return how many messages are now under ``new``, or None if it stopped after ``max_batches``."""
    batches = 0
    done = conn.execute("SELECT COALESCE(SUM(count), 0) FROM message_chunks WHERE key_fp=?",
                        (new.fingerprint,)).fetchone()[0]
    after = 0  # rows are visited in id order; a rerun starts over, skipping rows already done
    while True:
        rows = conn.execute("SELECT id, target, first_ms, count, msgids, format, legacy, payload "
                            "FROM message_chunks WHERE id>? AND key_fp=? ORDER BY id LIMIT ?",
                            (after, old.fingerprint, batch_size)).fetchall()
        if not rows:
            return done
        if max_batches is not None and batches >= max_batches:
            print(f"stopped after {batches} batches; {done} messages re-encrypted so far; run again to "
                  f"continue", file=out)
            return None
        _reencrypt_batch(conn, rows, old, new)
        batches += 1
        done += sum(r["count"] for r in rows)
        after = rows[-1]["id"]


def _reencrypt_batch(conn: sqlite3.Connection, rows: list[sqlite3.Row], old: MessageCipher,
                     new: MessageCipher) -> None:
    """Re-encrypt ``rows`` under ``new`` (as format 2) in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for r in rows:
            payload = reencrypt_chunk(r, old, new)
            conn.execute("UPDATE message_chunks SET payload=?, key_fp=?, format=2, legacy=NULL WHERE id=?",
                         (payload, new.fingerprint, r["id"]))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _record_new_key(conn: sqlite3.Connection, new: MessageCipher) -> None:
    """Make the database say its history is under ``new``, once no row is left under another key."""
    left = conn.execute("SELECT COALESCE(SUM(count), 0) FROM message_chunks WHERE key_fp<>?",
                        (new.fingerprint,)).fetchone()[0]
    if left:
        raise AdminError(f"{left} messages are under a key that is neither the old nor the new one; "
                         f"nothing was swapped")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('db_key_fingerprint', ?)", (new.fingerprint,))


def _install_new_key(data_dir: str, new_path: str, key_path: str) -> None:
    """Atomically replace the key file with the new key, and make the rename durable (fsync the directory)."""
    os.replace(new_path, key_path)
    dfd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def signing_keys(data_dir: str, db_path: Optional[str] = None, out=sys.stdout) -> None:
    """Print every message-signing public key on record with its validity period."""
    store = Store.open(db_path or default_db_path(data_dir), reactor=None)
    for key, start, end in store.signing_keys():
        print(f"{key} valid_from={start} valid_until={end if end is not None else 'current'}", file=out)
    store.conn.close()


def server_config(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Any, list[str]]:
    """Parse ``argv`` exactly as ``twistd freeq`` does (its ``Options``, ``--config`` included, and
    ``config_from_options``): the validated Config and every long option the server takes.

    ``freeq-admin`` is an entry point like the twistd plugin, so it may use the composition root's parser.
    Raises ``usage.UsageError`` or ``ConfigError``.
    """
    from freeq.tap import OPTIONS, Options, config_from_options

    options = Options()
    options.parseOptions(list(argv))
    flags = [str(row[0]) for row in OPTIONS + Options.optParameters + Options.optFlags]
    return config_from_options(options, environ), flags


def audit_command(argv: Sequence[str], out: Optional[TextIO] = None, err: Optional[TextIO] = None,
                  resource_module: Any = None) -> int:
    """``freeq-admin audit [server flags]``: print the audit table; 1 on any fail, 2 on a usage error.

    ``resource_module`` stands in for :mod:`resource` (the open-file limit) in tests."""
    from twisted.python import usage

    from freeq import audit
    from freeq.config import ConfigError

    out, err = out or sys.stdout, err or sys.stderr

    try:
        config, flags = server_config(argv, os.environ)
    except usage.UsageError as e:
        print(f"freeq-admin audit: {e} (freeq-admin audit --help lists the server's flags)", file=err)
        return 2
    except ConfigError as e:
        print(f"freeq-admin audit: FAIL: the server refuses this configuration: {e}", file=err)
        return 1
    findings = audit.audit(config, argv, flags, resource_module=resource_module)
    out.write(audit.format_table(findings))
    return audit.exit_status(findings)


def _backup_command(args: argparse.Namespace) -> int:
    """Run ``backup`` or ``restore``; one ``freeq-admin:`` line and 1 on failure."""
    from twisted.python import usage

    from freeq.backup import BackupError, backup, restore
    from freeq.config import ConfigError

    try:
        if args.command == "backup":
            data_dir, db_path = args.data_dir or "freeq-data", args.db_path
            if args.config:
                config, _flags = server_config(["--config", args.config], os.environ)
                data_dir, db_path = args.data_dir or config.data_dir, args.db_path or config.db_path
            backup(data_dir, args.dest, db_path, out=sys.stdout)
        else:
            restore(args.src, args.data_dir, args.db_path, force=args.force, out=sys.stdout)
    except (BackupError, ConfigError, usage.UsageError) as e:
        print(f"freeq-admin {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


def hash_password_command(stdin: Optional[TextIO] = None, out: Optional[TextIO] = None,
                          err: Optional[TextIO] = None, ask: Optional[Callable[[str], str]] = None) -> int:
    """``freeq-admin hash-password``: print the scrypt hash of a password (freeq.opers.hash_password) read with
    ``ask`` (getpass) twice on a terminal, or as the first line of ``stdin`` otherwise; 1 if empty or mismatched."""
    from freeq.opers import hash_password

    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    if stdin.isatty():
        ask = ask or getpass.getpass
        password = ask("Operator password: ")
        if password != ask("Again: "):
            print("freeq-admin: the passwords do not match; nothing printed", file=err)
            return 1
    else:
        password = stdin.readline(4096).rstrip("\r\n")
    if not password:
        print("freeq-admin: empty password refused", file=err)
        return 1
    print(hash_password(password), file=out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``freeq-admin`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["audit"]:  # the server's own flags follow: its parser reads them, not argparse
        return audit_command(args_list[1:])
    parser = argparse.ArgumentParser(prog="freeq-admin", description="Offline maintenance of a freeq data directory.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rekey", help="rotate db-encryption-key.secret, re-encrypting all stored messages")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--db-path", default=None, help="default: DATA_DIR/freeq.db")
    p.add_argument("--batch-size", type=int, default=500, help="history chunks per transaction")
    p.add_argument("--max-batches", type=int, default=None, help="stop after N batches (resume later)")
    s = sub.add_parser("signing-keys", help="list message-signing public keys on record")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--db-path", default=None)
    sub.add_parser("hash-password", help="print the scrypt hash of an operator password for an [[oper]] block "
                                         "(asked on the terminal or read from stdin, never from arguments)")
    sub.add_parser("audit", add_help=False, help="check a configuration against the hardening checklist: "
                   "freeq-admin audit [--config FILE] [the server's flags] (exit 1 on a fail)")
    b = sub.add_parser("backup", help="copy the database (consistent while the server runs) and key files to DEST")
    b.add_argument("dest", help="a new directory (created 0700)")
    b.add_argument("--config", default=None, help="take --data-dir and --db-path from the server's config file")
    b.add_argument("--data-dir", default=None, help="default: the config file's, else freeq-data")
    b.add_argument("--db-path", default=None, help="default: the config file's, else DATA_DIR/freeq.db")
    r = sub.add_parser("restore", help="restore a backup into a data directory (server stopped)")
    r.add_argument("src", help="a directory made by freeq-admin backup")
    r.add_argument("--data-dir", required=True)
    r.add_argument("--db-path", default=None, help="default: DATA_DIR/freeq.db")
    r.add_argument("--force", action="store_true", help="overwrite a data directory that is not empty")
    args = parser.parse_args(args_list)
    if args.command == "hash-password":
        return hash_password_command()
    try:
        if args.command in ("backup", "restore"):
            return _backup_command(args)
        if args.command == "rekey":
            return 0 if rekey(args.data_dir, args.db_path, args.batch_size, args.max_batches, out=sys.stdout) else 3
        signing_keys(args.data_dir, args.db_path, out=sys.stdout)
        return 0
    except DecryptionError:
        print("freeq-admin: a stored message does not decrypt under the current key; nothing was swapped "
              "(restore the right db-encryption-key.secret)", file=sys.stderr)
        return 1
    except (AdminError, StoreError, KeyFileError) as e:
        print(f"freeq-admin: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
