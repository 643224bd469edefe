"""The S2S wire protocol, as pure functions and small objects (no I/O, no reactor).

One link is one bidirectional QUIC stream carrying *frames*: a 4-byte big-endian length, then that
many bytes of compact UTF-8 JSON holding one object with a ``"type"``. Frames larger than
:data:`MAX_FRAME` end the link (the length is checked before the payload is buffered).

The first frame each way is ``hello`` (versioned handshake). Then each side sends a ``burst`` (its
whole view, in several frames ending with ``{"type": "burst", "part": "end"}``), then live *events*.

Every event is an envelope ``{type, origin, epoch, seq, to, hlc, sig, ...}``:

* ``origin`` is the endpoint id (64 hex) of the server where it happened, ``sig`` an Ed25519
  signature by that endpoint's key over the canonical JSON of everything else, so an event relayed
  through a neighbour still proves its origin (the neighbour is never trusted to say who spoke);
* ``epoch`` identifies one run of the origin (milliseconds at start-up), ``seq`` counts its events
  per *stream* (``to`` = ``null`` for events flooded to every server, or one server id for events
  routed to that server only, such as private messages); receivers drop anything at or below the
  highest ``(epoch, seq)`` already accepted for that stream (duplicates, replays, reordering);
* ``hlc`` is the origin's hybrid logical clock when it happened (used by :mod:`freeq.s2s.state`).

See docs/federation.md for the complete protocol.
"""
from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Optional, TypeGuard

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from freeq.auth.multikey import strict_verify_ed25519

ALPN = b"freeq/s2s/1"
PROTOCOL = "freeq-s2s"
MIN_VERSION = 1
MAX_VERSION = 1
MAX_FRAME = 64 * 1024
_HEADER = struct.Struct(">I")

#: Event kinds (signed, sequenced, rate limited) and what they may change.
PRESENCE_KINDS = frozenset({"user", "nick", "quit", "join", "part"})
MESSAGE_KINDS = frozenset({"msg"})
#: ``refuse`` (routed to a joiner's home server: "your user's join was refused here") removes a member,
#: like a kick, so it is channel state: only ``full`` links may deliver it. ``rename`` (draft/channel-rename, flooded;
#: with ``undo``: its origin reverses it) and ``rename_refused`` (routed to a rename's origin: the new name is taken
#: here) are channel state too (freeq.s2s.rename).
STATE_KINDS = frozenset({"topic", "mode", "kick", "invite", "refuse", "rename", "rename_refused"})
#: Server-operator actions on another server's users (``kill``: routed to the victim's home server, which
#: disconnects the user): only ``full`` links may deliver them.
#: ``ban``/``unban`` (a K-line or D-line set or lifted by an operator of the origin, routed to each server that
#: applies its operators' actions: freeq.s2s.bans) likewise.
OPER_KINDS = frozenset({"kill", "ban", "unban"})
#: An account's own state kept on every server where it has a user (``marker``: a draft/read-marker moved, routed
#: to those servers; applied only from a server hosting a user of that account): ``full`` and ``relay`` links.
#: ``metadata`` (draft/metadata-2, flooded) is a user's own, from its home server; a channel's is channel state,
#: which the receiver takes only over a ``full`` link from a server whose user is an operator of the channel.
ACCOUNT_KINDS = frozenset({"marker", "metadata"})
EVENT_KINDS = PRESENCE_KINDS | MESSAGE_KINDS | STATE_KINDS | OPER_KINDS | ACCOUNT_KINDS
#: Control frames (not events): handshake, snapshot, keepalive, resync request.
CONTROL_KINDS = frozenset({"hello", "burst", "ping", "pong", "resync"})

TRUST_LEVELS = ("full", "relay", "readonly")
#: What each trust level lets a peer change here (events and burst contents alike).
TRUST_ALLOWS = {
    "full": EVENT_KINDS,
    "relay": PRESENCE_KINDS | MESSAGE_KINDS | ACCOUNT_KINDS,
    "readonly": frozenset(),
}

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class FrameError(Exception):
    """The byte stream cannot be framed (a frame over the limit); the link must end."""


