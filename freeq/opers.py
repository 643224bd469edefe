"""Named operator accounts (issue #13 item 3): ``[[oper]]`` blocks of the config file.

Contract shared by the config loader (which calls :func:`parse_oper_blocks` on the file's ``oper`` array of
tables) and the OPER command (which checks an account with :meth:`OperAccount.matches_host` and a password or
DID). Pure: no I/O beyond reading a ``password-file`` while parsing.

Passwords are stored only as scrypt hashes (``freeq-admin hash-password`` makes them):
``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>``. Plain text is refused. The parameters a hash may carry
are bounded (:data:`MAX_SCRYPT_WORK`, :data:`MAX_SCRYPT_N`, ...) both when the file is read and when a password
is checked, so a hostile or mistyped hash cannot make one OPER cost seconds of CPU or gigabytes of memory.

Host masks (``hosts``) are matched against the user's *real* address and host, never a regex:
``*`` (anyone), an IP (``192.0.2.7``), a CIDR (``2001:db8::/32``), a host glob (``*.example.org``,
``192.0.2.*``), each optionally preceded by ``user@`` or ``nick!user@`` (globs, :mod:`freeq.state.masks`).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import ipaddress
import os
import re
from typing import Any, Iterable, Optional, Union

from freeq.state.masks import MAX_MASK_WILDCARDS, compile_glob, fold_text, ip_of

#: The privilege classes an oper block may grant. ``override``: act on channels without channel status.
PRIVILEGES = ("kill", "ban", "override", "rehash", "link", "wallops")

#: Every privilege: what the shared ``--oper-password`` and ``--oper-dids`` grant, and a block without
#: ``privileges``.
ALL_PRIVILEGES: frozenset[str] = frozenset(PRIVILEGES)

#: Classes a block may name with ``class`` instead of listing ``privileges``.
CLASSES: dict[str, frozenset[str]] = {
    "admin": ALL_PRIVILEGES,
    "oper": frozenset({"kill", "ban", "override", "wallops"}),  # no rehash, no link
}


#: At most this many [[oper]] blocks, host masks per block, characters per host mask.
MAX_OPERS = 256
MAX_HOSTS = 64
MAX_HOST_LENGTH = 200

#: The hash ``freeq-admin hash-password`` makes: 16 MiB of memory, some 50 ms of one core.
SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32

#: Bounds on a hash's parameters (read from the config file): memory is 128 * r * n bytes, time about
#: n * r * p. At most 8 times the default's work and 64 MiB.
MAX_SCRYPT_N = 2 ** 16
MAX_SCRYPT_R = 16
MAX_SCRYPT_P = 4
MAX_SCRYPT_WORK = 8 * SCRYPT_N * SCRYPT_R * SCRYPT_P
MAX_SCRYPT_MEMORY = 64 * 1024 * 1024

#: Keys an [[oper]] block may hold.
KEYS = frozenset({"name", "password", "password-file", "did", "hosts", "privileges", "class"})

#: A DID as the config accepts it (``did:<method>:<id>``), bounded.
_DID_RE = re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]{1,2000}\Z")


def _error(message: str) -> Exception:
    """A :class:`freeq.config.ConfigError` (imported here: freeq.config may import this module)."""
    from freeq.config import ConfigError

    return ConfigError(message)


# ----------------------------------------------------------------------------------------------------------
# Password hashes
# ----------------------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, salt: Optional[bytes] = None) -> str:
    """The scrypt hash of ``password`` as the config file holds it: ``scrypt$n$r$p$salt_b64$hash_b64``.

    A fresh random salt unless ``salt`` is given (tests)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=MAX_SCRYPT_MEMORY + 1024 * 1024, dklen=HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


