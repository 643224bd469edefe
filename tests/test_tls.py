"""TLS: registration over TLS, the secure-connection WHOIS line, certificate loading errors, protocol floor."""
from __future__ import annotations

import os
import socket
import ssl
import warnings
from typing import Optional

from OpenSSL import SSL
from twisted.internet import threads
from twisted.trial import unittest

from freeq.config import ConfigError
from freeq.net.tls import load_tls_options
from tests.support import asynctest, make_certificate, sleep, start_server


def _handshake(port: int, version: ssl.TLSVersion) -> Optional[str]:
    """Try a TLS handshake pinned to ``version`` (blocking; run in a thread).

    Returns ``None`` when the handshake succeeds, else the OpenSSL reason.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Security level 0 lets this OpenSSL build offer the legacy protocol at all.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.do_handshake()
        except ssl.SSLError as e:
            return str(e.reason)
    return None


class TLSConnectionTests(unittest.TestCase):
    """Real TLS connections against the TLS listener."""

    @asynctest
    async def test_register_over_tls_and_whois_shows_671(self) -> None:
        """A TLS client registers; WHOIS shows 671 for it and not for a plain-TCP user."""
        srv = await start_server(self, tls=True)
        secure = await srv.client("secure", tls=True)
        plain = await srv.client("plain")
        self.assertTrue(srv.server.users["secure"].registered)

        plain.send("WHOIS secure")
        lines = await plain.collect_until("318")
        line_671 = [l for l in lines if l.command == "671"]
        self.assertEqual(len(line_671), 1)
        self.assertEqual(line_671[0].params[:2], ["plain", "secure"])

        secure.send("WHOIS plain")
        lines = await secure.collect_until("318")
        self.assertIn("311", [l.command for l in lines])
        self.assertNotIn("671", [l.command for l in lines])

    @asynctest
    async def test_tls_1_1_client_is_refused(self) -> None:
        """A client limited to TLS 1.1 cannot complete a handshake; TLS 1.2 can."""
        srv = await start_server(self, tls=True)
        assert srv.tls_port is not None
        self.assertIsNone(await threads.deferToThread(_handshake, srv.tls_port, ssl.TLSVersion.TLSv1_2))
        reason = await threads.deferToThread(_handshake, srv.tls_port, ssl.TLSVersion.TLSv1_1)
        self.assertIsNotNone(reason, "a TLS 1.1 handshake succeeded")
        assert reason is not None
        if reason in ("NO_PROTOCOLS_AVAILABLE", "UNSUPPORTED_PROTOCOL"):
            # This OpenSSL cannot even offer TLS 1.1: check the server's floor on its options instead.
            cert, key = srv.server.config.tls_cert, srv.server.config.tls_key
            assert cert is not None and key is not None
            flags = load_tls_options(cert, key).getContext().set_options(0)
            self.assertTrue(flags & SSL.OP_NO_TLSv1_1 and flags & SSL.OP_NO_TLSv1)
        else:
            # The client really offered TLS 1.1 and the server answered with a protocol_version alert.
            self.assertIn("PROTOCOL_VERSION", reason)
        for _ in range(200):  # the server notices the closed sockets a moment later
            if not srv.server.connections:
                break
            await sleep(0.01)
        self.assertEqual(len(srv.server.connections), 0)

    def test_server_context_disables_tls_below_1_2(self) -> None:
        """The options built from a certificate disable SSLv3, TLS 1.0 and TLS 1.1 in the OpenSSL context."""
        cert, key = make_certificate(self.mktemp())
        options = load_tls_options(cert, key)
        flags = options.getContext().set_options(0)  # adding no option returns the current mask
        for flag in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(flags & flag, hex(flag))
        self.assertFalse(flags & SSL.OP_NO_TLSv1_2)


class LoadTLSOptionsTests(unittest.TestCase):
    """load_tls_options turns every bad file into a one-line ConfigError naming the flag."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.cert, self.key = make_certificate(self.dir)

    def _error(self, cert: str, key: str) -> str:
        with self.assertRaises(ConfigError) as ctx:
            load_tls_options(cert, key)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        return message

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_good_pair_loads(self) -> None:
        """A matching certificate and key build options with a usable context."""
        options = load_tls_options(self.cert, self.key)
        self.assertIsNotNone(options.getContext())

    def test_missing_cert_file(self) -> None:
        """A missing certificate file names --tls-cert and the path."""
        missing = os.path.join(self.dir, "nope.pem")
        message = self._error(missing, self.key)
        self.assertTrue(message.startswith("--tls-cert:"), message)
        self.assertIn(missing, message)

    def test_missing_key_file(self) -> None:
        """A missing key file names --tls-key and the path."""
        missing = os.path.join(self.dir, "nokey.pem")
        message = self._error(self.cert, missing)
        self.assertTrue(message.startswith("--tls-key:"), message)
        self.assertIn(missing, message)

    def test_garbage_cert(self) -> None:
        """A certificate file with no PEM block names --tls-cert."""
        garbage = self._write("garbage.pem", b"this is not a certificate\n\x00\xff")
        message = self._error(garbage, self.key)
        self.assertTrue(message.startswith("--tls-cert:"), message)

    def test_corrupt_pem_cert(self) -> None:
        """A PEM certificate block with a corrupt body names --tls-cert."""
        corrupt = self._write("corrupt.pem",
                              b"-----BEGIN CERTIFICATE-----\nAAAAnotbase64!!\n-----END CERTIFICATE-----\n")
        message = self._error(corrupt, self.key)
        self.assertTrue(message.startswith("--tls-cert:"), message)

    def test_garbage_key(self) -> None:
        """A key file that is not a PEM private key names --tls-key."""
        garbage = self._write("garbage.key", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
        message = self._error(self.cert, garbage)
        self.assertTrue(message.startswith("--tls-key:"), message)

    def test_key_does_not_match_cert(self) -> None:
        """A valid key from another certificate is reported as not matching, naming --tls-key."""
        _other_cert, other_key = make_certificate(os.path.join(self.dir, "other"))
        message = self._error(self.cert, other_key)
        self.assertTrue(message.startswith("--tls-key:"), message)
        self.assertIn("does not match", message)
