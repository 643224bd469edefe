"""Persistence of the channel CRDTs (table ``channel_crdt``; docs/federation.md, "Restarts"), and the pruning
of proofs kept for memberships that ended without a hook."""
from __future__ import annotations

import hashlib
from typing import Any

from twisted.logger import Logger

from freeq.irc.names import fold, is_channel
from freeq.s2s.burst import BurstExchange
from freeq.s2s.protocol import ProtocolError
from freeq.s2s.state import ChannelCRDT

log = Logger()


class CrdtPersistence(BurstExchange):
    """Loads and saves the channel states; forgets the proofs of ended memberships."""

    def load_state(self, store: Any) -> None:
        """Start-up: use the channel states saved in ``store`` instead of re-adopting the channels.

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
        loaded: dict[str, ChannelCRDT] = {}
        for folded, text in rows.items():
            try:
                if not isinstance(folded, str) or not is_channel(folded) or fold(folded) != folded:
                    raise ProtocolError("bad channel name")
                loaded[folded] = ChannelCRDT.deserialize(text, self.hlc)
            except ProtocolError as e:
                log.warn("S2S saved state of channel {channel} is unusable ({error}); adopting the persisted "
                         "channel instead", channel=str(folded)[:64], error=str(e))
                self._saved[folded] = b""  # replaced (or deleted) by the next persist()
                self._dirty.add(folded)
                continue
            self._saved[folded] = hashlib.sha256(text.encode("utf-8")).digest()
        for crdt in loaded.values():
            self.hlc.observe(crdt.max_stamp())
        recaptured = 0
        for folded, crdt in loaded.items():
            self.crdts[folded] = crdt
            chan = self.server.channels.get(folded)
            if chan is not None and crdt.capture(chan, self.hlc):
                recaptured += 1
                self._dirty.add(folded)
        for folded in self._dirty:  # corrupt rows of persisted channels: adopt now (and save)
            chan = self.server.channels.get(folded)
            if chan is not None and folded not in self.crdts:
                self.crdts[folded] = ChannelCRDT.adopt(chan)
        log.info("S2S restored the saved state of {n} channel(s) ({changed} changed since, re-stamped)",
                 n=len(loaded), changed=recaptured)

    def persist(self) -> None:
        """Periodic (once per store flush interval): queue the states of changed channels for the store.

        Channels are marked dirty when their state may have changed; only states that really differ
        from what the store holds are written, and the state of a forgotten channel is deleted.
        """
        dirty, self._dirty = self._dirty, set()
        store = self.store
        if store is None:
            return
        for folded in dirty:
            try:
                crdt = self.crdts.get(folded)
                if crdt is None:
                    if self._saved.pop(folded, None) is not None:
                        store.delete_channel_crdt(folded)
                    continue
                text = crdt.serialize()
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                if self._saved.get(folded) != digest:
                    store.save_channel_crdt(folded, text)
                    self._saved[folded] = digest
            except Exception:
                log.failure("S2S state of channel {channel} not saved", channel=folded)

    def _prune_joins(self) -> None:
        """Forget the joins of memberships that ended by a path without a hook (kept: users split away)."""
        channels = self.server.channels
        for uid, folded in list(self.member_joins):
            user = self.user_by_uid(uid)
            chan = channels.get(folded)
            if user is None or chan is None or user not in chan.members:
                del self.member_joins[(uid, folded)]
        for uid, folded in list(self.accepted_joins):
            user = self.remote.get(uid)
            if user is not None and ((chan := channels.get(folded)) is None or user not in chan.members):
                del self.accepted_joins[(uid, folded)]
        for key in [k for k in self.member_invites if k not in self.member_joins]:
            del self.member_invites[key]
        for uid, folded in list(self.member_status):  # statuses of memberships that ended without a hook
            user = self.user_by_uid(uid)
            chan = channels.get(folded)
            if user is None or chan is None or not chan.members.get(user, 0):
                del self.member_status[(uid, folded)]
        for uid, folded in list(self.invite_events):  # invites whose target or channel is gone
            if folded not in channels or self.user_by_uid(uid) is None:
                del self.invite_events[(uid, folded)]
