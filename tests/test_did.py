"""SafeHTTPClient limits and DID resolution (did:plc, did:web, did:key) against loopback servers."""
from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.auth.did import (
    DIDResolutionError,
    DIDResolver,
    did_web_url,
    handle_from_doc,
    pds_endpoint,
    valid_handle,
    verification_keys,
)
from freeq.auth.http import HTTPFetchError, SafeHTTPClient, UnsafeURLError, is_public_address
from freeq.auth.multikey import ED25519, KINDS, P256, SECP256K1, b58encode, did_key, generate_private_key
from tests.atproto_servers import (
    b64url,
    loopback_http,
    make_did_doc,
    random_plc_did,
    start_did_web,
    start_plc,
)
from tests.support import asynctest

reactor: Any = _reactor


class _StaticResolver:
    """Answers host name lookups from a table (so tests never need real DNS)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        receiver.resolutionBegan(None)
        for ip in self.table.get(hostName, []):
            cls = IPv6Address if ":" in ip else IPv4Address
            receiver.addressResolved(cls("TCP", ip, portNumber))
        receiver.resolutionComplete()
        return receiver


class _ResolverReactor:
    """The real reactor with a static name resolver."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.nameResolver = _StaticResolver(table)

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


async def _failure(d: Any) -> Exception:
    """Await ``d`` and return the exception it fails with (the test fails if it succeeds)."""
    try:
        result = await d
    except Exception as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


class AddressPolicyTests(unittest.TestCase):
    """Which destinations count as public (pure)."""

    def test_public_and_private_addresses(self) -> None:
        """Global unicast passes; loopback, RFC 1918, link-local, CGNAT, ULA, mapped etc. do not."""
        public = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
        private = [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
            "0.0.0.0", "255.255.255.255", "224.0.0.1", "192.0.2.1", "198.51.100.7", "203.0.113.9",
            "198.18.0.1", "240.0.0.1", "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
            "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:a00:1::1", "2001:db8::1", "64:ff9b:1::1",
        ]
        for text in public:
            self.assertTrue(is_public_address(ipaddress.ip_address(text)), text)
        for text in private:
            self.assertFalse(is_public_address(ipaddress.ip_address(text)), text)


