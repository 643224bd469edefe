"""Look-alike nicks: the Unicode TR39 confusable skeleton and an index of DID-bound nicks by it.

The data is the Unicode ``confusables.txt`` as shipped (in JSON) by the ``confusable-homoglyphs``
package. That file lists, for every pair of the source, both directions; the prototype of each
source is recovered here (a code point is a source exactly when it has one entry: a source maps
to one prototype, and a prototype is never a source), and the map is closed under itself so that
prototypes are fixed points. Two code points that only map to each other form one class whichever
is chosen as its representative, which is all skeleton equality needs.

``skeleton(s)`` is TR39's: NFD, map each code point to its prototype, NFD again. Nick comparison
uses :func:`lookalike_keys`, two case-insensitive variants of it (see there).
"""
from __future__ import annotations

import json
import unicodedata
from importlib.resources import files
from typing import Iterator, MutableMapping, Optional

from freeq.irc.names import fold

_BIDI_MARKS = str.maketrans("", "", "\u200e\u200f")  # the data's comments wrap right-to-left text in them

_prototypes: Optional[dict[str, str]] = None


def _load() -> dict[str, str]:
    """Build the code point → prototype map from the package data (once, on first use)."""
    raw = json.loads(files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    pairs: dict[str, list[str]] = {}
    for key, entries in raw.items():
        pairs.setdefault(key.translate(_BIDI_MARKS), []).extend(e["c"].translate(_BIDI_MARKS) for e in entries)
    proto: dict[str, str] = {}
    for key, targets in pairs.items():
        if len(key) != 1 or len(targets) != 1:
            continue  # a prototype (it lists its sources) or a multi-code-point prototype
        target = targets[0]
        if len(target) == 1 and pairs.get(target) == [key]:
            low, high = sorted((key, target))  # a class of two: map both to one of them
            proto[high] = low
        else:
            proto[key] = target
    nfd = unicodedata.normalize
    for _ in range(8):  # a prototype may contain code points that are themselves mapped
        changed = False
        for key, target in proto.items():
            mapped = nfd("NFD", "".join(proto.get(c, c) for c in nfd("NFD", target)))
            if mapped != target:
                proto[key] = mapped
                changed = True
        if not changed:
            break
    return proto


def prototypes() -> dict[str, str]:
    """The code point → prototype map (loaded lazily, then shared)."""
    global _prototypes
    if _prototypes is None:
        _prototypes = _load()
    return _prototypes


def skeleton(text: str) -> str:
    """The TR39 skeleton of ``text``: NFD, each code point replaced by its prototype, NFD."""
    proto = prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(proto.get(c, c) for c in decomposed))


def lookalike_keys(nick: str) -> tuple[str, str]:
    """The keys under which ``nick`` is compared with DID-bound nicks.

    ``skeleton(casefold(nick))`` catches case variants in other scripts (Cyrillic ``АLICEX``);
    ``casefold(skeleton(nick))`` catches confusions that depend on case (capital ``I`` for ``l``,
    which casefolding first would turn into ``i``). Two nicks look alike when they share a key.
    """
    return skeleton(nick.casefold()), skeleton(nick).casefold()


class NickOwners(MutableMapping[str, tuple[str, str]]):
    """DID-bound nicks: folded nick → (nick as given, DID), with an index by look-alike key.

    Every change goes through ``__setitem__``/``__delitem__`` (so also ``update``, ``pop``, ...),
    which keep the index exact; :meth:`lookalike` is then a few dictionary look-ups per NICK,
    never a scan of every binding.
    """

    def __init__(self, initial: Optional[dict[str, tuple[str, str]]] = None) -> None:
        self._owners: dict[str, tuple[str, str]] = {}
        # look-alike key -> {folded nick: (nick, DID)}
        self._index: dict[str, dict[str, tuple[str, str]]] = {}
        if initial:
            self.update(initial)

    def __getitem__(self, folded: str) -> tuple[str, str]:
        return self._owners[folded]

    def get(self, folded: str, default: Optional[tuple[str, str]] = None) -> Optional[tuple[str, str]]:  # type: ignore[override]
        return self._owners.get(folded, default)

    def __contains__(self, folded: object) -> bool:
        return folded in self._owners

    def __setitem__(self, folded: str, value: tuple[str, str]) -> None:
        if folded in self._owners:
            self._unindex(folded)
        self._owners[folded] = value
        for key in set(lookalike_keys(value[0])):
            self._index.setdefault(key, {})[folded] = value

    def __delitem__(self, folded: str) -> None:
        self._unindex(folded)
        del self._owners[folded]

    def _unindex(self, folded: str) -> None:
        nick, _did = self._owners[folded]
        for key in set(lookalike_keys(nick)):
            bucket = self._index.get(key)
            if bucket is not None:
                bucket.pop(folded, None)
                if not bucket:
                    del self._index[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._owners)

    def __len__(self) -> int:
        return len(self._owners)

    def __repr__(self) -> str:
        return f"NickOwners({self._owners!r})"

    def lookalike(self, nick: str, caller: Optional[str]) -> Optional[tuple[str, str]]:
        """A bound nick that looks like ``nick`` but is not it, owned by a DID other than ``caller``.

        Returns its (nick, DID), or ``None``. A nick that is itself bound (same IRC case fold) is
        left to the exact ownership rule: its owner keeps it even if another DID's nick looks
        the same (bindings made before this rule), and anyone else is refused by that rule.
        """
        folded = fold(nick)
        if folded in self._owners:
            return None
        for key in lookalike_keys(nick):
            for other, (bound, did) in self._index.get(key, {}).items():
                if other != folded and did != caller:
                    return bound, did
        return None
