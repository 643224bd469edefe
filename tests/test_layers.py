"""The package layers point one way (issue #11's guard rail), read from the source with ``ast``.

Order, lowest first: wire (``irc``) → ``state`` → ``core``/``s2s``/``store``/``auth`` → ``net``/``web`` → ``tap``.
A module may import its own package, a lower layer, and the shared top-level modules (``config``,
``metrics``, ``signing``, ``plugins``, ``fdlimit``, ``admin``). Type-only imports count too.

``KNOWN`` held the upward edges found when this test was written (the connection protocol in
``irc`` importing core and state; state importing the store; core importing s2s); all are gone. The
test fails on any upward edge not listed there and on a listed one that no longer exists.
"""
from __future__ import annotations

import ast
import pathlib

from twisted.trial import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "freeq"

#: package -> layer; same-layer packages may not import each other unless listed in SAME_LAYER_OK.
LAYER = {"irc": 0, "state": 1, "core": 2, "s2s": 2, "store": 2, "auth": 2, "net": 3, "web": 3, "tap": 4, "client": 3}
#: Same-layer edges that are part of the design (s2s applies peers' events through core; core and s2s
#: use auth and the store). core -> s2s is not: core tells federation through observers only.
SAME_LAYER_OK = {("core", "auth"), ("core", "store"), ("s2s", "auth"), ("s2s", "core"), ("store", "auth"),
                 ("web", "net")}  # WebSocket clients reuse the TCP connection logic
#: Upward edges present today (module, imported package); issue #11 removes them.
KNOWN: set[tuple[str, str]] = set()


def _package(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def edges() -> set[tuple[str, str, str]]:
    """Every (module path, its package, imported freeq package) in the tree, type-only imports included."""
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "freeq" and len(parts) > 1 and parts[1] != pkg:
                    found.add((str(path.relative_to(ROOT.parent)), pkg, parts[1]))
    return found


class LayerTests(unittest.TestCase):
    def test_no_new_upward_edge(self) -> None:
        """No module imports a higher layer (or an unrelated package of its own layer) beyond KNOWN."""
        bad = set()
        for module, pkg, target in edges():
            if pkg not in LAYER or target not in LAYER:
                continue  # the shared top-level modules
            if LAYER[target] > LAYER[pkg] or (LAYER[target] == LAYER[pkg] and (pkg, target) not in SAME_LAYER_OK):
                bad.add((module, target))
        self.assertEqual(bad - KNOWN, set(), "new upward imports")
        self.assertEqual(KNOWN - bad, set(), "fixed: remove these from KNOWN")

    def test_web_does_not_import_tap(self) -> None:
        """The composition root is imported by nobody in the package but the other entry point: ``freeq-admin``
        (its ``audit`` parses the server's flags with the server's own parser)."""
        self.assertEqual({m for m, _pkg, target in edges() if target == "tap"} - {"freeq/admin.py"}, set())

    def test_federation_uses_no_private_core_member(self) -> None:
        """freeq/s2s never reaches into the core's privates (``server._x`` / ``self.server._x``)."""
        found = []
        for path in sorted((ROOT / "s2s").glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                    continue
                base = node.value
                if (isinstance(base, ast.Name) and base.id == "server") or (
                        isinstance(base, ast.Attribute) and base.attr == "server"):
                    found.append(f"{path.name}:{node.lineno} {node.attr}")
        self.assertEqual(found, [])