class SafeHTTPClientTests(unittest.TestCase):
    """The hardened HTTP client over real loopback sockets."""

    @asynctest
    async def test_get_returns_status_headers_and_body(self) -> None:
        """A plain GET yields status, lower-cased headers and the body, and asks for no compression."""
        plc = await start_plc(self)
        plc.put("/doc", {"hello": "world"})
        plc.extra_headers = {"X-Mixed-Case": "yes"}
        response = await loopback_http().get(plc.url + "/doc", headers={"Accept": "application/json"})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b'{"hello": "world"}')
        self.assertEqual(response.headers["x-mixed-case"], "yes")
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(plc.requests[0].headers["accept-encoding"], "identity")
        self.assertEqual(plc.requests[0].headers["accept"], "application/json")

    @asynctest
    async def test_non_http_schemes_refused(self) -> None:
        """file, ftp, gopher and schemeless URLs are refused even when private networks are allowed."""
        client = loopback_http()
        for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/", "//127.0.0.1/x",
                    "127.0.0.1:80/x"):
            self.assertIsInstance(await _failure(client.get(url)), UnsafeURLError, url)

    @asynctest
    async def test_credentials_in_url_refused(self) -> None:
        """URLs carrying user:password are refused."""
        plc = await start_plc(self)
        error = await _failure(loopback_http().get(f"http://user:pw@127.0.0.1:{plc.port}/"))
        self.assertIsInstance(error, UnsafeURLError)
        self.assertEqual(plc.requests, [])

    @asynctest
    async def test_loopback_refused_unless_allowed(self) -> None:
        """http://127.0.0.1 and http://localhost are refused by default and fetched with allow_private."""
        plc = await start_plc(self)
        plc.put("/x", {"ok": True})
        strict = SafeHTTPClient(reactor, timeout=2)
        for url in (f"http://127.0.0.1:{plc.port}/x", f"http://localhost:{plc.port}/x",
                    f"http://LOCALHOST.:{plc.port}/x", f"http://[::1]:{plc.port}/x",
                    f"http://[::ffff:127.0.0.1]:{plc.port}/x"):
            self.assertIsInstance(await _failure(strict.get(url)), UnsafeURLError, url)
        self.assertEqual(plc.requests, [])
        relaxed = loopback_http()
        self.assertEqual((await relaxed.get(f"http://127.0.0.1:{plc.port}/x")).status, 200)
        self.assertEqual((await relaxed.get(f"http://localhost:{plc.port}/x")).status, 200)

    @asynctest
    async def test_private_literals_and_local_names_refused(self) -> None:
        """Private/link-local/CGNAT literals and .local/.internal/.localhost names fail before any lookup."""
        strict = SafeHTTPClient(_ResolverReactor({}), timeout=2)
        for url in ("http://10.0.0.1/", "https://169.254.169.254/latest/meta-data/", "http://100.64.0.1/",
                    "http://192.168.0.1/", "http://[fd00::1]/", "http://[fe80::1]/", "http://0.0.0.0/",
                    "http://printer.local/", "http://db.internal/", "http://app.localhost/"):
            self.assertIsInstance(await _failure(strict.get(url)), UnsafeURLError, url)

    @asynctest
    async def test_names_resolving_to_private_addresses_refused(self) -> None:
        """Every resolved address is checked: one private address among public ones is enough to refuse."""
        strict = SafeHTTPClient(_ResolverReactor({
            "evil.example": ["10.0.0.5"],
            "mixed.example": ["8.8.8.8", "127.0.0.1"],
            "v6.example": ["fd00::5"],
        }), timeout=2)
        for host in ("evil.example", "mixed.example", "v6.example"):
            error = await _failure(strict.get(f"https://{host}/"))
            self.assertIsInstance(error, UnsafeURLError, host)
            self.assertIn("resolves to a private", str(error))
        error = await _failure(strict.get("https://nowhere.example/"))
        self.assertIsInstance(error, HTTPFetchError)

    @asynctest
    async def test_connection_is_pinned_to_the_checked_address(self) -> None:
        """The client connects to the address it resolved and checked, sending the URL's Host."""
        plc = await start_plc(self)
        plc.put("/x", {"ok": True})
        client = loopback_http(the_reactor=_ResolverReactor({"pds.example": ["127.0.0.1"]}))
        response = await client.get(f"http://pds.example:{plc.port}/x")
        self.assertEqual(response.status, 200)
        self.assertEqual(plc.requests[0].headers["host"], f"pds.example:{plc.port}")

    @asynctest
    async def test_tls_is_verified_against_the_host_name(self) -> None:
        """https needs a trusted certificate valid for the URL's host, even on a pinned address."""
        web = await start_did_web(self)
        web.put("/x", {"ok": True})
        self.assertEqual((await loopback_http(tls_trust_root=web.trust_root).get(web.url + "/x")).status, 200)
        self.assertIsInstance(await _failure(loopback_http().get(web.url + "/x")), HTTPFetchError)
        wrong_name = loopback_http(tls_trust_root=web.trust_root,
                                   the_reactor=_ResolverReactor({"other.example": ["127.0.0.1"]}))
        error = await _failure(wrong_name.get(f"https://other.example:{web.port}/x"))
        self.assertIsInstance(error, HTTPFetchError)
        self.assertEqual(len(web.requests), 1)

    @asynctest
    async def test_slow_response_times_out(self) -> None:
        """A server that does not answer within the timeout fails the fetch with 'timed out'."""
        plc = await start_plc(self)
        plc.put("/x", {"ok": True})
        plc.delay = 5.0
        started = reactor.seconds()
        error = await _failure(loopback_http(timeout=0.2).get(plc.url + "/x"))
        self.assertIsInstance(error, HTTPFetchError)
        self.assertEqual(str(error), "timed out")
        self.assertLess(reactor.seconds() - started, 2.0)

    @asynctest
    async def test_oversized_bodies_refused(self) -> None:
        """Bodies over max_bytes fail, whether announced by Content-Length or streamed chunked."""
        plc = await start_plc(self)
        client = loopback_http(max_bytes=10_000)
        plc.oversize = 10_001
        self.assertEqual(str(await _failure(client.get(plc.url + "/x"))), "response body too large")
        plc.oversize = None
        plc.oversize_chunked = 2_000_000
        self.assertEqual(str(await _failure(client.get(plc.url + "/x"))), "response body too large")
        plc.oversize_chunked = None
        plc.put("/x", b"y" * 10_000)
        self.assertEqual(len((await client.get(plc.url + "/x")).body), 10_000)

    @asynctest
    async def test_redirects_refused(self) -> None:
        """A 302 fails the fetch and its target is never requested."""
        plc = await start_plc(self)
        target = await start_plc(self)
        target.put("/x", {"ok": True})
        plc.redirect_to = target.url + "/x"
        error = await _failure(loopback_http().get(plc.url + "/x"))
        self.assertIsInstance(error, HTTPFetchError)
        self.assertIn("redirect", str(error))
        self.assertEqual(target.requests, [])

    @asynctest
    async def test_unrequested_content_encoding_refused(self) -> None:
        """A body sent gzip-encoded although identity was asked for is refused, not inflated."""
        plc = await start_plc(self)
        plc.put("/x", b"\x1f\x8b not really gzip")
        plc.extra_headers = {"Content-Encoding": "gzip"}
        self.assertIsInstance(await _failure(loopback_http().get(plc.url + "/x")), HTTPFetchError)

    @asynctest
    async def test_connection_refused(self) -> None:
        """A closed port fails with HTTPFetchError."""
        plc = await start_plc(self)
        url = plc.url
        await plc.stop()
        error = await _failure(loopback_http().get(url + "/x"))
        self.assertIsInstance(error, HTTPFetchError)
        self.assertEqual(str(error), "connection failed")


