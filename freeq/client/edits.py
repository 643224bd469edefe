"""Edits, deletes, reactions and replies for :class:`freeq.client.protocol.FreeqClient`.

The wire forms freeq (and the freeq JavaScript SDK) use: an edit is a ``PRIVMSG`` carrying
``+draft/edit=<msgid>`` (signed like any message), a delete a ``TAGMSG`` carrying ``+draft/delete=<msgid>``
or, with ``draft/message-redaction``, ``REDACT <target> <msgid> [:reason]``; a reaction a ``TAGMSG``
with ``+draft/react``/``+react`` and ``+draft/reply``/``+reply``, taken back with ``+freeq.at/unreact``;
a reply a ``PRIVMSG`` with the reply tags. Refusals come back as ``FAIL`` lines (on ``on_raw``).
"""
from __future__ import annotations

from typing import Optional

from freeq.client.commands import ClientCommands
from freeq.signing import SIG_TAG


class EditCommands(ClientCommands):
    """Edit, delete, react to and reply to messages by msgid."""

    def edit(self, target: str, msgid: str, text: str) -> None:
        """Replace the text of our message ``msgid`` in ``target`` with ``text`` (one line)."""
        self._tagged_privmsg(target, text, {"+draft/edit": msgid})

    def reply(self, target: str, msgid: str, text: str) -> None:
        """Say ``text`` (one line) in ``target`` as a reply to ``msgid``."""
        self._tagged_privmsg(target, text, {"+draft/reply": msgid, "+reply": msgid})

    def delete(self, target: str, msgid: str, reason: Optional[str] = None) -> None:
        """Delete message ``msgid`` in ``target`` (ours, or anyone's as a channel operator): ``REDACT`` when
        the server granted ``draft/message-redaction``, else ``TAGMSG +draft/delete``."""
        if "draft/message-redaction" in self.caps:
            if reason:
                self.send("REDACT", target, msgid, reason)
            else:
                self.send("REDACT", target, msgid)
            return
        self.send("TAGMSG", target, tags={"+draft/delete": msgid})

    def react(self, target: str, msgid: str, emoji: str) -> None:
        """React with ``emoji`` to message ``msgid`` in ``target``."""
        self.send("TAGMSG", target, tags={"+draft/react": emoji, "+react": emoji, "+draft/reply": msgid,
                                          "+reply": msgid})

    def unreact(self, target: str, msgid: str, emoji: str) -> None:
        """Take back our reaction ``emoji`` to message ``msgid`` in ``target``."""
        self.send("TAGMSG", target, tags={"+freeq.at/unreact": emoji, "+draft/reply": msgid, "+reply": msgid})

    def _tagged_privmsg(self, target: str, text: str, tags: dict[str, str]) -> None:
        if "\n" in text or "\r" in text:
            raise ValueError("an edit or reply is one line")
        sig = self.sign(target, text)
        if sig is not None:
            tags = dict(tags, **{SIG_TAG: sig})
        self.send("PRIVMSG", target, text, tags=tags)
