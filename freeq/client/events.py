"""Events a client publishes, and results that arrive once, observable by any number of Deferreds."""
from __future__ import annotations

from typing import Any, Callable, Generic, Optional, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

T = TypeVar("T")


class OneShot:
    """A result that arrives once and that any number of Deferreds can observe, before or after.

    A failure nobody asked for is not reported as an unhandled error.
    """

    def __init__(self) -> None:
        self.done = False
        self._result: Any = None
        self._waiters: list[defer.Deferred] = []

    def fire(self, result: Any) -> None:
        """Set the result (a value or a ``Failure``); later calls are ignored."""
        if self.done:
            return
        self.done = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def when(self) -> defer.Deferred:
        """A ``Deferred`` for the result."""
        if self.done:
            return defer.fail(self._result) if isinstance(self._result, Failure) else defer.succeed(self._result)
        d: defer.Deferred = defer.Deferred(lambda _d: self._waiters.remove(_d) if _d in self._waiters else None)
        self._waiters.append(d)
        return d


class Event(Generic[T]):
    """A named happening: callbacks are called with each value, waiters get the first match.

    ``event.add(cb)`` (also usable as a decorator) subscribes; ``event.wait(pred, timeout)``
    returns a ``Deferred`` for the next value ``pred`` accepts. A callback that raises is logged
    and does not stop the others or the connection.
    """

    def __init__(self, name: str, clock: Any) -> None:
        self.name = name
        self._clock = clock
        self._callbacks: list[Callable[[T], Any]] = []
        self._waiters: list[tuple[Callable[[T], bool], defer.Deferred]] = []

    def add(self, callback: Callable[[T], Any]) -> Callable[[T], Any]:
        """Call ``callback(value)`` for every value from now on; returns ``callback``."""
        self._callbacks.append(callback)
        return callback

    __call__ = add

    def remove(self, callback: Callable[[T], Any]) -> None:
        """Stop calling ``callback``."""
        self._callbacks.remove(callback)

    def wait(self, predicate: Optional[Callable[[T], bool]] = None, timeout: Optional[float] = 10.0) -> defer.Deferred:
        """A ``Deferred`` that fires with the next value ``predicate`` accepts (any, if omitted).

        It fails with ``twisted.internet.defer.TimeoutError`` after ``timeout`` seconds (``None``:
        wait for ever), and with :class:`ConnectionClosed` if the connection ends first.
        """
        d: defer.Deferred = defer.Deferred(lambda _d: self._drop(_d))
        self._waiters.append((predicate or (lambda _v: True), d))
        if timeout is not None:
            d.addTimeout(timeout, self._clock)
        return d

    def _drop(self, d: defer.Deferred) -> None:
        self._waiters = [(p, w) for p, w in self._waiters if w is not d]

    def fire(self, value: T) -> None:
        """Deliver ``value`` to the callbacks and the matching waiters."""
        for callback in list(self._callbacks):
            try:
                callback(value)
            except Exception:
                log.failure("{event} callback failed", event=self.name)
        for entry in list(self._waiters):
            predicate, d = entry
            try:
                ok = predicate(value)
            except Exception:
                log.failure("{event} wait predicate failed", event=self.name)
                ok = False
            if ok and entry in self._waiters:
                self._waiters.remove(entry)
                d.callback(value)

    def fail_waiters(self, reason: Exception) -> None:
        """Fail every pending waiter (the connection is gone)."""
        waiters, self._waiters = self._waiters, []
        for _pred, d in waiters:
            d.errback(Failure(reason))