class DIDResolutionTests(unittest.TestCase):
    """DIDResolver over the loopback PLC directory and did:web host."""

    @asynctest
    async def test_plc_document_resolves(self) -> None:
        """A did:plc resolves to the document the PLC directory serves (trailing '/' in the URL ok)."""
        plc = await start_plc(self)
        did = random_plc_did()
        key = generate_private_key(SECP256K1).public_key()
        plc.add(make_did_doc(did, [key], handle="alice.test", pds_url="https://pds.example"))
        resolver = DIDResolver(loopback_http(), reactor, plc_directory_url=plc.url + "/")
        doc = await resolver.resolve(did)
        self.assertEqual(doc["id"], did)
        self.assertEqual(verification_keys(doc), [key])
        self.assertEqual(pds_endpoint(doc), "https://pds.example")
        self.assertEqual(handle_from_doc(doc), "alice.test")
        self.assertEqual(plc.requests[0].path, "/" + did)

    @asynctest
    async def test_did_web_with_port(self) -> None:
        """did:web:localhost%3A<port> fetches https://localhost:<port>/.well-known/did.json."""
        web = await start_did_web(self)
        did = web.did()
        key = generate_private_key(ED25519).public_key()
        web.add(make_did_doc(did, [key], relative_ids=True))
        doc = await DIDResolver(loopback_http(tls_trust_root=web.trust_root), reactor).resolve(did)
        self.assertEqual(doc["id"], did)
        self.assertEqual(verification_keys(doc), [key])
        self.assertEqual(web.requests[0].path, "/.well-known/did.json")

    @asynctest
    async def test_did_web_path_form(self) -> None:
        """did:web:host%3Aport:user:alice fetches /user/alice/did.json."""
        web = await start_did_web(self)
        did = web.did("user", "alice")
        web.add(make_did_doc(did, [generate_private_key(P256).public_key()]))
        doc = await DIDResolver(loopback_http(tls_trust_root=web.trust_root), reactor).resolve(did)
        self.assertEqual(doc["id"], did)
        self.assertEqual(web.requests[0].path, "/user/alice/did.json")

    @asynctest
    async def test_did_web_requires_trusted_tls(self) -> None:
        """did:web is https only: an untrusted certificate fails resolution."""
        web = await start_did_web(self)
        web.add(make_did_doc(web.did(), []))
        error = await _failure(DIDResolver(loopback_http(), reactor).resolve(web.did()))
        self.assertIsInstance(error, DIDResolutionError)
        self.assertIn("fetch failed", str(error))

    def test_did_web_urls(self) -> None:
        """did:web identifiers map to URLs; malformed hosts and path segments are refused."""
        self.assertEqual(did_web_url("did:web:example.com"), "https://example.com/.well-known/did.json")
        self.assertEqual(did_web_url("did:web:Example.COM%3A8443"), "https://example.com:8443/.well-known/did.json")
        self.assertEqual(did_web_url("did:web:example.com%3a8443:u:bob"), "https://example.com:8443/u/bob/did.json")
        self.assertEqual(did_web_url("did:web:example.com:a%20b"), "https://example.com/a%20b/did.json")
        for bad in ("did:web:exa_mple.com", "did:web:example.com:..", "did:web:example.com:a%2Fb",
                    "did:web:example.com%3A99999", "did:web:user%40example.com", "did:web:example.com::x",
                    "did:web:example.com%2F..%2Fadmin"):
            self.assertRaises(DIDResolutionError, did_web_url, bad)

    @asynctest
    async def test_did_key_each_kind(self) -> None:
        """did:key documents are synthesised locally for Ed25519, secp256k1 and P-256."""
        resolver = DIDResolver(SafeHTTPClient(reactor), reactor, plc_directory_url="http://192.0.2.1")
        for kind in KINDS:
            key = generate_private_key(kind).public_key()
            doc = await resolver.resolve(did_key(key))
            self.assertEqual(doc["id"], did_key(key))
            self.assertEqual(verification_keys(doc), [key])
        bad = "did:key:z" + b58encode(b"\x12\x00" + b"\1" * 32)
        self.assertEqual(str(await _failure(resolver.resolve(bad))), "invalid did:key")

    @asynctest
    async def test_cache_honours_ttl(self) -> None:
        """A document is reused until the TTL passes; refresh bypasses it once it is 30 s old."""
        plc = await start_plc(self)
        did = random_plc_did()
        plc.add(make_did_doc(did, []))
        clock = Clock()
        resolver = DIDResolver(loopback_http(), clock, plc_directory_url=plc.url, ttl=60)
        doc = await resolver.resolve(did)
        doc["id"] = "mutated by the caller"
        clock.advance(59)
        self.assertEqual((await resolver.resolve(did))["id"], did)
        self.assertEqual(plc.fetches(did), 1)
        self.assertTrue(resolver.is_cached(did))
        clock.advance(2)
        self.assertFalse(resolver.is_cached(did))
        await resolver.resolve(did)
        self.assertEqual(plc.fetches(did), 2)
        await resolver.resolve(did, refresh=True)
        self.assertEqual(plc.fetches(did), 2)
        clock.advance(30)
        await resolver.resolve(did, refresh=True)
        self.assertEqual(plc.fetches(did), 3)

    @asynctest
    async def test_cache_is_bounded_and_failures_are_not_cached(self) -> None:
        """The cache keeps at most max_entries DIDs, and a failed lookup is retried next time."""
        plc = await start_plc(self)
        dids = [random_plc_did() for _ in range(3)]
        for did in dids:
            plc.add(make_did_doc(did, []))
        resolver = DIDResolver(loopback_http(), Clock(), plc_directory_url=plc.url, max_entries=2)
        for did in dids:
            await resolver.resolve(did)
        self.assertFalse(resolver.is_cached(dids[0]))
        self.assertTrue(resolver.is_cached(dids[2]))
        missing = random_plc_did()
        self.assertEqual(str(await _failure(resolver.resolve(missing))), "DID not found")
        plc.add(make_did_doc(missing, []))
        self.assertEqual((await resolver.resolve(missing))["id"], missing)

    @asynctest
    async def test_document_id_must_match(self) -> None:
        """A document whose id is another DID is refused."""
        plc = await start_plc(self)
        did, other = random_plc_did(), random_plc_did()
        plc.put("/" + did, make_did_doc(other, []))
        error = await _failure(DIDResolver(loopback_http(), reactor, plc_directory_url=plc.url).resolve(did))
        self.assertEqual(str(error), "DID document id does not match the DID")

    @asynctest
    async def test_http_errors(self) -> None:
        """404, 410, 500, non-JSON and non-object documents each fail with a short reason."""
        plc = await start_plc(self)
        resolver = DIDResolver(loopback_http(), reactor, plc_directory_url=plc.url)
        did = random_plc_did()
        self.assertEqual(str(await _failure(resolver.resolve(did))), "DID not found")
        plc.status = 410
        self.assertEqual(str(await _failure(resolver.resolve(did))), "DID deactivated")
        plc.status = 500
        self.assertEqual(str(await _failure(resolver.resolve(did))), "DID document fetch failed: HTTP 500")
        plc.status = None
        plc.put("/" + did, b"<html>")
        self.assertEqual(str(await _failure(resolver.resolve(did))), "DID document is not valid JSON")
        plc.put("/" + did, b"[1, 2]")
        self.assertEqual(str(await _failure(resolver.resolve(did))), "DID document is not a JSON object")

    @asynctest
    async def test_slow_oversized_and_redirecting_directory(self) -> None:
        """Timeouts, oversized documents and redirects from the directory all fail resolution."""
        plc = await start_plc(self)
        did = random_plc_did()
        plc.add(make_did_doc(did, []))
        resolver = DIDResolver(loopback_http(timeout=0.2, max_bytes=4096), reactor, plc_directory_url=plc.url)
        plc.delay = 3.0
        self.assertEqual(str(await _failure(resolver.resolve(did))), "DID document fetch failed: timed out")
        plc.delay = 0.0
        plc.oversize_chunked = 100_000
        self.assertEqual(str(await _failure(resolver.resolve(did))),
                         "DID document fetch failed: response body too large")
        plc.oversize_chunked = None
        plc.redirect_to = "http://127.0.0.1:9/elsewhere"
        self.assertIn("redirect refused", str(await _failure(resolver.resolve(did))))

    @asynctest
    async def test_private_directory_refused_without_allow_private(self) -> None:
        """With the default policy a PLC directory on loopback is not contacted."""
        plc = await start_plc(self)
        did = random_plc_did()
        plc.add(make_did_doc(did, []))
        resolver = DIDResolver(SafeHTTPClient(reactor), reactor, plc_directory_url=plc.url)
        error = await _failure(resolver.resolve(did))
        self.assertIsInstance(error, DIDResolutionError)
        self.assertIn("address refused", str(error))
        self.assertEqual(plc.requests, [])

    @asynctest
    async def test_malformed_and_unsupported_dids(self) -> None:
        """Bad syntax, path tricks in did:plc and unknown methods fail without any request."""
        plc = await start_plc(self)
        resolver = DIDResolver(loopback_http(), reactor, plc_directory_url=plc.url)
        for did in ("did:plc:../../admin", "did:plc:ABCDEFGHIJKLMNOPQRSTUVWX", "did:plc:short",
                    "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa?x=1", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa#frag",
                    "not-a-did", "did:example:123", "did:web:", "did:" + "a" * 3000, ""):
            self.assertIsInstance(await _failure(resolver.resolve(did)), DIDResolutionError, did)
        self.assertEqual(plc.requests, [])