class ProtocolError(Exception):
    """One frame is malformed (bad JSON, wrong shape, invalid field); the frame is dropped."""


def is_endpoint_id(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is an endpoint id as used here: 64 lowercase hex characters."""
    return isinstance(value, str) and _HEX64.match(value) is not None


def short_id(endpoint_id: str) -> str:
    """The first 12 characters of an endpoint id, for logs and provenance."""
    return endpoint_id[:12]


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------
def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, no spaces, UTF-8): what is signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return _HEADER.pack(len(payload)) + payload


def encode_message(obj: dict[str, Any], max_size: int = MAX_FRAME) -> bytes:
    """One frame holding ``obj``; raises :class:`FrameError` if it would exceed ``max_size``."""
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > max_size:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the maximum of {max_size}")
    return encode_frame(payload)


class FrameDecoder:
    """Splits a byte stream into frame payloads, refusing any frame larger than ``max_size``."""

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete payloads. Raises :class:`FrameError`."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > self.max_size:
                raise FrameError(f"frame of {size} bytes exceeds the maximum of {self.max_size}")
            if len(self._buf) < 4 + size:
                break
            out.append(bytes(self._buf[4:4 + size]))
            del self._buf[:4 + size]
        return out


def decode_message(payload: bytes) -> dict[str, Any]:
    """Parse one frame payload into an object with a known string ``type``."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"not JSON: {str(e)[:80]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in EVENT_KINDS | CONTROL_KINDS:
        raise ProtocolError(f"unknown type {str(kind)[:32]!r}")
    return obj


# ---------------------------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------------------------
def make_hello(server_id: str, name: str, network: str, epoch: int) -> dict[str, Any]:
    """Our first frame: who we are and which protocol versions we speak."""
    return {"type": "hello", "protocol": PROTOCOL, "min_version": MIN_VERSION, "max_version": MAX_VERSION,
            "id": server_id, "name": name, "network": network, "epoch": epoch}


@dataclass(frozen=True)
class Hello:
    """A validated ``hello`` from a peer, with the version both sides will speak."""

    server_id: str
    name: str
    network: str
    epoch: int
    version: int


def check_hello(msg: dict[str, Any], authenticated_id: str) -> Hello:
    """Validate a peer's ``hello`` against the QUIC-authenticated id; raise :class:`ProtocolError`."""
    if msg.get("type") != "hello" or msg.get("protocol") != PROTOCOL:
        raise ProtocolError("expected a freeq-s2s hello")
    lo, hi = msg.get("min_version"), msg.get("max_version")
    if not isinstance(lo, int) or not isinstance(hi, int) or lo > hi:
        raise ProtocolError("bad version range")
    version = min(hi, MAX_VERSION)
    if version < max(lo, MIN_VERSION):
        raise ProtocolError(f"no common protocol version (peer {lo}-{hi}, us {MIN_VERSION}-{MAX_VERSION})")
    if msg.get("id") != authenticated_id:
        raise ProtocolError("hello id does not match the authenticated peer")
    name, network, epoch = msg.get("name"), msg.get("network"), msg.get("epoch")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,62}", name):
        raise ProtocolError("bad server name")
    if not isinstance(network, str) or len(network) > 64:
        raise ProtocolError("bad network name")
    if not isinstance(epoch, int) or epoch <= 0:
        raise ProtocolError("bad epoch")
    return Hello(authenticated_id, name, network, epoch, version)


# ---------------------------------------------------------------------------------------------
# Signed envelope
# ---------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class EventSigner:
    """Signs our events with the endpoint's Ed25519 key (the iroh secret key is the seed)."""

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(seed)
        self.server_id = self._key.verify_key.encode().hex()

    def sign(self, event: dict[str, Any]) -> dict[str, Any]:
        """Add ``sig`` to ``event`` (in place) and return it."""
        event.pop("sig", None)
        event["sig"] = _b64(self._key.sign(canonical(event)).signature)
        return event


_VERIFY_CACHE: dict[str, VerifyKey] = {}


def verify_event(event: dict[str, Any]) -> bool:
    """Whether ``event["sig"]`` is ``event["origin"]``'s signature over the rest of the event."""
    origin, sig = event.get("origin"), event.get("sig")
    if not is_endpoint_id(origin) or not isinstance(sig, str) or len(sig) > 100:
        return False
    origin = str(origin)
    key = _VERIFY_CACHE.get(origin)
    if key is None:
        try:
            key = VerifyKey(bytes.fromhex(origin))
        except Exception:
            return False
        if len(_VERIFY_CACHE) > 4096:
            _VERIFY_CACHE.clear()
        _VERIFY_CACHE[origin] = key
    body = {k: v for k, v in event.items() if k != "sig"}
    try:
        return strict_verify_ed25519(bytes(key), _unb64(sig), canonical(body))  # one strict Ed25519 check
    except (BadSignatureError, ValueError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------
# Ordering: per-origin, per-stream sequence numbers
# ---------------------------------------------------------------------------------------------
ACCEPT = "accept"  # the next event of the stream
GAP = "gap"  # accepted, but events were skipped (lost or dropped upstream)
NEW_EPOCH = "new-epoch"  # accepted: the origin restarted
REPLAY = "replay"  # at or below the stream's high-water mark: duplicate, replay or out of order
STALE = "stale-epoch"  # from an earlier run of the origin


class SequenceTracker:
    """The highest ``(epoch, seq)`` accepted per ``(origin, stream)``.

    A stream is ``"*"`` (events flooded to all servers) or a destination server id (routed events).
    """

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], tuple[int, int]] = {}

    def check(self, origin: str, stream: str, epoch: int, seq: int) -> str:
        """Classify an event without recording it."""
        mark = self.marks.get((origin, stream))
        if mark is None:
            return ACCEPT
        if epoch < mark[0]:
            return STALE
        if epoch > mark[0]:
            return NEW_EPOCH
        if seq <= mark[1]:
            return REPLAY
        return ACCEPT if seq == mark[1] + 1 else GAP

    def record(self, origin: str, stream: str, epoch: int, seq: int) -> None:
        """Raise the stream's high-water mark to ``(epoch, seq)``."""
        key = (origin, stream)
        mark = self.marks.get(key)
        if mark is None or (epoch, seq) > mark:
            self.marks[key] = (epoch, seq)

    def export(self, origins: Optional[set[str]] = None) -> list[list[Any]]:
        """The marks (of ``origins`` only, if given) as JSON: ``[[origin, stream, epoch, seq], ...]``."""
        return [[o, s, e, q] for (o, s), (e, q) in self.marks.items() if origins is None or o in origins]


