"""freeq: an identity-aware, federated IRC server on Twisted."""

__version__ = "0.1.0"
