"""``freeq-client``: make a ``did:key`` identity, and run a simple session with it.

::

    freeq-client keygen --key-file ~/.config/freeq/bot.key [--kind ed25519|secp256k1|p256]
    freeq-client run --server irc.example.org:6697 --tls --nick bot --key-file ~/.config/freeq/bot.key \\
        --join '#test' --say 'hello' --listen 30

The key file is JSON ``{"kind": …, "private_key": <base64url 32 bytes>, "did": "did:key:…"}``,
written atomically with mode 0600; ``run`` refuses a key file that others can read.
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
from typing import Any, Optional, Sequence, TextIO

from freeq.auth.multikey import ED25519, KINDS, PrivateKey, did_key, generate_private_key
from freeq.client.auth import b64url, b64url_decode

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class KeyFileError(Exception):
    """The key file is missing, unreadable, malformed or too widely readable."""


def write_key_file(path: str, key: PrivateKey, overwrite: bool = False) -> str:
    """Write ``key`` to ``path`` (mode 0600, atomically: a temporary file renamed over it); return its did:key.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false.
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(path)
    did = did_key(key.public_key())
    body = json.dumps({"kind": key.kind, "private_key": b64url(key.to_bytes()), "did": did}, indent=1) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".freeq-key-", dir=directory)  # created 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and fails if someone created it meanwhile
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links
                if os.path.exists(path):
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return did


def read_key_file(path: str) -> PrivateKey:
    """Load a key written by :func:`write_key_file`; raises :class:`KeyFileError`."""
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                               f"run: chmod 600 {path}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return PrivateKey.from_bytes(data["kind"], b64url_decode(data["private_key"]))
    except KeyFileError:
        raise
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{path} is not a freeq key file ({e})") from None


def _parse_server(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``freeq-client``."""
    parser = argparse.ArgumentParser(prog="freeq-client", description="freeq IRC client tool (did:key identities).")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="generate a did:key identity and write its private key")
    keygen.add_argument("--key-file", required=True, help="where to write the private key (mode 0600)")
    keygen.add_argument("--kind", choices=KINDS, default=ED25519, help="key type (default ed25519)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    run = sub.add_parser("run", help="connect, optionally authenticate, join, say, print messages, quit")
    run.add_argument("--server", required=True, type=_parse_server, help="HOST:PORT")
    run.add_argument("--tls", action="store_true", help="connect with TLS")
    run.add_argument("--ca-file", help="PEM file of CA certificates to trust for --tls (default: the system's)")
    run.add_argument("--nick", required=True)
    run.add_argument("--key-file", help="authenticate as the did:key of this key file")
    run.add_argument("--join", action="append", default=[], metavar="CHANNEL", help="channel to join (repeatable)")
    run.add_argument("--say", action="append", default=[], metavar="TEXT",
                     help="message to send to every joined channel (repeatable)")
    run.add_argument("--listen", type=float, default=0.0, metavar="SECONDS",
                     help="print incoming messages for this long before quitting")
    run.add_argument("--guest-fallback", action="store_true",
                     help="continue as a guest if the server refuses the key")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds allowed to connect and register")
    return parser


def _keygen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    key = generate_private_key(args.kind)
    try:
        did = write_key_file(args.key_file, key, overwrite=args.force)
    except FileExistsError:
        print(f"freeq-client: {args.key_file} exists (use --force to replace it)", file=err)
        return EXIT_FAILED
    except OSError as e:
        print(f"freeq-client: cannot write {args.key_file}: {e.strerror}", file=err)
        return EXIT_FAILED
    print(did, file=out)
    return EXIT_OK


async def _session(reactor: Any, args: argparse.Namespace, credential: Any, out: TextIO, err: TextIO) -> int:
    from twisted.internet import defer
    from twisted.internet.task import deferLater

    from freeq.client.connect import connect
    from freeq.client.protocol import ChatMessage, ClientError

    host, port = args.server
    try:
        client = await connect(reactor, host, port, args.nick, tls=args.tls, credential=credential,
                               trust_root=args.ca_file, timeout=args.timeout, guest_fallback=args.guest_fallback)
    except ClientError as e:
        print(f"freeq-client: {e}", file=err)
        return EXIT_FAILED
    except defer.TimeoutError:
        print(f"freeq-client: no welcome from {host}:{port} within {args.timeout:g}s", file=err)
        return EXIT_FAILED
    except Exception as e:  # connection refused, TLS verification, DNS
        print(f"freeq-client: cannot connect to {host}:{port}: {e}", file=err)
        return EXIT_FAILED
    who = f" as {client.account}" if client.account else " as a guest"
    print(f"* connected to {host}:{port} as {client.nick}{who}", file=out)
    out.flush()

    def show(msg: ChatMessage) -> None:
        if msg.own:
            return
        mark = "-" if msg.command == "NOTICE" else ""
        where = msg.target if msg.is_channel else "(private)"
        print(f"{where} {mark}<{msg.nick}>{mark} {msg.text}", file=out)
        out.flush()

    client.on_message.add(show)
    client.on_notice.add(show)
    status = EXIT_OK
    joined = []
    for channel in args.join:
        try:
            await client.join(channel)
            joined.append(channel)
            print(f"* joined {channel}", file=out)
        except ClientError as e:
            print(f"freeq-client: cannot join {channel}: {e}", file=err)
            status = EXIT_FAILED
    out.flush()
    for text in args.say:
        for channel in joined:
            client.say(channel, text)
    if args.listen > 0 and client.is_connected:
        closed = client.closed
        waited = deferLater(reactor, args.listen, lambda: None)
        await defer.DeferredList([closed, waited], fireOnOneCallback=True, consumeErrors=True)
        if not waited.called:
            waited.cancel()
    if client.is_connected:
        await client.quit("freeq-client done")
    else:
        print(f"freeq-client: disconnected: {client.error_text or 'connection closed'}", file=err)
        status = EXIT_FAILED
    return status


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from twisted.internet import defer, task

    from freeq.client.auth import CryptoCredential

    credential = None
    if args.key_file:
        try:
            credential = CryptoCredential.from_private_key(read_key_file(args.key_file))
        except KeyFileError as e:
            print(f"freeq-client: {e}", file=err)
            return EXIT_FAILED
    result: list[int] = []

    async def main(reactor: Any) -> None:
        result.append(await _session(reactor, args, credential, out, err))

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return EXIT_FAILED
    return result[0] if result else EXIT_FAILED


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Entry point of ``freeq-client``; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        return _keygen(args, out, err)
    return _run(args, out, err)


if __name__ == "__main__":
    sys.exit(main())
