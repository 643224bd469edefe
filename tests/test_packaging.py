"""What ``pip install .`` ships (a non-editable install reads setup.cfg's explicit package list): every package
of the source tree, and the data files the server reads at run time. ``make run`` installs in editable mode, so
a package missing from the list only shows on a real deployment (it did: freeq.net, found by following
docs/deployment.md)."""
from __future__ import annotations

import configparser
import pathlib

from twisted.trial import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent


class PackagingTests(unittest.TestCase):
    def test_every_package_is_listed(self) -> None:
        """Each directory of freeq/ with an __init__.py is in [options] packages, and nothing listed is missing."""
        cfg = configparser.ConfigParser()
        cfg.read(ROOT / "setup.cfg")
        listed = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
        found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "freeq").rglob("__init__.py")}
        self.assertEqual(sorted(found - listed), [], "packages missing from setup.cfg [options] packages")
        self.assertEqual(sorted(p for p in listed - found if p.startswith("freeq")), [],
                         "setup.cfg lists packages that do not exist")