@dataclasses.dataclass(frozen=True)
class ScryptHash:
    """A parsed, bounds-checked password hash."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def parse_hash(encoded: str) -> ScryptHash:
    """Parse and bound-check a ``scrypt$n$r$p$salt$hash`` string; ``ValueError`` says (in one line) why not."""
    if not isinstance(encoded, str) or len(encoded) > 512:
        raise ValueError("not a scrypt hash")
    parts = encoded.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt hash (expected scrypt$n$r$p$salt$hash)")
    try:
        n, r, p = (int(x) for x in parts[1:4] if x.isdigit() and len(x) <= 8)
    except ValueError:
        raise ValueError("scrypt parameters n, r, p must be small whole numbers") from None
    if n < 2 or n & (n - 1) or n > MAX_SCRYPT_N:
        raise ValueError(f"scrypt n must be a power of two from 2 to {MAX_SCRYPT_N}")
    if not 1 <= r <= MAX_SCRYPT_R or not 1 <= p <= MAX_SCRYPT_P:
        raise ValueError(f"scrypt r must be 1..{MAX_SCRYPT_R} and p 1..{MAX_SCRYPT_P}")
    if n * r * p > MAX_SCRYPT_WORK or 128 * r * n > MAX_SCRYPT_MEMORY:
        raise ValueError("scrypt parameters ask for too much work")
    try:
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (binascii.Error, ValueError):
        raise ValueError("scrypt salt or hash is not base64") from None
    if not 8 <= len(salt) <= 64 or not 16 <= len(digest) <= 64:
        raise ValueError("scrypt salt must be 8..64 bytes and the hash 16..64")
    return ScryptHash(n, r, p, salt, digest)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches hash ``encoded`` (constant-time compare). A malformed or out-of-bounds hash
    never matches (and costs nothing). Takes tens of milliseconds: the server runs it in a thread."""
    try:
        h = parse_hash(encoded)
    except ValueError:
        return False
    try:
        digest = hashlib.scrypt(password.encode("utf-8", "replace"), salt=h.salt, n=h.n, r=h.r, p=h.p,
                                maxmem=MAX_SCRYPT_MEMORY + 1024 * 1024, dklen=len(h.digest))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, h.digest)


# ----------------------------------------------------------------------------------------------------------
# Host masks
# ----------------------------------------------------------------------------------------------------------
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclasses.dataclass(frozen=True)
class HostMask:
    """One ``hosts`` entry: an optional ``user``/``nick!user`` glob and a network or a host glob."""

    text: str
    who: str  # glob over "user" or "nick!user" ("*": anyone)
    network: Optional[Network]  # an IP or CIDR
    host: Optional[str]  # else a glob over the real IP and the shown host

    def matches(self, nick: str, username: str, ip: str, host: str) -> bool:
        """Whether a user (nick, username, real IP, shown host) matches. Linear-time globs only."""
        if self.who != "*":
            subject = f"{nick}!{username}" if "!" in self.who else username
            if not compile_glob(self.who).match(fold_text(subject)):
                return False
        if self.network is not None:
            address = ip_of(ip)
            return address is not None and address.version == self.network.version and address in self.network
        assert self.host is not None
        glob = compile_glob(self.host)
        return glob.match(fold_text(ip)) or glob.match(fold_text(host))


