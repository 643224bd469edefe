"""Log output and the log lines operators act on: ``--log-format json``, security events, connections.

* :func:`json_line` renders one ``twisted.logger`` event as one JSON object (one line): ``timestamp``
  (ISO-8601, UTC), ``level``, ``namespace``, ``message`` (the rendered text) and the event's own named
  fields whose values are JSON-safe. Fields whose names say they hold a secret are never written.
* :func:`twistd_observer` builds the observer that ``twistd`` installs instead of its own: the composition
  root hands it to the application as its ``ILogObserver`` component (which ``twistd`` prefers over its own),
  writing where ``twistd`` would have written (``--logfile``, stdout under ``-n``): JSON lines, or twistd's
  classic text lines with the timestamp formatted once a second (:func:`text_file_observer`).
* :func:`security_event` is the one way to log a security event (failed OPER, SASL failure, per-IP or
  connection-rate refusal, rejected S2S peer, K-line hit): at ``warn``, with the client IP as the named field
  ``ip`` and in the text, before the details (fail2ban: ``failregex = <kind text> from <HOST>``; see
  docs/logging.md), the kind as the field ``security``, and counted in :class:`freeq.metrics.Metrics` when
  ``metrics`` is given.
* :func:`log_connect` and :func:`log_quit`: the ``info`` lines of clients coming and going, silenced by
  ``--log-connections off`` (the counters in ``/metrics`` are kept either way).
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from typing import IO, Any, Callable, Mapping, Optional

from twisted.logger import FileLogObserver, ILogObserver, Logger, formatEvent, formatEventAsClassicLogText, formatTime

#: Security event kinds (the ``security`` field) and the words that open their line when the caller's text
#: does not name ``{ip}`` itself.
SECURITY_KINDS: dict[str, str] = {
    "oper_failure": "failed OPER",
    "sasl_failure": "SASL failure",
    "per_ip_limit": "per-IP limit reached",
    "connection_rate": "connection rate exceeded",
    "s2s_rejected": "rejected S2S peer",
    "kline_hit": "K-line hit",
    "dline_hit": "D-line hit",
    "webirc_refused": "WEBIRC refused",
}

LOG_FORMATS = ("text", "json")

#: Keys of legacy (``twisted.python.log``) events that are plumbing, not fields.
_LEGACY_KEYS = frozenset({"message", "format", "isError", "time", "why", "failure", "printed", "log_legacy"})
#: A field whose lower-cased name contains one of these is never written (defence in depth: nothing logs
#: a secret as a field today, see docs/logging.md).
_SECRET_WORDS = ("password", "secret", "token", "credential", "signature", "private")
#: The longest string field written (the message itself is not cut).
MAX_FIELD_CHARS = 2048


def _json_safe(value: Any) -> Optional[Any]:
    """``value`` if it can be written as plain JSON (a cut string, a finite number), else ``None``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "..."
    return None


def _legacy_text(event: Mapping[str, Any]) -> str:
    """The text of a ``twisted.python.log`` event that carries no new-style format (its message tuple)."""
    message = event.get("message")
    if isinstance(message, (tuple, list)):
        return " ".join(str(part) for part in message)
    return ""


