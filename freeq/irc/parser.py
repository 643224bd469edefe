"""IRC line parsing and serialisation (IRCv3 message-tags aware).

Pure functions over ``str``; the protocol layer decodes bytes (lossily, as
UTF-8) before calling :func:`parse`, and encodes what :func:`build` returns.
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "Message",
    "parse",
    "build",
    "escape_tag_value",
    "unescape_tag_value",
    "format_tags",
]

_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_ESCAPE_TABLE = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})


class Message:
    """One parsed IRC line: tags, source, command (upper-cased) and parameters."""

    __slots__ = ("tags", "source", "command", "params")

    def __init__(
        self,
        command: str,
        params: list[str],
        tags: Optional[dict[str, str]] = None,
        source: Optional[str] = None,
    ) -> None:
        self.command = command
        self.params = params
        self.tags = tags
        self.source = source

    def __repr__(self) -> str:
        return f"Message({self.command!r}, {self.params!r}, tags={self.tags!r}, source={self.source!r})"


def unescape_tag_value(value: str) -> str:
    """Undo IRCv3 tag-value escaping; an unknown escape keeps its character, a lone trailing ``\\`` is dropped."""
    if "\\" not in value:
        return value
    out = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\":
            i += 1
            if i < n:
                nxt = value[i]
                out.append(_UNESCAPES.get(nxt, nxt))
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def escape_tag_value(value: str) -> str:
    """Escape a tag value for the wire (``;``, space, ``\\``, CR, LF)."""
    return value.translate(_ESCAPE_TABLE)


def _parse_tags(raw: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not key:
            continue
        tags[key] = unescape_tag_value(value) if sep else ""
    return tags


def parse(line: str) -> Optional[Message]:
    """Parse one line (without CR/LF). Returns ``None`` for lines with no command.

    Parameters are separated by one or more spaces; a parameter starting with
    ``:`` is the trailing one and keeps its spaces.
    """
    tags: Optional[dict[str, str]] = None
    source: Optional[str] = None
    pos = 0
    if line.startswith("@"):
        sp = line.find(" ")
        if sp < 0:
            return None
        tags = _parse_tags(line[1:sp])
        pos = sp + 1
        while pos < len(line) and line[pos] == " ":
            pos += 1
    if line.startswith(":", pos):
        sp = line.find(" ", pos)
        if sp < 0:
            return None
        source = line[pos + 1 : sp]
        pos = sp + 1
    rest = line[pos:].lstrip(" ")
    if not rest:
        return None
    trailing: Optional[str] = None
    idx = rest.find(" :")
    if idx >= 0:
        trailing = rest[idx + 2 :]
        rest = rest[:idx]
    elif rest.startswith(":"):
        return None
    words = rest.split()
    if not words:
        return None
    command = words[0].upper()
    params = words[1:]
    if trailing is not None:
        params.append(trailing)
    return Message(command, params, tags, source)


def format_tags(tags: dict[str, str]) -> str:
    """Serialise a tag dict as ``k=v;k2`` (no leading ``@``)."""
    return ";".join(
        (k + "=" + escape_tag_value(v)) if v else k for k, v in tags.items()
    )


class UnsafeLineError(ValueError):
    """A line to be built holds CR, LF or NUL (or a middle parameter with a space or a leading ':'):
    it would be read as more than one line, so it is never written."""


def build(
    source: Optional[str],
    command: str,
    *params: str,
    tags: Optional[dict[str, str]] = None,
) -> bytes:
    """Serialise one line, CRLF-terminated, as UTF-8 bytes.

    The last parameter gets a ``:`` when it is empty, contains a space or
    starts with ``:`` (and is never split). Earlier parameters must not
    contain spaces; callers guarantee that.
    """
    parts = []
    if tags:
        parts.append("@" + format_tags(tags))
    if source:
        parts.append(":" + source)
    parts.append(command)
    if params:
        if len(params) > 1:
            # The middle parameters joined at once: a space inside one shows as a space too many, a
            # leading ':' at the start or after a separator (C-speed passes; no Python loop per parameter).
            middle = " ".join(params[:-1])
            if middle.count(" ") != len(params) - 2 or middle[:1] == ":" or " :" in middle:
                raise UnsafeLineError("refused to build a line whose middle parameter has a space or leading ':'")
            parts.append(middle)
        last = params[-1]
        if not last or " " in last or last[0] == ":":
            last = ":" + last
        parts.append(last)
    line = " ".join(parts)
    if "\r" in line or "\n" in line or "\0" in line:
        raise UnsafeLineError("refused to build a line holding CR, LF or NUL")
    return (line + "\r\n").encode("utf-8", "replace")


def build_text(source: Optional[str], command: str, *params: str, tags: Optional[dict[str, str]] = None) -> bytes:
    """Like :func:`build`, but the last parameter is free text and always gets a ``:``."""
    head = []
    if tags:
        head.append("@" + format_tags(tags))
    if source:
        head.append(":" + source)
    head.append(command)
    head.extend(params[:-1])
    line = " ".join(head) + " :" + params[-1]
    if "\r" in line or "\n" in line or "\0" in line:
        raise UnsafeLineError("refused to build a line holding CR, LF or NUL")
    return (line + "\r\n").encode("utf-8", "replace")
