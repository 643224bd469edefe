"""The config file (issue #13 item 1): ``--config``/``FREEQ_CONFIG`` read with tomllib, keys named as the flags,
precedence flag > env > file, secrets through ``<flag>-file``, one-line errors naming the file and key, the
array-of-tables registry (``freeq.config.BLOCKS``) and the commented example ``docs/freeq.example.toml``."""
from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Mapping, Optional

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

import freeq.config
from freeq.config import Config, ConfigError, Listen, parse_kline_blocks
from freeq.tap import OPTIONS, Options, config_from_options

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "freeq.example.toml"


def parse(*argv: str) -> Options:
    """Parse ``twistd freeq`` arguments the way twistd does."""
    options = Options()
    options.parseOptions(list(argv))
    return options


class ConfigFileTests(unittest.TestCase):
    """The file's values land in Config under the command line and the environment."""

    def write(self, text: str, name: str = "freeq.toml", mode: int = 0o600) -> str:
        """Write ``text`` to a new file ``name`` (mode ``mode``) and return its absolute path."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.abspath(os.path.join(directory, name))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def load(self, text: str, *argv: str, environ: Optional[Mapping[str, str]] = None) -> Config:
        """The Config of the config file ``text`` with the command line ``argv`` and ``environ``."""
        path = self.write(text)
        return config_from_options(parse("--config", path, *argv), environ or {})

    def error(self, text: str, *argv: str, environ: Optional[Mapping[str, str]] = None) -> tuple[str, str]:
        """The one-line error for the file ``text`` and the file's path."""
        path = self.write(text)
        with self.assertRaises(ConfigError) as ctx:
            config_from_options(parse("--config", path, *argv), environ or {})
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        return message, path

    def logged(self) -> list[dict[str, Any]]:
        """Every log event from now until the end of the test."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_keys_are_flag_names(self) -> None:
        """Valued flags, on/off flags, arrays, comma strings and numbers as strings all read as the flags would."""
        config = self.load('listen-addr = "0.0.0.0:7000"\nnick-len = 30\nflood-rate = "2.5"\nping-interval = 30\n'
                           'ping-timeout = 61.5\noper-dids = ["did:plc:aaa", "did:web:b.example"]\n'
                           'trusted-proxies = "10.0.0.1, 10.0.0.2"\nallow-private-network = true\n'
                           'sasl-plain = false\nplugin = ["shout-filter"]\n')
        self.assertEqual(config.listen, Listen("0.0.0.0", 7000))
        self.assertEqual((config.nick_len, config.flood_rate, config.ping_interval, config.ping_timeout),
                         (30, 2.5, 30.0, 61.5))
        self.assertEqual(config.oper_dids, ("did:plc:aaa", "did:web:b.example"))
        self.assertEqual(config.trusted_proxies, ("10.0.0.1", "10.0.0.2"))
        self.assertTrue(config.allow_private_network)
        self.assertFalse(config.sasl_plain)
        self.assertEqual(config.plugins, ("shout-filter",))

    def test_config_path_is_recorded(self) -> None:
        """Config.config_path is the file's absolute path; FREEQ_CONFIG names the file when --config does not."""
        path = self.write('nick-len = 12\n')
        config = config_from_options(parse(), {"FREEQ_CONFIG": path})
        self.assertEqual((config.config_path, config.nick_len), (os.path.abspath(path), 12))
        self.assertIsNone(config_from_options(parse(), {}).config_path)

    def test_precedence_flag_env_file_default(self) -> None:
        """A flag given on the command line beats the environment, which beats the file, which beats the default;
        a flag left at its default does not hide the file's value."""
        text = 'nick-len = 30\nserver-password = "from-file"\noper-password = "file-oper"\nmax-clients = 50\n'
        config = self.load(text, "--nick-len", "20", environ={"SERVER_PASSWORD": "from-env"})
        self.assertEqual(config.nick_len, 20)  # flag over file
        self.assertEqual(config.server_password, "from-env")  # env over file
        self.assertEqual(config.oper_password, "file-oper")  # file over nothing
        self.assertEqual(config.max_clients, 50)  # file over the default
        self.assertEqual(config.max_monitor, Config().max_monitor)  # default
        config = self.load(text, "--server-password", "from-flag", environ={"SERVER_PASSWORD": "from-env"})
        self.assertEqual(config.server_password, "from-flag")  # flag over env

    def test_flag_given_with_its_default_value_still_wins(self) -> None:
        """``--nick-len 64`` (the default value, but given) overrides the file: explicit, not merely default."""
        self.assertEqual(self.load('nick-len = 30\n', "--nick-len", "64").nick_len, 64)
        self.assertTrue(self.load('iroh = false\n', "--iroh").iroh)

    def test_secret_from_file(self) -> None:
        """``<flag>-file`` reads the secret, one trailing newline stripped; the generic rule covers any
        ``*-password``/``*-secret``/``*-token`` flag (metrics-token here)."""
        secret = self.write("s3cret-value\n", "oper.secret")
        token = self.write("t" * 20 + "\r\n", "metrics.secret")
        config = self.load(f'oper-password-file = "{secret}"\nmetrics-token-file = "{token}"\n'
                           f'broker-shared-secret-file = "{secret}"\n')
        self.assertEqual(config.oper_password, "s3cret-value")
        self.assertEqual(config.broker_shared_secret, "s3cret-value")
        self.assertEqual(config.metrics_token, "t" * 20)

    def test_secret_file_refused(self) -> None:
        """An empty, unreadable or multi-line secret file is refused with one line naming the file and key."""
        empty = self.write("\n", "empty.secret")
        message, path = self.error(f'server-password-file = "{empty}"\n')
        self.assertEqual(message, f"{path}: server-password-file: {empty} is empty")
        missing = os.path.join(self.mktemp(), "nope")
        message, path = self.error(f'server-password-file = "{missing}"\n')
        self.assertTrue(message.startswith(f"{path}: server-password-file: cannot read {missing}"), message)
        two = self.write("a\nb\n", "two.secret")
        message, _ = self.error(f'server-password-file = "{two}"\n')
        self.assertIn("more than one line", message)
        secret = self.write("x\n", "x.secret")
        message, _ = self.error(f'server-password = "y"\nserver-password-file = "{secret}"\n')
        self.assertIn("server-password: given both inline and as server-password-file", message)
        message, _ = self.error(f'server-password-file = "{secret}"\nserver-password = "y"\n')  # either order
        self.assertIn("server-password: given both inline and as server-password-file", message)

    def test_readable_secret_file_warns(self) -> None:
        """A secret file that group or others may read is used, with a warning naming it (not its content)."""
        events = self.logged()
        secret = self.write("hunter2-secret\n", "oper.secret", mode=0o644)
        self.assertEqual(self.load(f'oper-password-file = "{secret}"\n').oper_password, "hunter2-secret")
        warned = [e for e in events if "readable by group or others" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["file"], secret)
        self.assertNotIn("hunter2", repr(events))

    def test_unknown_key(self) -> None:
        """An unknown key (a typo, a -file key of a non-secret flag) is one line naming the file and the key."""
        message, path = self.error('nick-lenght = 30\n')
        self.assertEqual(message, f"{path}: unknown key 'nick-lenght' (keys are the flag names of twistd freeq)")
        message, _ = self.error('server-name-file = "/etc/hostname"\n')
        self.assertIn("unknown key 'server-name-file'", message)
        message, _ = self.error('config = "/other.toml"\n')
        self.assertIn("unknown key 'config'", message)

    def test_wrong_type(self) -> None:
        """A value of the wrong TOML type names the file, the key and what was expected."""
        message, path = self.error('nick-len = [30]\n')
        self.assertEqual(message, f"{path}: nick-len: expected a whole number, got an array")
        message, path = self.error('iroh = "yes"\n')
        self.assertEqual(message, f"{path}: iroh: expected true or false, got a string")
        message, _ = self.error('oper-dids = ["did:plc:a", 5]\n')
        self.assertIn("oper-dids: expected an array of strings, got a number", message)
        message, _ = self.error('listen-addr = 6667\n')
        self.assertIn("listen-addr: expected a string, got a number", message)
        message, _ = self.error('[kline]\nmask = "x"\n')
        self.assertIn("kline: expected [[kline]] blocks", message)

    def test_bad_value(self) -> None:
        """A well-typed but invalid value is refused by the same validation as the flag, naming file and key."""
        message, path = self.error('nick-len = 99\n')
        self.assertEqual(message, f"{path}: nick-len: must be between 9 and 64, got 99")
        message, path = self.error('listen-addr = "nowhere"\n')
        self.assertEqual(message, f"{path}: listen-addr: expected HOST:PORT, got 'nowhere'")
        message, path = self.error('max-clients = "many"\n')
        self.assertEqual(message, f"{path}: max-clients: expected a whole number, got 'many'")
        # The same bad value given as a flag names the flag, as before.
        message, _ = self.error('nick-len = 30\n', "--nick-len", "99")
        self.assertEqual(message, "--nick-len: must be between 9 and 64, got 99")

    def test_not_toml(self) -> None:
        """A file that is not TOML (or cannot be read) is one line naming the file."""
        message, path = self.error('nick-len = = 3\n')
        self.assertTrue(message.startswith(f"{path}: not valid TOML: "), message)
        with self.assertRaises(ConfigError) as ctx:
            config_from_options(parse("--config", "/nonexistent/freeq.toml"), {})
        self.assertTrue(str(ctx.exception).startswith("--config: cannot read /nonexistent/freeq.toml"))

    def test_kline_blocks(self) -> None:
        """[[kline]] blocks become Config.config_bans; a bad one is refused naming the block."""
        config = self.load('[[kline]]\nmask = "*@192.0.2.0/24"\nreason = "Spam  range"\n'
                           '[[kline]]\nmask = "did:plc:abc"\nreason = "abuse"\n')
        self.assertEqual(config.config_bans, (("*@192.0.2.0/24", "Spam  range"), ("did:plc:abc", "abuse")))
        message, path = self.error('[[kline]]\nmask = "a b"\nreason = "x"\n')
        self.assertEqual(message, f"{path}: [[kline]] #1: mask may not contain spaces or control characters")
        message, _ = self.error('[[kline]]\nmask = "*@x"\n')
        self.assertIn("[[kline]] #1: reason must be a non-empty string", message)
        message, _ = self.error('[[kline]]\nmask = "*@x"\nreason = "r"\nduration = 5\n')
        self.assertIn("[[kline]] #1: unknown key 'duration'", message)

    def test_kline_parser_bounds(self) -> None:
        """The [[kline]] parser bounds lengths and refuses control characters in the reason."""
        with self.assertRaises(ConfigError):
            parse_kline_blocks([{"mask": "m" * 300, "reason": "r"}])
        with self.assertRaises(ConfigError):
            parse_kline_blocks([{"mask": "*@x", "reason": "bad\x01reason"}])
        self.assertEqual(parse_kline_blocks([]), ())

    def test_blocks_registry(self) -> None:
        """Each array-of-tables block goes to its registered parser and fills its Config field; the oper blocks
        go to freeq.opers.parse_oper_blocks."""
        seen: list[Any] = []

        def fake_oper_parser(blocks: Any) -> tuple[Any, ...]:
            seen.append(blocks)
            return ("parsed",)

        self.patch(freeq.config, "BLOCKS", {"oper": ("opers", fake_oper_parser),
                                            "kline": freeq.config.BLOCKS["kline"]})
        config = self.load('[[oper]]\nname = "alice"\ndid = "did:plc:abc"\n')
        self.assertEqual(seen, [[{"name": "alice", "did": "did:plc:abc"}]])
        self.assertEqual(config.opers, ("parsed",))

    def test_blocks_registry_errors_name_file(self) -> None:
        """A block parser's ConfigError comes back as one line naming the file and the block."""
        def refuse(blocks: Any) -> Any:
            raise ConfigError("gateway 1: password missing")

        self.patch(freeq.config, "BLOCKS", dict(freeq.config.BLOCKS, webirc=("config_bans", refuse)))
        message, path = self.error('[[webirc]]\nname = "x"\n')
        self.assertEqual(message, f"{path}: [[webirc]]: gateway 1: password missing")

    def test_oper_blocks_reach_the_oper_parser(self) -> None:
        """The real registry sends [[oper]] to freeq.opers.parse_oper_blocks."""
        calls: list[Any] = []
        import freeq.opers

        self.patch(freeq.opers, "parse_oper_blocks", lambda blocks: calls.append(blocks) or ())
        self.load('[[oper]]\nname = "bob"\ndid = "did:plc:abc"\n')
        self.assertEqual(calls, [[{"name": "bob", "did": "did:plc:abc"}]])