def is_secret_field(name: str) -> bool:
    """Whether a field named ``name`` may hold a secret (and so is never written in JSON)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def json_line(event: Mapping[str, Any]) -> str:
    """One event as one line of JSON (without the newline).

    ``timestamp`` (ISO-8601 UTC, milliseconds), ``level``, ``namespace``, ``message`` (the rendered text;
    a logged failure adds ``traceback``), then every named field with a JSON-safe value (``null``, booleans,
    numbers, strings), except those of :func:`is_secret_field` and Twisted's own ``log_*`` keys.
    """
    when = event.get("log_time")
    try:
        stamp = datetime.fromtimestamp(float(when), tz=timezone.utc)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        stamp = datetime.now(tz=timezone.utc)
    level = event.get("log_level")
    out: dict[str, Any] = {
        "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
        "level": getattr(level, "name", None) or ("error" if event.get("isError") else "info"),
        "namespace": str(event.get("log_namespace") or event.get("system") or "-"),
        "message": formatEvent(dict(event)) or _legacy_text(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in _LEGACY_KEYS or key in out:
            continue
        if is_secret_field(key):
            continue
        safe = _json_safe(value)
        if safe is not None or value is None:
            out[key] = safe
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def json_file_observer(out: IO[str]) -> FileLogObserver:
    """An observer writing each event to ``out`` as one JSON object per line (plain JSON lines, unlike
    ``twisted.logger.jsonFileLogObserver``, whose records start with an ASCII record separator)."""
    return FileLogObserver(out, lambda event: json_line(event) + "\n")


def twistd_log_file(twistd_options: Mapping[str, Any]) -> Optional[IO[str]]:
    """The file ``twistd`` would log to, by its own rules (``twisted.scripts._twistd_unix.UnixAppLogger``):
    stdout for ``--logfile -`` or ``--nodaemon`` without ``--logfile``, else ``--logfile`` (default
    ``twistd.log``) as a rotating ``LogFile`` (``SIGUSR1`` rotates it). ``None`` where ``twistd``'s own choice
    must stand: ``--syslog``, ``--logger``, and ``--logfile -`` for a daemon (which twistd refuses)."""
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    name = twistd_options.get("logfile")
    nodaemon = bool(twistd_options.get("nodaemon"))
    if name == "-" and not nodaemon:
        return None  # twistd's own choice stands: it exits with "Daemons cannot log to stdout"
    if name == "-" or (nodaemon and not name):
        return sys.stdout
    from twisted.python import logfile

    log_file = logfile.LogFile.fromFullPath(name or "twistd.log")
    try:
        import signal
    except ImportError:  # pragma: no cover - every POSIX has it
        return log_file
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(_signum: int, _frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file  # type: ignore[return-value]


def cached_time_format() -> Callable[[Optional[float]], str]:
    """``twisted.logger.formatTime`` (RFC 3339 to the second, local offset) computed once per second: it is a
    third of the cost of a classic text line (about 5 of 14 µs), paid by every connect and quit line."""
    last: list[tuple[Optional[int], str]] = [(None, "")]  # one tuple, swapped whole: safe for threads that log

    def format_time(when: Optional[float]) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        held, text = last[0]
        if second != held:
            text = formatTime(second)
            last[0] = (second, text)
        return text

    return format_time


def text_file_observer(out: IO[str]) -> FileLogObserver:
    """An observer writing each event to ``out`` in twistd's classic text format (the same lines as
    ``twisted.logger.textFileLogObserver``), with the timestamp formatted once per second."""
    format_time = cached_time_format()
    return FileLogObserver(out, lambda event: formatEventAsClassicLogText(event, formatTime=format_time))


def twistd_observer(twistd_options: Optional[Mapping[str, Any]], log_format: str) -> Optional[FileLogObserver]:
    """The observer (``log_format`` ``json`` or ``text``) for a server run by ``twistd`` with these (top-level)
    options, writing where twistd would; ``None`` when not run by ``twistd`` or when ``twistd`` must keep its
    own (``--syslog``, ``--logger``)."""
    if twistd_options is None:
        return None
    out = twistd_log_file(twistd_options)
    if out is None:
        return None
    return json_file_observer(out) if log_format == "json" else text_file_observer(out)


def twistd_json_observer(twistd_options: Optional[Mapping[str, Any]]) -> Optional[FileLogObserver]:
    """The JSON observer for a server run by ``twistd`` with these (top-level) options; ``None`` when not run
    by ``twistd`` or when ``twistd`` must keep its own (``--syslog``, ``--logger``)."""
    return twistd_observer(twistd_options, "json")


def offer_log_observer(parent: Any, observer: Any) -> None:
    """Make ``observer`` the log observer of ``parent`` when it is a ``twistd`` application (a componentized
    object): ``twistd`` asks the application for an ``ILogObserver`` before it builds its own."""
    set_component = getattr(parent, "setComponent", None)
    if set_component is not None and ILogObserver.providedBy(observer):
        set_component(ILogObserver, observer)


def security_event(log: Logger, kind: str, ip: str, text: str, metrics: Any = None, **fields: Any) -> None:
    """Log one security event at ``warn`` (and count it in ``metrics`` when given).

    ``kind`` is one of :data:`SECURITY_KINDS` (the field ``security``); ``ip`` the client's address (the
    field ``ip``); ``text`` a ``twisted.logger`` format over ``fields``. A text that does not name ``{ip}``
    is opened with the kind's words and the address, so every such line reads ``<words> from <ip>: ...``
    with the address early for fail2ban. Rate-limited callers count every event themselves and call this only
    for the lines their budget allows.
    """
    if metrics is not None:
        count = getattr(metrics, "count_security", None)
        if count is not None:
            count(kind)
    if "{ip}" not in text:
        text = SECURITY_KINDS.get(kind, kind) + " from {ip}: " + text
    log.warn(text, ip=ip, security=kind, **fields)


def log_connect(log: Logger, config: Any, ip: str, secure: bool, transport: str) -> None:
    """``client connected from <ip>`` at ``info`` (unless ``--log-connections off``)."""
    if getattr(config, "log_connections", True):
        log.info("client connected from {ip} ({transport})", ip=ip, secure=secure, transport=transport)


def log_quit(log: Logger, config: Any, nick: str, ip: str, reason: str, registered: bool) -> None:
    """``client <nick> quit from <ip>: <reason>`` at ``info`` (unless ``--log-connections off``)."""
    if getattr(config, "log_connections", True):
        log.info("client {nick} quit from {ip}: {reason}", nick=nick, ip=ip, reason=reason, registered=registered)
