"""ChallengeVerifier: crypto, pds-session and pds-oauth against a loopback PLC directory and PDS."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.auth.did import DIDResolver
from freeq.auth.http import SafeHTTPClient
from freeq.auth.multikey import ED25519, KINDS, P256, SECP256K1, did_key, generate_private_key
from freeq.auth.verify import ChallengeVerifier, VerifyResult
from tests.atproto_servers import (
    Identity,
    b64url,
    loopback_http,
    make_did_doc,
    make_dpop_proof,
    random_plc_did,
    start_identity,
    start_plc,
)
from tests.support import asynctest

reactor: Any = _reactor


def make_challenge(session_id: str = "127.0.0.1:50000") -> tuple[bytes, str]:
    """Challenge bytes in the server's format, and their nonce."""
    nonce = b64url(os.urandom(32))
    data = json.dumps({"session_id": session_id, "nonce": nonce, "timestamp": int(time.time())},
                      separators=(",", ":")).encode()
    return data, nonce


def verifier_for(ident: Identity, timeout: float = 5.0, clock: Any = None) -> ChallengeVerifier:
    """A verifier resolving through ``ident``'s PLC directory, allowed onto loopback."""
    resolver = DIDResolver(loopback_http(), clock or reactor, plc_directory_url=ident.plc.url)
    return ChallengeVerifier(resolver, loopback_http(timeout=timeout))


def pds_response(ident: Identity, nonce: Optional[str], method: str = "pds-session", **extra: Any) -> dict[str, Any]:
    """A pds-* SASL response for ``ident``."""
    response: dict[str, Any] = {"did": ident.did, "method": method, "signature": ident.token,
                                "pds_url": ident.pds.url, "challenge_nonce": nonce}
    response.update(extra)
    return response


