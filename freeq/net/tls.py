"""TLS server contexts from PEM files (TLS 1.2 and later)."""
from __future__ import annotations

import re

from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl

from freeq.config import ConfigError

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_tls_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Build server TLS options from a certificate chain and a private key in PEM files.

    Raises :class:`ConfigError` with a one-line message when a file is missing,
    unreadable, not PEM, or the key does not match the certificate.
    """
    try:
        with open(cert_path, "rb") as f:
            cert_data = f.read()
    except OSError as e:
        raise ConfigError(f"--tls-cert: cannot read {cert_path}: {e.strerror}") from None
    try:
        with open(key_path, "rb") as f:
            key_data = f.read()
    except OSError as e:
        raise ConfigError(f"--tls-key: cannot read {key_path}: {e.strerror}") from None
    blocks = _PEM_CERT.findall(cert_data)
    if not blocks:
        raise ConfigError(f"--tls-cert: {cert_path} contains no PEM certificate")
    try:
        certs = [ssl.Certificate.loadPEM(b) for b in blocks]
    except Exception:
        raise ConfigError(f"--tls-cert: {cert_path} is not a valid PEM certificate") from None
    try:
        key = crypto.PKey.from_cryptography_key(
            serialization.load_pem_private_key(key_data, password=None))  # type: ignore[arg-type]  # other kinds raise
    except Exception:
        raise ConfigError(f"--tls-key: {key_path} is not a valid PEM private key") from None
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0].original,
        extraCertChain=[c.original for c in certs[1:]],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()
    except Exception:
        raise ConfigError(f"--tls-key: {key_path} does not match the certificate in {cert_path}") from None
    return options
