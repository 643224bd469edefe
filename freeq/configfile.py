"""The TOML config file (``--config PATH`` or ``FREEQ_CONFIG``), read with the standard library's ``tomllib``.

The file's keys are the flag names of ``twistd freeq`` (``listen-addr = "0.0.0.0:6667"``, ``iroh = true``);
a secret may instead be named by ``<flag>-file`` (``oper-password-file = "/etc/freeq/oper.secret"``), and the
array-of-tables blocks (``[[oper]]``, ``[[kline]]``, ...) go to the parsers of
:data:`freeq.config.BLOCKS`. This module only reads and type-checks the file into the raw values a flag
would have had; :func:`freeq.tap.config_from_options` merges them under the command line and the
environment and validates the result into one :class:`freeq.config.Config`. Every problem is one
:class:`freeq.config.ConfigError` line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from typing import Any, Collection, Mapping, Optional

from twisted.logger import Logger

from freeq.config import ConfigError

log = Logger()

#: The largest config file read (a config is a few kilobytes; this bounds a mistaken path to a big file).
MAX_CONFIG_BYTES = 1024 * 1024
#: The largest secret file read through a ``<flag>-file`` key.
MAX_SECRET_BYTES = 64 * 1024
#: Flag names ending so hold a secret: they may be given as ``<flag>-file``, and inline in a file others can
#: read they are warned about. A new secret flag that is named otherwise goes in :data:`SECRET_FLAGS`.
SECRET_SUFFIXES = ("-password", "-secret", "-token")
#: Secret flags whose names do not end in one of :data:`SECRET_SUFFIXES`.
SECRET_FLAGS: set[str] = set()
#: The suffix of a key that names a file holding a secret flag's value.
FILE_SUFFIX = "-file"
#: Option kinds (the converter column of ``freeq.tap.OPTIONS``) whose values may be a TOML array of strings.
LIST_KINDS = frozenset({"list", "s2s-peers", "s2s-ids", "s2s-trust"})


def is_secret_flag(flag: str) -> bool:
    """Whether the valued flag ``flag`` holds a secret (may be given as ``<flag>-file``; never logged)."""
    return flag in SECRET_FLAGS or flag.endswith(SECRET_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class FileSettings:
    """What one config file says: ``values`` as raw flag values (by flag name), ``blocks`` by block name."""

    path: str
    values: dict[str, Any]
    blocks: dict[str, list[dict[str, Any]]]

    def locate(self, message: str, overridden: Collection[str] = ()) -> str:
        """``message`` (a ConfigError line such as ``--nick-len: must be ...``) told as the file's, when the flag it
        starts with came from this file (and not ``overridden`` by the command line or environment)."""
        if not message.startswith("--"):
            return message
        flag = message[2:].split(":", 1)[0].split(" ", 1)[0]
        if flag not in self.values or flag in overridden:
            return message
        if message[2:].startswith(flag + ":"):
            return f"{self.path}: {message[2:]}"
        return f"{self.path}: {message}"


def _read_bytes(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise ConfigError(f"{what}: {path} is larger than {limit} bytes")
    return data


def _readable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def read_secret_file(config_path: str, key: str, path: Any) -> str:
    """The secret in ``path`` (the value of ``key`` in ``config_path``): the file's text less one trailing newline.

    An unreadable, empty, oversized or multi-line file is refused (one line); a file that group or others may
    read is used, with a warning.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{config_path}: {key}: expected a file name (a string)")
    data = _read_bytes(path, MAX_SECRET_BYTES, f"{config_path}: {key}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{config_path}: {key}: {path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(f"{config_path}: {key}: {path} is empty")
    if any(ch in text for ch in "\r\n\x00"):
        raise ConfigError(f"{config_path}: {key}: {path} holds more than one line")
    if _readable_by_others(path):
        log.warn("secret file {file} ({key}) is readable by group or others: chmod 600 it", file=path, key=key)
    return text


def _type_error(path: str, key: str, expected: str, value: Any) -> ConfigError:
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
    return ConfigError(f"{path}: {key}: expected {expected}, got {kind}")


def _param_value(path: str, key: str, kind: str, value: Any) -> Any:
    """The raw value (as the command line would give it) of the valued flag ``key`` of ``kind``, type-checked."""
    if kind in LIST_KINDS:
        if isinstance(value, list):
            items = []
            for item in value:
                if not isinstance(item, str):
                    raise _type_error(path, key, "an array of strings", item)
                if "," in item:
                    raise ConfigError(f"{path}: {key}: an array item may not contain a comma, got {item[:80]!r}")
                items.append(item)
            return ",".join(items)
        if isinstance(value, str):
            return value
        raise _type_error(path, key, "an array of strings or a comma-separated string", value)
    if kind == "int":
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return value
        raise _type_error(path, key, "a whole number", value)
    if kind == "float":
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return value
        raise _type_error(path, key, "a number", value)
    if kind == "onoff":
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            return value
        raise _type_error(path, key, "true/false or \"on\"/\"off\"", value)
    if kind == "weblisten" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    if kind not in ("str", "listen", "weblisten") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # a kind added later: numbers pass to its converter, which checks them
    raise _type_error(path, key, "a string", value)


def read_config_file(path: str, params: Mapping[str, str], flags: Collection[str],
                     blocks: Collection[str], repeatable: Collection[str] = ("plugin",)) -> FileSettings:
    """Read and type-check the config file at ``path``.

    ``params`` maps each valued flag to its kind (``freeq.tap.OPTIONS``), ``flags`` names the on/off flags,
    ``blocks`` the array-of-tables names (:data:`freeq.config.BLOCKS`), ``repeatable`` the repeatable flags
    (``--plugin``: an array of strings). Returns the raw values by flag name (a ``<flag>-file`` key read
    into ``<flag>``) and the blocks; raises :class:`ConfigError` (one line, naming the file and the key).
    """
    data = _read_bytes(path, MAX_CONFIG_BYTES, "--config")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {str(e).splitlines()[0] if str(e) else 'syntax error'}") from None
    values: dict[str, Any] = {}
    found_blocks: dict[str, list[dict[str, Any]]] = {}
    inline_secrets = []
    for key, value in doc.items():
        if key in blocks:
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError(f"{path}: {key}: expected [[{key}]] blocks (an array of tables)")
            found_blocks[key] = value
        elif key in params:
            if key in values:  # its -file key came first
                raise ConfigError(f"{path}: {key}: given both inline and as {key}{FILE_SUFFIX}")
            values[key] = _param_value(path, key, params[key], value)
            if is_secret_flag(key):
                inline_secrets.append(key)
        elif key in flags:
            if not isinstance(value, bool):
                raise _type_error(path, key, "true or false", value)
            values[key] = value
        elif key in repeatable:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _type_error(path, key, "an array of strings", value)
            values[key] = list(value)
        elif key.endswith(FILE_SUFFIX) and key[:-len(FILE_SUFFIX)] in params \
                and is_secret_flag(key[:-len(FILE_SUFFIX)]):
            flag = key[:-len(FILE_SUFFIX)]
            if flag in values:
                raise ConfigError(f"{path}: {flag}: given both inline and as {key}")
            values[flag] = read_secret_file(path, key, value)
        else:
            raise ConfigError(f"{path}: unknown key {key[:80]!r} (keys are the flag names of twistd freeq)")
    if inline_secrets and _readable_by_others(path):
        log.warn("config file {file} holds {keys} inline and is readable by group or others: chmod 600 it, or use "
                 "{first}-file", file=path, keys=", ".join(sorted(inline_secrets)), first=inline_secrets[0])
    return FileSettings(path, values, found_blocks)


def config_path(options: Mapping[str, Any], environ: Mapping[str, str]) -> Optional[str]:
    """The config file to read: ``--config``, else the environment's ``FREEQ_CONFIG``, else none (made absolute,
    so a reload finds the same file)."""
    path = options.get("config") or environ.get("FREEQ_CONFIG") or None
    return os.path.abspath(str(path)) if path else None
