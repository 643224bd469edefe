"""Persistence: key files, encryption at rest and the SQLite store."""