class CryptoMethodTests(unittest.TestCase):
    """The crypto method: a signature over the exact challenge bytes."""

    @asynctest
    async def test_did_key_each_kind(self) -> None:
        """did:key identities of every key type verify without any network access."""
        resolver = DIDResolver(SafeHTTPClient(reactor), reactor, plc_directory_url="http://192.0.2.1")
        verifier = ChallengeVerifier(resolver, SafeHTTPClient(reactor))
        for kind in KINDS:
            key = generate_private_key(kind)
            challenge, nonce = make_challenge()
            did = did_key(key.public_key())
            result = await verifier.verify(challenge, nonce, {"did": did, "signature": b64url(key.sign(challenge))})
            self.assertEqual(result, VerifyResult(did=did), kind)
            self.assertTrue(result.ok)

    @asynctest
    async def test_did_plc_each_kind(self) -> None:
        """A did:plc whose document (served by the PLC directory) holds the key verifies; handle from the doc."""
        plc = await start_plc(self)
        for kind in KINDS:
            ident = await start_identity(self, kind, handle=f"{kind}.example.com", plc=plc)
            challenge, nonce = make_challenge()
            response = {"did": ident.did, "method": "crypto", "signature": b64url(ident.key.sign(challenge)),
                        "pds_url": "", "challenge_nonce": nonce}  # what the JS SDK sends
            result = await verifier_for(ident).verify(challenge, nonce, response)
            self.assertEqual(result, VerifyResult(did=ident.did, handle=f"{kind}.example.com"))

    @asynctest
    async def test_wrong_signature(self) -> None:
        """A signature over other bytes (e.g. a re-serialised challenge) fails."""
        ident = await start_identity(self, ED25519)
        challenge, nonce = make_challenge()
        reserialised = json.dumps(json.loads(challenge)).encode()
        response = {"did": ident.did, "signature": b64url(ident.key.sign(reserialised))}
        result = await verifier_for(ident).verify(challenge, nonce, response)
        self.assertEqual(result, VerifyResult(error="signature verification failed"))
        self.assertFalse(result.ok)

    @asynctest
    async def test_signature_by_another_key(self) -> None:
        """A signature by a key the document does not list fails; the cached document is refetched
        at most once per refresh interval."""
        ident = await start_identity(self, SECP256K1)
        clock = Clock()
        verifier = verifier_for(ident, clock=clock)
        intruder = generate_private_key(SECP256K1)

        async def attempt(fetches: int) -> None:
            challenge, nonce = make_challenge()
            result = await verifier.verify(challenge, nonce, {"did": ident.did, "signature": b64url(intruder.sign(challenge))})
            self.assertEqual(result, VerifyResult(error="signature verification failed"))
            self.assertEqual(ident.plc.fetches(ident.did), fetches)

        await attempt(fetches=1)
        await attempt(fetches=1)
        clock.advance(31)
        await attempt(fetches=2)
        await attempt(fetches=2)

    @asynctest
    async def test_unknown_did(self) -> None:
        """A DID the directory does not know fails with the resolution reason."""
        ident = await start_identity(self)
        challenge, nonce = make_challenge()
        response = {"did": random_plc_did(), "signature": b64url(ident.key.sign(challenge))}
        result = await verifier_for(ident).verify(challenge, nonce, response)
        self.assertEqual(result, VerifyResult(error="DID resolution failed: DID not found"))

    @asynctest
    async def test_rotated_key_is_picked_up_despite_the_cache(self) -> None:
        """After a key rotation a cached document is refetched once, so the new key verifies."""
        ident = await start_identity(self, P256)
        clock = Clock()
        verifier = verifier_for(ident, clock=clock)
        challenge, nonce = make_challenge()
        ok = await verifier.verify(challenge, nonce, {"did": ident.did, "signature": b64url(ident.key.sign(challenge))})
        self.assertTrue(ok.ok)
        clock.advance(31)
        new_key = generate_private_key(P256)
        ident.plc.add(make_did_doc(ident.did, [new_key.public_key()], handle=ident.handle, pds_url=ident.pds.url))
        challenge, nonce = make_challenge()
        result = await verifier.verify(challenge, nonce, {"did": ident.did, "signature": b64url(new_key.sign(challenge))})
        self.assertTrue(result.ok)
        self.assertEqual(ident.plc.fetches(ident.did), 2)

    @asynctest
    async def test_document_without_usable_keys(self) -> None:
        """A document listing no usable key fails with a clear reason."""
        ident = await start_identity(self)
        ident.plc.add(make_did_doc(ident.did, [], handle=ident.handle))
        challenge, nonce = make_challenge()
        result = await verifier_for(ident).verify(challenge, nonce, {"did": ident.did, "signature": b64url(ident.key.sign(challenge))})
        self.assertEqual(result.error, "DID document has no usable verification key")

    @asynctest
    async def test_malformed_responses(self) -> None:
        """Bad DIDs, methods, signatures and field types fail without network access."""
        ident = await start_identity(self)
        challenge, nonce = make_challenge()
        good = b64url(ident.key.sign(challenge))
        cases: list[tuple[Any, str]] = [
            ({"did": "alice", "signature": good}, "invalid DID"),
            ({"signature": good}, "invalid DID"),
            ({"did": ident.did, "signature": good, "method": "web-token"}, "unsupported verification method"),
            ({"did": ident.did, "signature": good, "method": 7}, "unsupported verification method"),
            ({"did": ident.did}, "missing signature"),
            ({"did": ident.did, "signature": 12}, "missing signature"),
            ({"did": ident.did, "signature": good + "="}, "signature is not base64url"),
            ({"did": ident.did, "signature": good.replace("-", "+").replace("_", "/") + "+"},
             "signature is not base64url"),
            ({"did": ident.did, "signature": "x" * 9000}, "signature too long"),
            ({"did": ident.did, "signature": "t", "method": "pds-session", "challenge_nonce": 5},
             "bad response: challenge_nonce must be a string"),
        ]
        verifier = verifier_for(ident)
        for response, error in cases:
            self.assertEqual((await verifier.verify(challenge, nonce, response)).error, error, response)
        self.assertEqual((await verifier.verify(challenge, nonce, ["not", "a", "dict"])).error,  # type: ignore
                         "bad response")
        self.assertEqual(ident.plc.requests, [])