class ExampleFileTests(unittest.TestCase):
    """docs/freeq.example.toml documents every key and is a valid config."""

    def test_every_flag_has_a_key(self) -> None:
        """Each valued flag (OPTIONS) and on/off flag (optFlags) appears as a key, set or commented."""
        text = EXAMPLE.read_text(encoding="utf-8")
        keys = {m.group(1) for m in re.finditer(r"^#?\s*([a-z0-9-]+)\s*=", text, re.MULTILINE)}
        flags = [row[0] for row in OPTIONS] + [row[0] for row in Options.optFlags]
        missing = []
        for flag in flags:
            if flag not in keys and flag + "-file" not in keys:
                missing.append(flag)
        self.assertEqual(missing, [])
        self.assertIn("[[oper]]", text)
        self.assertIn("[[kline]]", text)
        self.assertIn("scrypt$", text)

    def test_example_loads_and_validates(self) -> None:
        """The example file, as shipped, loads and validates with loopback listeners and no inline secret."""
        config = config_from_options(parse("--config", str(EXAMPLE)), {})
        self.assertEqual(config.listen, Listen("127.0.0.1", 6667))
        self.assertEqual(config.tls_listen, Listen("127.0.0.1", 6697))
        self.assertIsNone(config.server_password)
        self.assertIsNone(config.oper_password)
        self.assertEqual(config.config_path, str(EXAMPLE))
