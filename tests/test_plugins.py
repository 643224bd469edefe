"""Operator plugins: discovery, the shout-filter example, unknown names, and hooks that fail."""
from __future__ import annotations

from typing import Any, Optional, cast

from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.trial import unittest

from freeq.config import ConfigError
from freeq.plugins import BaseHook, IFreeqPlugin, IServerHook, PluginError, available_plugins, load_plugins
from freeq.tap import make_irc_server
from tests.support import asynctest, make_config, start_server


class BrokenHook(BaseHook):
    """A hook whose every method raises, as a buggy operator plugin might."""

    def on_connect(self, ip: str) -> Optional[str]:
        raise ZeroDivisionError("on_connect")

    def on_register(self, user: Any) -> None:
        raise ZeroDivisionError("on_register")

    def on_join(self, user: Any, channel: Any) -> None:
        raise ZeroDivisionError("on_join")

    def on_message(self, user: Any, command: str, target: str, text: str) -> Optional[str]:
        raise ZeroDivisionError("on_message")


class DiscoveryTests(unittest.TestCase):
    """The example plugin is found through twisted.plugin like any operator plugin."""

    def test_available_plugins_lists_shout_filter(self) -> None:
        """available_plugins() finds 'shout-filter', providing IPlugin and IFreeqPlugin."""
        plugins = available_plugins()
        self.assertIn("shout-filter", plugins)
        plugin = plugins["shout-filter"]
        self.assertTrue(IPlugin.providedBy(plugin))
        self.assertTrue(IFreeqPlugin.providedBy(plugin))
        self.assertTrue(plugin.description)
        self.assertTrue(IServerHook.providedBy(plugin.make_hook(None)))

    def test_unknown_plugin_name_is_a_config_error(self) -> None:
        """An unknown --plugin name fails with a one-line message listing what is installed."""
        with self.assertRaises(ConfigError) as ctx:
            make_irc_server(make_config(plugins=("shout-filter", "no-such-plugin")), Clock())
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("--plugin: unknown plugin no-such-plugin"), message)
        self.assertIn("shout-filter", message)
        self.assertRaises(PluginError, load_plugins, ["no-such-plugin"])

    def test_shout_filter_rules(self) -> None:
        """Only text longer than 10 characters and all in capitals is rejected."""
        hook = available_plugins()["shout-filter"].make_hook(None)
        self.assertEqual(hook.on_message(None, "PRIVMSG", "#c", "HELLO EVERYONE"), "Please don't shout")
        self.assertEqual(hook.on_message(None, "NOTICE", "bob", "STOP THAT NOW!"), "Please don't shout")
        self.assertIsNone(hook.on_message(None, "PRIVMSG", "#c", "HELLO OK!!"))  # exactly 10 characters
        self.assertIsNone(hook.on_message(None, "PRIVMSG", "#c", "Hello Everyone"))
        self.assertIsNone(hook.on_message(None, "PRIVMSG", "#c", "1234567890123"))


class ShoutFilterServerTests(unittest.TestCase):
    """The shout-filter plugin enabled on a real server."""

    @asynctest
    async def test_shouting_is_rejected_and_normal_text_delivered(self) -> None:
        """Shouting gets 404 with the plugin's reason and is not delivered; normal text is."""
        srv = await start_server(self, plugins=("shout-filter",))
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        for c in (alice, bob):
            c.send("JOIN #chat")
            await c.expect("366")
        bob.skip()

        alice.send("PRIVMSG bob :STOP SHOUTING AT ME")
        refusal = await alice.expect("404")
        self.assertEqual(refusal.raw, ":freeq 404 alice bob :Please don't shout")
        alice.send("PRIVMSG #chat :EVERYONE LISTEN UP")
        refusal = await alice.expect("404")
        self.assertEqual(refusal.params, ["alice", "#chat", "Please don't shout"])
        alice.send("NOTICE bob :SILENTLY DROPPED NOTICE")
        alice.send("PRIVMSG bob :hello bob, quietly")
        got = await bob.expect("PRIVMSG")
        self.assertEqual(got.params, ["bob", "hello bob, quietly"])
        alice.send("PRIVMSG #chat :OK")
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["#chat", "OK"])
        await alice.expect_not("404")  # the NOTICE was dropped without a reply
        from_alice = [l.params for l in bob.lines if (l.source or "").startswith("alice!")]
        self.assertEqual(from_alice, [["bob", "hello bob, quietly"], ["#chat", "OK"]])


class FailingHookTests(unittest.TestCase):
    """A plugin that raises is logged and ignored; the server keeps working."""

    @asynctest
    async def test_raising_hook_does_not_break_delivery(self) -> None:
        """With a hook that raises everywhere, clients still connect, register, join and talk."""
        srv = await start_server(self)
        srv.server.hooks.append(cast(IServerHook, BrokenHook()))
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        for c in (alice, bob):
            c.send("JOIN #chat")
            await c.expect("366")
        alice.send("PRIVMSG #chat :still delivered")
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["#chat", "still delivered"])
        alice.send("PRIVMSG bob :privately too")
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["bob", "privately too"])
        errors = self.flushLoggedErrors(ZeroDivisionError)
        kinds = sorted({str(f.value) for f in errors})
        self.assertEqual(kinds, ["on_connect", "on_join", "on_message", "on_register"])

    @asynctest
    async def test_raising_hook_before_a_rejecting_one(self) -> None:
        """A raising hook does not stop the next hook from rejecting a message."""
        srv = await start_server(self, plugins=("shout-filter",))
        srv.server.hooks.insert(0, cast(IServerHook, BrokenHook()))
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        alice.send("PRIVMSG bob :THIS IS SHOUTING")
        self.assertEqual((await alice.expect("404")).params[-1], "Please don't shout")
        alice.send("PRIVMSG bob :this is fine")
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["bob", "this is fine"])
        self.flushLoggedErrors(ZeroDivisionError)
