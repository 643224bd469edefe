"""The store's one exception: the database (or its high-water mark) cannot be used."""
from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used; the message is one line for the operator."""