def parse_host_mask(text: str) -> HostMask:
    """One ``hosts`` entry as a :class:`HostMask`; ``ValueError`` says why not."""
    if not isinstance(text, str) or not text or len(text) > MAX_HOST_LENGTH:
        raise ValueError(f"each host mask must be a string of 1..{MAX_HOST_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in text) or text.count("@") > 1 or text.count("!") > 1:
        raise ValueError(f"{text!r} is not a host mask")
    if text.count("*") + text.count("?") > MAX_MASK_WILDCARDS:
        raise ValueError(f"{text!r} has more than {MAX_MASK_WILDCARDS} wildcards")
    who, _, hostpart = text.rpartition("@")
    who = who or "*"
    if "!" in hostpart or not hostpart:
        raise ValueError(f"{text!r} is not a host mask")
    if "*" not in hostpart and "?" not in hostpart and (":" in hostpart or "/" in hostpart
                                                        or hostpart.replace(".", "").isdigit()):
        try:
            network = ipaddress.ip_network(hostpart, strict=False)
        except ValueError:
            raise ValueError(f"{text!r}: {hostpart!r} is not an IP address or CIDR") from None
        return HostMask(text, who, network, None)
    return HostMask(text, who, None, hostpart)


# ----------------------------------------------------------------------------------------------------------
# Accounts
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OperAccount:
    """One named operator: a scrypt password hash and/or a DID, the host masks it may OPER from, and what it may do."""

    name: str
    password_hash: Optional[str] = None  # "scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>" (freeq-admin hash-password)
    did: Optional[str] = None
    hosts: tuple[str, ...] = ("*",)  # nick!user@host / user@host / IP / CIDR masks; "*" any
    privileges: frozenset[str] = frozenset(PRIVILEGES)

    def host_masks(self) -> tuple[HostMask, ...]:
        """The parsed :attr:`hosts` (validated when the block was read)."""
        return _host_masks(self.hosts)

    def matches_host(self, nick: str, username: str, ip: str, host: str) -> bool:
        """Whether a user with this nick, username, real IP and shown host may OPER as this account."""
        return any(mask.matches(nick, username, ip, host) for mask in self.host_masks())


_MASK_CACHE: dict[tuple[str, ...], tuple[HostMask, ...]] = {}


def _host_masks(hosts: tuple[str, ...]) -> tuple[HostMask, ...]:
    """Parsed host masks, cached per tuple (bounded: the cache is dropped when it grows past 1024 entries)."""
    masks = _MASK_CACHE.get(hosts)
    if masks is None:
        if len(_MASK_CACHE) >= 1024:
            _MASK_CACHE.clear()
        masks = _MASK_CACHE[hosts] = tuple(parse_host_mask(h) for h in hosts)
    return masks


def find_account(accounts: Iterable[OperAccount], name: str) -> Optional[OperAccount]:
    """The account called ``name`` (exactly), if any."""
    for account in accounts:
        if account.name == name:
            return account
    return None


def _parse_block(index: int, block: Any, seen: set[str]) -> OperAccount:
    from freeq.config import named_block
    from freeq.configfile import read_secret_file

    where = named_block("oper", index + 1, block, KEYS, seen)
    name = block["name"]
    if "password" in block and "password-file" in block:
        raise _error(f"{where}: password: give password or password-file, not both")
    encoded: Optional[str] = None
    key = "password" if "password" in block else "password-file"
    if "password" in block:
        encoded = block["password"]
        if not isinstance(encoded, str):
            raise _error(f"{where}: password: must be a string made by freeq-admin hash-password")
    elif "password-file" in block:
        encoded = read_secret_file(where, "password-file", block["password-file"]).strip()
    if encoded is not None:
        try:
            parse_hash(encoded)
        except ValueError as e:
            # Never echo the value: it may be a plain-text password.
            raise _error(f"{where}: {key}: {e}; plain-text passwords are refused, make a hash with "
                         "freeq-admin hash-password") from None
        encoded = encoded.strip()
    did = block.get("did")
    if did is not None and (not isinstance(did, str) or not _DID_RE.match(did)):
        raise _error(f"{where}: did: not a DID (did:plc:... or did:web:...)")
    if encoded is None and did is None:
        raise _error(f"{where}: needs password, password-file or did")
    hosts_value = block.get("hosts", ["*"])
    if isinstance(hosts_value, str):
        hosts_value = [hosts_value]
    if not isinstance(hosts_value, list) or not hosts_value or len(hosts_value) > MAX_HOSTS:
        raise _error(f"{where}: hosts: must be a list of 1..{MAX_HOSTS} masks")
    for host in hosts_value:
        try:
            parse_host_mask(host)
        except ValueError as e:
            raise _error(f"{where}: hosts: {e}") from None
    privileges = _parse_privileges(where, block)
    return OperAccount(name=name, password_hash=encoded, did=did, hosts=tuple(hosts_value), privileges=privileges)


def _parse_privileges(where: str, block: dict[str, Any]) -> frozenset[str]:
    if "privileges" in block and "class" in block:
        raise _error(f"{where}: privileges: give privileges or class, not both")
    if "class" in block:
        cls = block["class"]
        if cls not in CLASSES:
            raise _error(f"{where}: class: must be one of {', '.join(sorted(CLASSES))}")
        return CLASSES[cls]
    if "privileges" not in block:
        return ALL_PRIVILEGES
    value = block["privileges"]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise _error(f"{where}: privileges: must be a list of {', '.join(PRIVILEGES)}")
    for privilege in value:
        if privilege not in PRIVILEGES:
            raise _error(f"{where}: privileges: unknown privilege {privilege[:32]!r} "
                         f"(known: {', '.join(PRIVILEGES)})")
    return frozenset(value)


def parse_oper_blocks(blocks: Any) -> tuple[OperAccount, ...]:
    """Validate the config file's ``[[oper]]`` tables into accounts; raise ``freeq.config.ConfigError`` (one line)."""
    from freeq.config import block_tables

    seen: set[str] = set()
    return tuple(_parse_block(i, block, seen) for i, block in enumerate(block_tables("oper", blocks, MAX_OPERS)))
