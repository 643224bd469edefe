"""Persistence of the channel CRDTs (table ``channel_crdt``; docs/federation.md, "Restarts").

:class:`ChannelStates` is a part of the federation by composition: it is told which channels' states may have
changed, remembers a digest of what the store holds for each, and writes only real changes. It works on the
federation's CRDT map, hybrid clock and the server's channels, given to it explicitly.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

from twisted.logger import Logger

from freeq.irc.names import fold, is_channel
from freeq.s2s.protocol import ProtocolError
from freeq.s2s.state import ChannelCRDT, HybridClock
from freeq.state.channel import Channel

log = Logger()


class ChannelStates:
    """The saved channel states: the store (``None``: nothing is saved), the channels whose state may have
    changed since the last write (``dirty``) and a digest of what the store holds for each channel (``saved``;
    empty bytes: a row to replace or delete)."""

    def __init__(self) -> None:
        self.store: Any = None
        self.dirty: set[str] = set()
        self.saved: dict[str, bytes] = {}

    def load(self, store: Any, crdts: dict[str, ChannelCRDT], hlc: HybridClock,
             channels: Mapping[str, Channel]) -> None:
        """Start-up: put the channel states saved in ``store`` into ``crdts`` instead of re-adopting the channels.

        Each row is validated like peer input; a corrupt one is logged and ignored (that channel is
        adopted from its persisted record, as without saved state). A persisted channel that differs
        from its saved state (changed while federation was off, or a crash lost the last state write)
        gets the differences captured with fresh stamps, so they still reach the peers. The clock is
        moved past every loaded stamp first, so it never goes backwards across a restart.
        """
        self.store = store
        if store is None:
            return
        try:
            rows = store.load_channel_crdts()
        except Exception:
            log.failure("S2S saved channel states could not be read; channels are adopted from their records")
            return
        loaded = self._usable(rows, hlc)
        for crdt in loaded.values():
            hlc.observe(crdt.max_stamp())
        recaptured = 0
        for folded, crdt in loaded.items():
            crdts[folded] = crdt
            chan = channels.get(folded)
            if chan is not None and crdt.capture(chan, hlc):
                recaptured += 1
                self.dirty.add(folded)
        for folded in self.dirty:  # corrupt rows of persisted channels: adopt now (and save)
            chan = channels.get(folded)
            if chan is not None and folded not in crdts:
                crdts[folded] = ChannelCRDT.adopt(chan)
        log.info("S2S restored the saved state of {n} channel(s) ({changed} changed since, re-stamped)",
                 n=len(loaded), changed=recaptured)

    def _usable(self, rows: Mapping[Any, Any], hlc: HybridClock) -> dict[str, ChannelCRDT]:
        """The saved rows (folded name -> serialized state) that are sound; the others are logged, and marked
        to be replaced (or deleted) by the next :meth:`persist`."""
        loaded: dict[str, ChannelCRDT] = {}
        for folded, text in rows.items():
            try:
                if not isinstance(folded, str) or not is_channel(folded) or fold(folded) != folded:
                    raise ProtocolError("bad channel name")
                loaded[folded] = ChannelCRDT.deserialize(text, hlc)
            except ProtocolError as e:
                log.warn("S2S saved state of channel {channel} is unusable ({error}); adopting the persisted "
                         "channel instead", channel=str(folded)[:64], error=str(e))
                self.saved[folded] = b""
                self.dirty.add(folded)
                continue
            self.saved[folded] = hashlib.sha256(text.encode("utf-8")).digest()
        return loaded

    def persist(self, crdts: Mapping[str, ChannelCRDT]) -> None:
        """Queue the states of changed channels (of ``crdts``) for the store.

        Channels are marked dirty when their state may have changed; only states that really differ
        from what the store holds are written, and the state of a forgotten channel is deleted.
        """
        dirty, self.dirty = self.dirty, set()
        store = self.store
        if store is None:
            return
        for folded in dirty:
            try:
                crdt = crdts.get(folded)
                if crdt is None:
                    if self.saved.pop(folded, None) is not None:
                        store.delete_channel_crdt(folded)
                    continue
                text = crdt.serialize()
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                if self.saved.get(folded) != digest:
                    store.save_channel_crdt(folded, text)
                    self.saved[folded] = digest
            except Exception:
                log.failure("S2S state of channel {channel} not saved", channel=folded)