class PDSSessionTests(unittest.TestCase):
    """The pds-session method: a PDS access token checked with getSession."""

    @asynctest
    async def test_good_session(self) -> None:
        """A valid token for the DID's own PDS verifies, with the handle getSession reports."""
        ident = await start_identity(self, handle="doc-handle.test")
        ident.pds.handle = "Session-Handle.test"
        challenge, nonce = make_challenge()
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce, pds_url=ident.pds.url + "/"))
        self.assertEqual(result, VerifyResult(did=ident.did, handle="session-handle.test"))
        self.assertEqual(ident.pds.requests[0].path, "/xrpc/com.atproto.server.getSession")
        self.assertEqual(ident.pds.requests[0].headers["authorization"], f"Bearer {ident.token}")

    @asynctest
    async def test_session_for_another_did(self) -> None:
        """A getSession answer naming another DID fails."""
        ident = await start_identity(self)
        ident.pds.session_did = random_plc_did()
        challenge, nonce = make_challenge()
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce))
        self.assertEqual(result, VerifyResult(error="PDS session belongs to a different DID"))

    @asynctest
    async def test_pds_must_match_the_document(self) -> None:
        """A pds_url other than the document's PDS fails and the claimed PDS is never contacted."""
        ident = await start_identity(self)
        rogue = await start_identity(self, plc=ident.plc)
        challenge, nonce = make_challenge()
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce, pds_url=rogue.pds.url))
        self.assertEqual(result.error, "PDS does not match the DID document")
        self.assertEqual(rogue.pds.requests, [])
        self.assertEqual(ident.pds.requests, [])

    @asynctest
    async def test_document_without_pds(self) -> None:
        """A DID whose document lists no PDS cannot use pds-session."""
        ident = await start_identity(self)
        ident.plc.add(make_did_doc(ident.did, [ident.key.public_key()]))
        challenge, nonce = make_challenge()
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce))
        self.assertEqual(result.error, "DID document lists no PDS")

    @asynctest
    async def test_nonce_missing_or_mismatched(self) -> None:
        """challenge_nonce is required and must equal the challenge's nonce; nothing is fetched otherwise."""
        ident = await start_identity(self)
        challenge, nonce = make_challenge()
        verifier = verifier_for(ident)
        missing = await verifier.verify(challenge, nonce, pds_response(ident, None))
        self.assertEqual(missing.error, "PDS verification requires challenge_nonce")
        wrong = await verifier.verify(challenge, nonce, pds_response(ident, b64url(os.urandom(32))))
        self.assertEqual(wrong.error, "challenge nonce mismatch")
        no_url = await verifier.verify(challenge, nonce, pds_response(ident, nonce, pds_url=""))
        self.assertEqual(no_url.error, "PDS verification requires pds_url")
        self.assertEqual(ident.plc.requests, [])
        self.assertEqual(ident.pds.requests, [])

    @asynctest
    async def test_rejected_token(self) -> None:
        """A 401 from the PDS fails; the token never appears in the error or the logs."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        ident = await start_identity(self)
        challenge, nonce = make_challenge()
        bad_token = "eyJ.secret-" + b64url(os.urandom(24))
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce, signature=bad_token))
        self.assertEqual(result, VerifyResult(error="PDS rejected the session (HTTP 401)"))
        texts = [formatEvent(e) + repr(e) for e in observer]
        self.assertTrue(any("failed for " + ident.did in t for t in texts))
        self.assertFalse([t for t in texts if bad_token in t or ident.token in t])

    @asynctest
    async def test_malformed_token_not_sent(self) -> None:
        """A token with spaces or control characters is refused before any request."""
        ident = await start_identity(self)
        challenge, nonce = make_challenge()
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce, signature="a b\r\nX: y"))
        self.assertEqual(result.error, "malformed access token")
        self.assertEqual(ident.pds.requests, [])

    @asynctest
    async def test_unsafe_handle_dropped(self) -> None:
        """A getSession handle that is not a valid handle is not passed on (the DID still verifies)."""
        ident = await start_identity(self)
        ident.pds.handle = "evil\r\nQUIT :x"
        challenge, nonce = make_challenge()
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce))
        self.assertEqual(result, VerifyResult(did=ident.did, handle=None))

    @asynctest
    async def test_unreachable_pds(self) -> None:
        """A PDS that does not answer in time fails with a timeout reason."""
        ident = await start_identity(self)
        ident.pds.delay = 3.0
        challenge, nonce = make_challenge()
        result = await verifier_for(ident, timeout=0.2).verify(challenge, nonce, pds_response(ident, nonce))
        self.assertEqual(result.error, "PDS request failed: timed out")

    @asynctest
    async def test_private_pds_refused_by_default(self) -> None:
        """Without allow_private the verifier refuses a PDS on loopback."""
        ident = await start_identity(self)
        resolver = DIDResolver(loopback_http(), reactor, plc_directory_url=ident.plc.url)
        verifier = ChallengeVerifier(resolver, SafeHTTPClient(reactor))
        challenge, nonce = make_challenge()
        result = await verifier.verify(challenge, nonce, pds_response(ident, nonce))
        self.assertEqual(result.error, "PDS address refused: private or local address refused")
        self.assertEqual(ident.pds.requests, [])


class PDSOAuthTests(unittest.TestCase):
    """The pds-oauth method: a DPoP-bound token and a client-made proof forwarded to the PDS."""

    async def _setup(self) -> tuple[Identity, Any]:
        ident = await start_identity(self)
        return ident, generate_private_key(P256)

    @asynctest
    async def test_good_session(self) -> None:
        """A valid DPoP token and proof verify; the proof reaches the PDS verbatim."""
        ident, dpop_key = await self._setup()
        challenge, nonce = make_challenge()
        proof = make_dpop_proof(dpop_key, ident.pds.session_url, ident.token)
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=proof))
        self.assertEqual(result, VerifyResult(did=ident.did, handle=ident.handle))
        seen = ident.pds.requests[0].headers
        self.assertEqual(seen["authorization"], f"DPoP {ident.token}")
        self.assertEqual(seen["dpop"], proof)

    @asynctest
    async def test_nonce_required_then_accepted(self) -> None:
        """use_dpop_nonce yields dpop_nonce; a new proof carrying that nonce then verifies."""
        ident, dpop_key = await self._setup()
        ident.pds.require_dpop_nonce = True
        verifier = verifier_for(ident)
        challenge, nonce = make_challenge()
        proof = make_dpop_proof(dpop_key, ident.pds.session_url, ident.token)
        first = await verifier.verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=proof))
        self.assertEqual(first, VerifyResult(error="dpop nonce required", dpop_nonce=ident.pds.dpop_nonce))
        self.assertFalse(first.ok)
        challenge, nonce = make_challenge()
        proof = make_dpop_proof(dpop_key, ident.pds.session_url, ident.token, nonce=first.dpop_nonce)
        second = await verifier.verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=proof))
        self.assertEqual(second, VerifyResult(did=ident.did, handle=ident.handle))

    @asynctest
    async def test_rotated_nonce_is_reported_again(self) -> None:
        """After the PDS rotates its nonce, a proof with the old one gets the new nonce back."""
        ident, dpop_key = await self._setup()
        ident.pds.require_dpop_nonce = True
        old = ident.pds.dpop_nonce
        new = ident.pds.rotate_nonce()
        challenge, nonce = make_challenge()
        proof = make_dpop_proof(dpop_key, ident.pds.session_url, ident.token, nonce=old)
        result = await verifier_for(ident).verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=proof))
        self.assertEqual(result.dpop_nonce, new)

    @asynctest
    async def test_other_errors(self) -> None:
        """A bad proof, a wrong token or a missing proof fail without a dpop_nonce."""
        ident, dpop_key = await self._setup()
        verifier = verifier_for(ident)
        challenge, nonce = make_challenge()
        wrong_htu = make_dpop_proof(dpop_key, "https://elsewhere.example/xrpc/x", ident.token)
        result = await verifier.verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=wrong_htu))
        self.assertEqual(result, VerifyResult(error="PDS rejected the session (HTTP 401)"))
        other_token = "other-" + b64url(os.urandom(16))
        proof = make_dpop_proof(dpop_key, ident.pds.session_url, other_token)
        result = await verifier.verify(challenge, nonce,
                                       pds_response(ident, nonce, "pds-oauth", signature=other_token, dpop_proof=proof))
        self.assertEqual(result, VerifyResult(error="PDS rejected the session (HTTP 401)"))
        result = await verifier.verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth"))
        self.assertEqual(result, VerifyResult(error="pds-oauth requires dpop_proof"))
        ident.pds.status = 500
        proof = make_dpop_proof(dpop_key, ident.pds.session_url, ident.token)
        result = await verifier.verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=proof))
        self.assertEqual(result, VerifyResult(error="PDS rejected the session (HTTP 500)"))

    @asynctest
    async def test_nonce_demand_needs_header_and_sane_value(self) -> None:
        """use_dpop_nonce without a DPoP-Nonce header is a plain failure; an unsafe nonce is refused."""
        ident, dpop_key = await self._setup()
        ident.pds.require_dpop_nonce = True
        verifier = verifier_for(ident)
        challenge, nonce = make_challenge()
        proof = make_dpop_proof(dpop_key, ident.pds.session_url, ident.token)
        ident.pds.send_nonce_header = False
        result = await verifier.verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=proof))
        self.assertEqual(result, VerifyResult(error="PDS rejected the session (HTTP 401)"))
        ident.pds.send_nonce_header = True
        ident.pds.dpop_nonce = "bad nonce\r\nPRIVMSG x"
        result = await verifier.verify(challenge, nonce, pds_response(ident, nonce, "pds-oauth", dpop_proof=proof))
        self.assertEqual(result, VerifyResult(error="PDS sent an unusable DPoP nonce"))