class DocumentReadingTests(unittest.TestCase):
    """Keys, PDS and handle taken from DID documents (pure)."""

    DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"

    def _vm(self, vm_id: str, kind: str = SECP256K1) -> tuple[dict[str, Any], Any]:
        key = generate_private_key(kind).public_key()
        return {"id": vm_id, "type": "Multikey", "controller": self.DID, "publicKeyMultibase": key.multibase}, key

    def test_relative_and_absolute_references_match(self) -> None:
        """'#k' references match '<did>#k' ids and vice versa; inline methods are used directly."""
        vm1, k1 = self._vm(self.DID + "#k1")
        vm2, k2 = self._vm("#k2", ED25519)
        inline, k3 = self._vm("#inline", P256)
        doc = {"id": self.DID, "verificationMethod": [vm1, vm2],
               "authentication": ["#k1", inline], "assertionMethod": [self.DID + "#k2"]}
        self.assertEqual(verification_keys(doc), [k1, k3, k2])

    def test_plc_style_atproto_key_without_authentication(self) -> None:
        """A '#atproto' key listed only in verificationMethod is used; other unreferenced keys are not."""
        vm1, k1 = self._vm(self.DID + "#atproto")
        vm2, _ = self._vm(self.DID + "#other")
        vm3, k3 = self._vm("#atproto", P256)
        self.assertEqual(verification_keys({"id": self.DID, "verificationMethod": [vm2, vm1]}), [k1])
        self.assertEqual(verification_keys({"id": self.DID, "verificationMethod": [vm3]}), [k3])

    def test_keys_are_deduplicated_and_junk_skipped(self) -> None:
        """A key referenced twice appears once; unknown refs, bad keys and odd types are skipped."""
        vm1, k1 = self._vm(self.DID + "#atproto")
        doc = {"id": self.DID,
               "verificationMethod": [vm1, {"id": "#bad", "publicKeyMultibase": "zzzz"}, "junk", {"id": 5},
                                      {"id": "#b58", "type": "Ed25519VerificationKey2018",
                                       "publicKeyBase58": b58encode(b"\1" * 32)}],
               "authentication": ["#atproto", "#missing", "#bad", "#b58", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb#atproto", 7],
               "assertionMethod": "#atproto"}
        self.assertEqual(verification_keys(doc), [k1])
        self.assertEqual(verification_keys({"verificationMethod": [vm1]}), [])

    def test_jwk_and_legacy_key_formats(self) -> None:
        """publicKeyJwk and legacy raw-multibase EcdsaSecp256k1VerificationKey2019 keys are read."""
        from cryptography.hazmat.primitives.asymmetric import ec

        p256 = generate_private_key(P256).public_key()
        nums = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256.raw).public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big"))}
        k1 = generate_private_key(SECP256K1).public_key()
        doc = {"id": self.DID, "verificationMethod": [
            {"id": "#jwk", "type": "JsonWebKey2020", "publicKeyJwk": jwk},
            {"id": "#atproto", "type": "EcdsaSecp256k1VerificationKey2019", "publicKeyMultibase": "z" + b58encode(k1.raw)},
        ], "authentication": ["#jwk"]}
        self.assertEqual(verification_keys(doc), [p256, k1])

    def test_pds_endpoint(self) -> None:
        """The #atproto_pds PDS service wins, else the first by type; object endpoints are skipped."""
        svc = lambda sid, ep, t="AtprotoPersonalDataServer": {"id": sid, "type": t, "serviceEndpoint": ep}  # noqa: E731
        doc = {"id": self.DID, "service": [
            svc("#labeler", "https://labeler.example", "AtprotoLabeler"),
            svc("#object", {"origins": ["https://x.example"]}),
            svc("#other", "https://other.example/"),
            svc(self.DID + "#atproto_pds", "https://pds.example/"),
        ]}
        self.assertEqual(pds_endpoint(doc), "https://pds.example/")
        doc["service"] = doc["service"][:3]
        self.assertEqual(pds_endpoint(doc), "https://other.example/")
        doc["service"] = [svc("#p", "https://typed.example", ["Service", "AtprotoPersonalDataServer"])]
        self.assertEqual(pds_endpoint(doc), "https://typed.example")
        self.assertIsNone(pds_endpoint({"id": self.DID}))
        self.assertIsNone(pds_endpoint({"id": self.DID, "service": [svc("#o", {"a": 1})]}))

    def test_handle_from_doc(self) -> None:
        """The first at:// alias is the handle (lower-cased); an invalid one gives None."""
        self.assertEqual(handle_from_doc({"alsoKnownAs": ["https://x.example", "at://Alice.Example.COM",
                                                          "at://bob.example"]}), "alice.example.com")
        self.assertIsNone(handle_from_doc({"alsoKnownAs": ["at://evil\r\nQUIT"]}))
        self.assertIsNone(handle_from_doc({"alsoKnownAs": "at://alice.example"}))
        self.assertIsNone(handle_from_doc({}))
        self.assertIsNone(valid_handle("nodots"))
        self.assertIsNone(valid_handle("a" * 250 + ".com"))
