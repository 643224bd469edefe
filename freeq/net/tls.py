"""TLS server contexts from PEM files (TLS 1.2 and later), and a context factory whose files can be re-read."""
from __future__ import annotations

import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from freeq.config import ConfigError

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_tls_options(cert_path: str, key_path: str, cert_flag: str = "--tls-cert",
                     key_flag: str = "--tls-key") -> ssl.CertificateOptions:
    """Build server TLS options from a certificate chain and a private key in PEM files.

    Raises :class:`ConfigError` with a one-line message (naming ``cert_flag`` or ``key_flag``) when a file is
    missing, unreadable, not PEM, or the key does not match the certificate.
    """
    try:
        with open(cert_path, "rb") as f:
            cert_data = f.read()
    except OSError as e:
        raise ConfigError(f"{cert_flag}: cannot read {cert_path}: {e.strerror}") from None
    try:
        with open(key_path, "rb") as f:
            key_data = f.read()
    except OSError as e:
        raise ConfigError(f"{key_flag}: cannot read {key_path}: {e.strerror}") from None
    blocks = _PEM_CERT.findall(cert_data)
    if not blocks:
        raise ConfigError(f"{cert_flag}: {cert_path} contains no PEM certificate")
    try:
        certs = [ssl.Certificate.loadPEM(b) for b in blocks]
    except Exception:
        raise ConfigError(f"{cert_flag}: {cert_path} is not a valid PEM certificate") from None
    try:
        key = crypto.PKey.from_cryptography_key(
            serialization.load_pem_private_key(key_data, password=None))  # type: ignore[arg-type]  # other kinds raise
    except Exception:
        raise ConfigError(f"{key_flag}: {key_path} is not a valid PEM private key") from None
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0].original,
        extraCertChain=[c.original for c in certs[1:]],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()
    except Exception:
        raise ConfigError(f"{key_flag}: {key_path} does not match the certificate in {cert_path}") from None
    return options


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    """A server TLS context factory over a certificate and key file that :meth:`reload` re-reads.

    Each new connection asks :meth:`getContext` (Twisted's TLS wrapper does, per connection), so after a
    reload new connections get the new certificate while connected clients keep the session they have.
    Declared an ``IOpenSSLContextFactory``: without it Twisted (26.10) warns at every start that the factory
    provides no connection-creator interface, and may stop accepting it.
    """

    def __init__(self, cert_path: str, key_path: str, cert_flag: str = "--tls-cert",
                 key_flag: str = "--tls-key") -> None:
        self.cert_flag = cert_flag
        self.key_flag = key_flag
        self.cert_path = cert_path
        self.key_path = key_path
        self.options = load_tls_options(cert_path, key_path, cert_flag, key_flag)

    def getContext(self) -> Any:
        """The OpenSSL context of the current certificate (Twisted's ``IOpenSSLContextFactory``)."""
        return self.options.getContext()

    def load(self, cert_path: str, key_path: str) -> ssl.CertificateOptions:
        """Read ``cert_path`` and ``key_path`` into options (raising :class:`ConfigError`) without using them yet."""
        return load_tls_options(cert_path, key_path, self.cert_flag, self.key_flag)

    def use(self, options: ssl.CertificateOptions, cert_path: str, key_path: str) -> None:
        """Serve new connections with ``options`` (from :meth:`load`)."""
        self.options, self.cert_path, self.key_path = options, cert_path, key_path

    def reload(self) -> None:
        """Re-read the same files; on error (:class:`ConfigError`) the current certificate stays."""
        self.use(self.load(self.cert_path, self.key_path), self.cert_path, self.key_path)
