"""Reloading federation settings over real iroh links (issue #13 item 1): what ``Federation.reconfigure``
does to live links — a peer dropped from the allowlist is cut (and its users leave), a changed trust applies to
the open link at once, and listing the peer again lets the link come back."""
from __future__ import annotations

import dataclasses

from twisted.trial import unittest

from tests.s2s_support import settle, start_pair, wait_for
from tests.support import asynctest


class FederationReloadTests(unittest.TestCase):
    """The allowlist and the peer trust follow a reload on links already open."""

    @asynctest
    async def test_allowlist_and_trust_follow_a_reload(self) -> None:
        """B reloads without A in its allowlist: the link closes on both sides and alice leaves bob's view; B
        reloads with A back, trusted relay: A dials again, the link is up with trust relay, alice is back; a reload
        making A full again changes the open link's trust without cutting it."""
        a, b, alice, bob = await start_pair(self)
        old = b.server.config
        cut = dataclasses.replace(old, s2s_allowed_peers=())
        b.server.apply_config(cut)
        b.federation.reconfigure(cut)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="link closed by the reload")
        await bob.expect(r":alice!\S+ QUIT")
        self.assertFalse(b.knows("alice"))
        back = dataclasses.replace(old, s2s_peer_trust=((a.id, "relay"),))
        b.server.apply_config(back)
        b.federation.reconfigure(back)
        await wait_for(lambda: a.linked(b) and b.linked(a), timeout=20.0, what="link back after the reload")
        await settle(a, b)
        link = next(l for l in b.federation.links.values() if l.peer_id == a.id and l.state == "open")
        self.assertEqual(link.trust, "relay")
        await wait_for(lambda: b.knows("alice"), what="alice known on B again")
        full = dataclasses.replace(back, s2s_peer_trust=())
        b.server.apply_config(full)
        b.federation.reconfigure(full)
        self.assertEqual(link.trust, "full")  # the open link, at once
        self.assertTrue(b.linked(a))
