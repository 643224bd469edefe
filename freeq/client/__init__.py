"""A Python client SDK for freeq on Twisted (bots, tests, the command-line tool)."""
