"""Named operator accounts (issue #13 item 3): ``[[oper]]`` blocks of the config file.

Contract shared by the config loader (which calls :func:`parse_oper_blocks` on the file's ``oper`` array of
tables) and the OPER command (which checks an account with :meth:`OperAccount.matches_host` and a password or
DID). Pure: no I/O beyond reading a ``password_file`` while parsing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

#: The privilege classes an oper block may grant. ``override``: act on channels without channel status.
PRIVILEGES = ("kill", "ban", "override", "rehash", "link", "wallops")


@dataclasses.dataclass(frozen=True)
class OperAccount:
    """One named operator: a scrypt password hash and/or a DID, the host masks it may OPER from, and what it may do."""

    name: str
    password_hash: Optional[str] = None  # "scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>" (freeq-admin hash-password)
    did: Optional[str] = None
    hosts: tuple[str, ...] = ("*",)  # nick!user@host / user@host / IP / CIDR masks; "*" any
    privileges: frozenset[str] = frozenset(PRIVILEGES)


def parse_oper_blocks(blocks: Any) -> tuple[OperAccount, ...]:
    """Validate the config file's ``[[oper]]`` tables into accounts; raise ``freeq.config.ConfigError`` (one line)."""
    return ()  # filled in by the oper-accounts work