def valid_marks(value: Any) -> list[tuple[str, str, int, int]]:
    """Validate exported marks received in a burst."""
    out = []
    if not isinstance(value, list) or len(value) > 100000:
        raise ProtocolError("bad marks")
    for item in value:
        if (not isinstance(item, list) or len(item) != 4 or not is_endpoint_id(item[0])
                or not (item[1] == "*" or is_endpoint_id(item[1]))
                or not isinstance(item[2], int) or not isinstance(item[3], int)):
            raise ProtocolError("bad mark")
        out.append((item[0], item[1], item[2], item[3]))
    return out


# ---------------------------------------------------------------------------------------------
# Rate limiting
# ---------------------------------------------------------------------------------------------
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst`` (default: one second's worth)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float, burst: Optional[float] = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if available."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


# ---------------------------------------------------------------------------------------------
# Field validation (everything from a peer ends up in IRC lines: no CR, LF, NUL, no stray spaces)
# ---------------------------------------------------------------------------------------------
_BAD_TEXT = re.compile(r"[\r\n\x00]")
_WORD = re.compile(r"[^\s\x00-\x1f\x7f!@:,*?]{1,200}\Z")
_HOST = re.compile(r"[^\s\x00-\x1f\x7f!@,*?]{1,200}\Z")
_TAG_KEY = re.compile(r"\+[A-Za-z0-9./\-]{1,64}\Z")
_UID = re.compile(r"[0-9a-f]{16}\.[0-9a-z]{1,16}\.[0-9a-z]{1,12}\Z")
_DID = re.compile(r"did:[a-z0-9]+:[A-Za-z0-9._:%\-]{1,240}\Z")


def get(msg: dict[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    """``msg[key]`` checked against ``kind`` (``None`` allowed when ``optional``)."""
    value = msg.get(key)
    if value is None and optional:
        return None
    if kind is int and isinstance(value, bool):
        raise ProtocolError(f"{key}: expected int")
    if not isinstance(value, kind):
        raise ProtocolError(f"{key}: expected {kind.__name__}")
    return value


def text(msg: dict[str, Any], key: str, max_bytes: int, optional: bool = False, empty: bool = True) -> Any:
    """A free-text field: no CR/LF/NUL, at most ``max_bytes`` UTF-8 bytes."""
    value = get(msg, key, str, optional)
    if value is None:
        return None
    if _BAD_TEXT.search(value) or len(value.encode("utf-8")) > max_bytes or (not empty and not value):
        raise ProtocolError(f"{key}: invalid text")
    return value


def word(msg: dict[str, Any], key: str, optional: bool = False) -> Any:
    """A user name: one IRC word with no ``!``, ``@``, ``:`` or glob characters."""
    value = get(msg, key, str, optional)
    if value is not None and not _WORD.match(value):
        raise ProtocolError(f"{key}: invalid word")
    return value


def host(msg: dict[str, Any], key: str) -> str:
    """A (cloaked) host name: one word, may contain ``:`` and ``/``."""
    value = get(msg, key, str)
    if not _HOST.match(value) or value.startswith(":"):
        raise ProtocolError(f"{key}: invalid host")
    return str(value)


def uid(msg: dict[str, Any], key: str, optional: bool = False) -> Any:
    """A user id ``<origin[:16]>.<epoch36>.<n36>``."""
    value = get(msg, key, str, optional)
    if value is not None and not _UID.match(value):
        raise ProtocolError(f"{key}: invalid uid")
    return value


def is_word(value: Any) -> bool:
    """Whether ``value`` is one IRC word without ``!``, ``@``, ``:`` or glob characters (e.g. a handle)."""
    return isinstance(value, str) and _WORD.match(value) is not None


def did(msg: dict[str, Any], key: str, optional: bool = True) -> Any:
    """A DID (``did:method:...``)."""
    value = get(msg, key, str, optional)
    if value is not None and not _DID.match(value):
        raise ProtocolError(f"{key}: invalid DID")
    return value


def is_did(value: Any) -> bool:
    """Whether ``value`` looks like a DID."""
    return isinstance(value, str) and _DID.match(value) is not None


def tags(msg: dict[str, Any], key: str) -> dict[str, str]:
    """Client-only tags (``+name``) relayed with a message: at most 16, bounded sizes, no controls."""
    value = msg.get(key) or {}
    if not isinstance(value, dict) or len(value) > 16:
        raise ProtocolError(f"{key}: invalid tags")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _TAG_KEY.match(k) or not isinstance(v, str) or len(v) > 4096 \
                or _BAD_TEXT.search(v):
            raise ProtocolError(f"{key}: invalid tag")
        out[k] = v
    return out


def uid_origin_prefix(user_id: str) -> str:
    """The origin prefix of a uid (first 16 hex characters of the origin's endpoint id)."""
    return user_id[:16]
