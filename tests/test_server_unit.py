"""Pure unit tests of IRCServer: driven with a Clock and fake connections, no sockets."""
from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.config import Config
from freeq.core.server import IRCServer, server_time
from freeq.irc.parser import Message, parse
from freeq.state.user import User

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
EPOCH = 1700000000.0  # 2023-11-14T22:13:20Z


class FakeConnection:
    """The attributes IRCServer touches on a connection, and a record of close()."""

    def __init__(self) -> None:
        self.ping_sent = False
        self.secure = False
        self.oper_failures = 0
        self.closed = False
        self.closed_after: int = -1  # how many writes the user had seen when close() was called
        self.sink: list[bytes] = []

    def close(self) -> None:
        self.closed = True
        self.closed_after = len(self.sink)


Conn = tuple[User, list[bytes], FakeConnection]


def parse_bytes(data: bytes) -> Message:
    """Parse one CRLF-terminated line as sent on the wire."""
    assert data.endswith(b"\r\n"), data
    msg = parse(data[:-2].decode("utf-8"))
    assert msg is not None, data
    return msg


class ServerTestCase(unittest.TestCase):
    """A fresh IRCServer on a Clock set to a known instant, and helpers to make users."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.server = IRCServer(Config(server_name="irc.test", listen=None, tls_listen=None), self.clock)

    def connect(self) -> tuple[User, list[bytes], FakeConnection]:
        """A new unregistered connection whose output lands in the returned list."""
        conn = FakeConnection()
        user = self.server.connect(conn, conn.sink.append, "10.0.0.1")
        return user, conn.sink, conn

    def send(self, user: User, line: str) -> None:
        """Feed one client line to the server."""
        msg = parse(line)
        assert msg is not None, line
        self.server.handle(user, msg)

    def register(self, nick: str, caps: tuple[str, ...] = ()) -> tuple[User, list[bytes], FakeConnection]:
        """Connect, negotiate ``caps`` and register as ``nick``; the welcome burst is discarded."""
        user, sink, conn = self.connect()
        if caps:
            self.send(user, "CAP LS 302")
            self.send(user, "CAP REQ :" + " ".join(caps))
        self.send(user, f"NICK {nick}")
        self.send(user, f"USER {nick} 0 * :Real {nick}")
        if caps:
            self.send(user, "CAP END")
        self.assertTrue(user.registered)
        for cap in caps:
            self.assertIn(cap, user.caps)
        del sink[:]
        return user, sink, conn

    def commands(self, sink: list[bytes]) -> list[str]:
        """The commands of the lines in ``sink``."""
        return [parse_bytes(line).command for line in sink]


class RegistrationTests(ServerTestCase):
    """The welcome burst."""

    def test_no_output_before_user(self) -> None:
        """NICK alone does not register or write anything."""
        user, sink, _ = self.connect()
        self.send(user, "NICK alice")
        self.assertFalse(user.registered)
        self.assertEqual(sink, [])

    def test_welcome_sequence_in_order(self) -> None:
        """NICK + USER sends 001-004, the 005 lines, LUSERS and 422 in that order."""
        user, sink, _ = self.connect()
        self.send(user, "NICK alice")
        self.send(user, "USER al 0 * :Alice A")
        self.assertTrue(user.registered)
        cmds = self.commands(sink)
        collapsed = [c for i, c in enumerate(cmds) if i == 0 or c != cmds[i - 1]]
        self.assertEqual(collapsed, ["001", "002", "003", "004", "005", "251", "252", "253", "254",
                                     "255", "265", "266", "422"])
        self.assertGreaterEqual(cmds.count("005"), 2)
        first = parse_bytes(sink[0])
        self.assertEqual(first.source, "irc.test")
        self.assertEqual(first.params[0], "alice")
        self.assertIn("alice!~al@freeq/guest", first.params[-1])

    def test_cap_negotiation_holds_registration(self) -> None:
        """With CAP LS pending, NICK + USER do not register until CAP END."""
        user, sink, _ = self.connect()
        self.send(user, "CAP LS 302")
        self.send(user, "NICK alice")
        self.send(user, "USER al 0 * :Alice")
        self.assertFalse(user.registered)
        ls_lines = len(self.commands(sink))  # CAP LS 302 may take several lines
        self.assertEqual(set(self.commands(sink)), {"CAP"})
        self.send(user, "CAP END")
        self.assertTrue(user.registered)
        self.assertEqual(self.commands(sink)[ls_lines], "001")

    def test_isupport_lines_at_most_13_tokens(self) -> None:
        """Each 005 line carries at most 13 tokens, so it stays within 15 parameters."""
        chunks = self.server._isupport
        self.assertGreater(len(chunks), 0)
        for chunk in chunks:
            self.assertLessEqual(len(chunk), 13, chunk)
        user, sink, _ = self.connect()
        self.send(user, "NICK alice")
        self.send(user, "USER al 0 * :Alice")
        lines = [parse_bytes(b) for b in sink if b" 005 " in b]
        self.assertEqual(len(lines), len(chunks))
        for msg in lines:
            self.assertLessEqual(len(msg.params), 15, msg.params)
            self.assertEqual(msg.params[-1], "are supported by this server")
        tokens = [t for msg in lines for t in msg.params[1:-1]]
        self.assertIn("CASEMAPPING=ascii", tokens)
        self.assertIn("NICKLEN=64", tokens)
        self.assertEqual(len(tokens), len(set(tokens)))


class SweepTests(ServerTestCase):
    """Registration timeout, keepalive PING and ping timeout, driven by the Clock."""

    def test_registration_timeout(self) -> None:
        """An unregistered connection is closed with ERROR once registration_timeout has passed."""
        user, sink, conn = self.connect()
        self.clock.advance(self.server.config.registration_timeout - 0.5)
        self.server.sweep()
        self.assertFalse(conn.closed)
        self.clock.advance(0.5)
        self.server.sweep()
        self.assertTrue(conn.closed)
        self.assertEqual(len(sink), 1)
        err = parse_bytes(sink[0])
        self.assertEqual(err.command, "ERROR")
        self.assertIn("Registration timed out", err.params[0])
        self.assertEqual(conn.closed_after, 1, "ERROR must be written before close()")
        self.assertNotIn(user, self.server.connections)

    def test_registered_user_not_registration_timed_out(self) -> None:
        """Once registered, the registration timeout no longer applies."""
        _, sink, conn = self.register("alice")
        self.clock.advance(self.server.config.registration_timeout + 1)
        self.server.sweep()
        self.assertFalse(conn.closed)
        self.assertNotIn(b"ERROR", b"".join(sink))

    def test_ping_sent_once_after_interval(self) -> None:
        """An idle registered user gets exactly one PING after ping_interval."""
        _, sink, conn = self.register("alice")
        interval = self.server.config.ping_interval
        self.clock.advance(interval - 1)
        self.server.sweep()
        self.assertEqual(sink, [])
        self.clock.advance(1)
        self.server.sweep()
        self.assertEqual(sink, [b"PING irc.test\r\n"])
        self.assertTrue(conn.ping_sent)
        self.clock.advance(1)
        self.server.sweep()
        self.server.sweep()
        self.assertEqual(len(sink), 1)
        self.assertFalse(conn.closed)

    def test_activity_resets_ping(self) -> None:
        """Any line from the client clears the outstanding PING and the idle time."""
        user, sink, conn = self.register("alice")
        cfg = self.server.config
        self.clock.advance(cfg.ping_interval)
        self.server.sweep()
        self.send(user, "PONG irc.test")
        self.assertFalse(conn.ping_sent)
        self.clock.advance(cfg.ping_timeout - 1)
        self.server.sweep()
        self.assertFalse(conn.closed)
        self.assertEqual(self.commands(sink), ["PING", "PING"])

    def test_ping_timeout_closes_and_tells_co_members(self) -> None:
        """After ping_timeout of silence the user is closed and its channel peers see QUIT."""
        alice, a_sink, a_conn = self.register("alice")
        bob, b_sink, b_conn = self.register("bob")
        self.send(alice, "JOIN #c")
        self.send(bob, "JOIN #c")
        cfg = self.server.config
        self.clock.advance(cfg.ping_interval)
        self.server.sweep()
        self.send(bob, "PONG irc.test")
        del b_sink[:]
        self.clock.advance(cfg.ping_timeout - cfg.ping_interval)
        self.server.sweep()
        self.assertTrue(a_conn.closed)
        self.assertFalse(b_conn.closed)
        err = parse_bytes(a_sink[-1])
        self.assertEqual(err.command, "ERROR")
        self.assertIn("Ping timeout: 180 seconds", err.params[0])
        quits = [parse_bytes(b) for b in b_sink if b" QUIT " in b]
        self.assertEqual(len(quits), 1)
        self.assertEqual(quits[0].source, "alice!~alice@freeq/guest")
        self.assertEqual(quits[0].params, ["Ping timeout: 180 seconds"])
        self.assertNotIn("alice", self.server.users)
        self.assertEqual(list(self.server.channels["#c"].members), [bob])

    def test_sweep_survives_a_broken_user(self) -> None:
        """An exception for one user does not stop the sweep for the others."""
        bad, _, bad_conn = self.register("bad")
        _, sink, _ = self.register("good")

        def boom(data: bytes) -> None:
            raise RuntimeError("sink exploded")

        bad.write = boom
        self.clock.advance(self.server.config.ping_interval)
        self.server.sweep()
        self.assertEqual(sink, [b"PING irc.test\r\n"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class DeliverTests(ServerTestCase):
    """Fan-out: one serialisation per tag class, echo-message, server-time."""

    def _channel(self, sender_caps: tuple[str, ...], *recipient_caps: tuple[str, ...]) -> tuple[Conn, list[Conn]]:
        """Register a sender and recipients with the given caps, all joined to #c, sinks emptied."""
        sender = self.register("sender", sender_caps)
        recipients = [self.register(f"r{i}", caps) for i, caps in enumerate(recipient_caps)]
        for u, _, _ in [sender] + recipients:
            self.send(u, "JOIN #c")
        for _, sink, _ in [sender] + recipients:
            del sink[:]
        return sender, recipients

    def test_same_tagclass_shares_bytes(self) -> None:
        """Three recipients in one tag class receive the very same bytes object."""
        caps = ("message-tags", "server-time")
        sender, recips = self._channel((), caps, caps, caps)
        self.send(sender[0], "PRIVMSG #c :hello all")
        lines = [sink[-1] for _, sink, _ in recips]
        self.assertTrue(all(len(sink) == 1 for _, sink, _ in recips))
        self.assertIs(lines[0], lines[1])
        self.assertIs(lines[1], lines[2])
        msg = parse_bytes(lines[0])
        self.assertEqual(msg.params, ["#c", "hello all"])
        assert msg.tags is not None
        self.assertEqual(set(msg.tags), {"msgid", "time"})
        self.assertEqual(sender[1], [], "without echo-message the sender gets no copy")

    def test_tag_classes_rendered_separately(self) -> None:
        """Recipients in different tag classes get different lines: plain ones carry no tags."""
        sender, (tagged, plain, timed) = self._channel((), ("message-tags",), (), ("server-time",))
        self.send(sender[0], "@+draft/react=x PRIVMSG #c :hi")
        t = parse_bytes(tagged[1][0])
        p = parse_bytes(plain[1][0])
        s = parse_bytes(timed[1][0])
        self.assertEqual(set(t.tags or {}), {"msgid", "+draft/react"})
        self.assertIsNone(p.tags)
        self.assertEqual(set(s.tags or {}), {"time"})
        self.assertEqual(p.params, ["#c", "hi"])

    def test_deliver_direct_fanout_identity(self) -> None:
        """deliver() called directly renders once for a class shared by several users."""
        sinks = []
        users = []
        for i in range(3):
            u, sink, _ = self.register(f"u{i}", ("message-tags",))
            users.append(u)
            sinks.append(sink)
        sender, s_sink, _ = self.register("s")
        self.server.deliver(sender, "PRIVMSG", "u0", "x", {}, users)
        self.assertIs(sinks[0][0], sinks[1][0])
        self.assertIs(sinks[0][0], sinks[2][0])
        self.assertEqual(s_sink, [])

    def test_echo_message_same_msgid(self) -> None:
        """The sender's echo-message copy carries the same msgid as the recipients' copies."""
        sender, (r_same, r_other) = self._channel(
            ("echo-message", "message-tags"), ("message-tags",), ("message-tags", "server-time"))
        self.send(sender[0], "PRIVMSG #c :echo me")
        echo = sender[1]
        self.assertEqual(len(echo), 1)
        self.assertIs(echo[0], r_same[1][0], "same tag class: same bytes")
        ids = {parse_bytes(b).tags["msgid"] for b in (echo[0], r_same[1][0], r_other[1][0])}  # type: ignore[index]
        self.assertEqual(len(ids), 1)
        self.assertEqual(parse_bytes(echo[0]).source, "sender!~sender@freeq/guest")

    def test_echo_message_distinct_class(self) -> None:
        """An echo in a tag class no recipient has is rendered with the same msgid."""
        sender, (r,) = self._channel(("echo-message", "message-tags", "server-time"), ("message-tags",))
        self.send(sender[0], "PRIVMSG #c :x")
        echo = parse_bytes(sender[1][0])
        other = parse_bytes(r[1][0])
        assert echo.tags is not None and other.tags is not None
        self.assertEqual(echo.tags["msgid"], other.tags["msgid"])
        self.assertIn("time", echo.tags)
        self.assertNotIn("time", other.tags)

    def test_msgids_differ_between_messages(self) -> None:
        """Two messages get two different, increasing msgids."""
        sender, (r,) = self._channel((), ("message-tags",))
        self.send(sender[0], "PRIVMSG #c :one")
        self.send(sender[0], "PRIVMSG #c :two")
        a, b = (parse_bytes(line).tags["msgid"] for line in r[1])  # type: ignore[index]
        self.assertLess(a, b)

    def test_tagmsg_only_to_message_tags(self) -> None:
        """TAGMSG reaches only recipients with message-tags."""
        sender, (tagged, plain) = self._channel((), ("message-tags",), ())
        self.send(sender[0], "@+typing=active TAGMSG #c")
        self.assertEqual(len(tagged[1]), 1)
        self.assertEqual(plain[1], [])
        msg = parse_bytes(tagged[1][0])
        self.assertEqual((msg.command, msg.params), ("TAGMSG", ["#c"]))
        self.assertEqual((msg.tags or {}).get("+typing"), "active")

    def test_server_time_from_clock(self) -> None:
        """The time tag is ISO 8601 UTC with milliseconds, taken from the injected clock."""
        sender, (r,) = self._channel((), ("server-time", "message-tags"))
        self.clock.advance(0.123)
        self.send(sender[0], "PRIVMSG #c :tick")
        msg = parse_bytes(r[1][0])
        assert msg.tags is not None
        self.assertEqual(msg.tags["time"], "2023-11-14T22:13:20.123Z")

    def test_server_time_agrees_with_msgid(self) -> None:
        """The time tag and the msgid's timestamp name the same millisecond."""
        sender, (r,) = self._channel((), ("server-time", "message-tags"))
        for step in (0.001, 0.121, 0.779, 1.001):
            self.clock.advance(step)
            self.send(sender[0], "PRIVMSG #c :tick")
            msg = parse_bytes(r[1][-1])
            assert msg.tags is not None
            ms = 0
            for ch in msg.tags["msgid"][:10]:
                ms = ms * 32 + CROCKFORD.index(ch)
            self.assertEqual(msg.tags["time"][-4:-1], f"{ms % 1000:03d}", step)
            self.assertEqual(msg.tags["time"], server_time(ms / 1000))

    def test_server_time_function(self) -> None:
        """server_time formats whole and fractional seconds with exactly three digits."""
        self.assertEqual(server_time(0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(server_time(1.5), "1970-01-01T00:00:01.500Z")
        self.assertEqual(server_time(1000.001), "1970-01-01T00:16:40.001Z")
        self.assertEqual(server_time(EPOCH + 0.999), "2023-11-14T22:13:20.999Z")


class LabeledResponseTests(ServerTestCase):
    """labeled-response: ACK, a tagged single line, or a labelled BATCH."""

    def test_ack_for_no_output(self) -> None:
        """A labelled command with no reply gets an ACK carrying the label."""
        user, sink, _ = self.register("alice", ("labeled-response", "batch"))
        self.send(user, "@label=abc PONG x")
        self.assertEqual(sink, [b"@label=abc :irc.test ACK\r\n"])

    def test_single_line_gets_label(self) -> None:
        """A one-line reply carries the label tag and nothing else changes."""
        user, sink, _ = self.register("alice", ("labeled-response",))
        self.send(user, "@label=xyz PING tok")
        self.assertEqual(sink, [b"@label=xyz :irc.test PONG irc.test tok\r\n"])

    def test_label_value_escaped(self) -> None:
        """A label with special characters is escaped again on the way out."""
        user, sink, _ = self.register("alice", ("labeled-response",))
        self.send(user, r"@label=a\sb\:c PING tok")
        msg = parse_bytes(sink[0])
        self.assertEqual(msg.tags, {"label": "a b;c"})

    def test_single_line_with_existing_tags(self) -> None:
        """The label is merged into a line that already has tags (e.g. an echo with msgid)."""
        user, sink, _ = self.register("alice", ("labeled-response", "echo-message", "message-tags"))
        self.send(user, "JOIN #c")
        del sink[:]
        self.send(user, "@label=L1 PRIVMSG #c :hi")
        self.assertEqual(len(sink), 1)
        msg = parse_bytes(sink[0])
        assert msg.tags is not None
        self.assertEqual(msg.tags["label"], "L1")
        self.assertIn("msgid", msg.tags)
        self.assertEqual(msg.command, "PRIVMSG")

    def test_multi_line_batch(self) -> None:
        """A multi-line reply is wrapped in a labelled BATCH whose lines carry the batch tag."""
        user, sink, _ = self.register("alice", ("labeled-response", "batch"))
        self.send(user, "@label=L2 LUSERS")
        msgs = [parse_bytes(b) for b in sink]
        self.assertGreater(len(msgs), 3)
        start, body, end = msgs[0], msgs[1:-1], msgs[-1]
        self.assertEqual(start.command, "BATCH")
        self.assertEqual(start.tags, {"label": "L2"})
        self.assertEqual(start.params[1], "labeled-response")
        ref = start.params[0]
        self.assertTrue(ref.startswith("+"))
        for m in body:
            self.assertEqual(m.tags, {"batch": ref[1:]})
            self.assertTrue(m.command.isdigit())
        self.assertEqual([m.command for m in body][:2], ["251", "252"])
        self.assertEqual((end.command, end.params, end.tags), ("BATCH", ["-" + ref[1:]], None))

    def test_multi_line_without_batch_unlabelled(self) -> None:
        """Without the batch cap a multi-line reply is sent as-is, without labels."""
        user, sink, _ = self.register("alice", ("labeled-response",))
        self.send(user, "@label=L3 LUSERS")
        self.assertGreater(len(sink), 3)
        self.assertFalse(any(b.startswith(b"@") for b in sink))

    def test_label_ignored_without_cap(self) -> None:
        """A client without labeled-response gets ordinary, untagged replies."""
        user, sink, _ = self.register("alice")
        self.send(user, "@label=abc PING tok")
        self.assertEqual(sink, [b":irc.test PONG irc.test tok\r\n"])

    def test_write_restored_after_label(self) -> None:
        """After a labelled command, later output goes straight to the connection again."""
        user, sink, conn = self.register("alice", ("labeled-response",))
        self.send(user, "@label=a PONG x")
        self.assertEqual(user.write, conn.sink.append)
        self.send(user, "PING t")
        self.assertEqual(sink[-1], b":irc.test PONG irc.test t\r\n")

    def test_labelled_quit_writes_error_before_close(self) -> None:
        """A labelled QUIT still writes ERROR to the client before the connection is closed."""
        user, sink, conn = self.register("alice", ("labeled-response",))
        self.send(user, "@label=q QUIT :bye")
        self.assertTrue(conn.closed)
        self.assertTrue(any(b"ERROR" in line for line in sink[:conn.closed_after]),
                        f"written before close: {sink[:conn.closed_after]!r}")


class _StubSasl:
    """The one thing ``_sasl_succeeded`` does with the exchange."""

    def abort(self) -> None:
        pass


class LusersCountTests(ServerTestCase):
    """LUSERS reads counters kept up to date, not a scan; they must always equal a recount."""

    OPER_DID = "did:plc:operoperoperoperoperoper"
    seed = 20261125

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        config = Config(server_name="irc.test", listen=None, tls_listen=None, oper_password="sekrit",
                        oper_dids=(self.OPER_DID,))
        self.server = IRCServer(config, self.clock)

    def recount(self) -> tuple[int, int, int, int, int]:
        """What LUSERS used to compute by scanning every connection and channel."""
        srv = self.server
        registered = [u for u in srv.connections if u.registered]
        return (len(registered), sum(1 for u in registered if "i" in u.modes),
                sum(1 for u in registered if u.is_oper), len(srv.connections) - len(registered),
                sum(1 for c in srv.channels.values() if c.members))

    def counters(self) -> tuple[int, int, int, int, int]:
        srv = self.server
        return (srv.registered_count, srv.invisible_count, srv.oper_count,
                len(srv.connections) - srv.registered_count, srv.channels.formed)

    def test_counters_match_a_recount_after_random_operations(self) -> None:
        """Registration, multi-device, QUIT, KILL, MODE ±i/±o, OPER, oper DIDs at SASL, JOIN/PART/KICK
        and persisted empty channels, in a random order: the counters equal a recount after every step."""
        from freeq.state.channel import Channel

        kept = Channel("#kept", EPOCH)
        kept.modes = {"n", "t"}
        kept.topic = "persisted, empty until someone joins"
        kept.persisted = True
        self.server.load_channels([kept.record()])
        rng = random.Random(self.seed)
        everyone: list[User] = []  # in connection order: iterating the server's sets would not be reproducible
        pending: list[User] = []
        live: list[User] = []
        dids = ["did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", self.OPER_DID]
        seen = [0, 0, 0, 0, 0]
        most_devices = 0
        for step in range(3000):
            op = rng.randrange(13)
            if op >= 2 and not live:
                op = rng.randrange(2)
            if op == 0 or (op == 1 and not pending):
                user, _, _ = self.connect()
                everyone.append(user)
                if rng.random() < 0.3:
                    user.account = rng.choice(dids)  # several connections of one DID: multi-device
                pending.append(user)
            elif op == 1:
                user = pending[rng.randrange(len(pending))]
                self.send(user, f"NICK n{step}")
                self.send(user, "USER u 0 * :r")
            elif op == 2:
                user = rng.choice(live)
                self.send(user, f"MODE {user.nick} {rng.choice('+-')}{rng.choice(['i', 'o', 'iw', 'io', 'B'])}")
            elif op == 3:
                self.send(rng.choice(live), "OPER admin sekrit")
            elif op == 4:
                guests = [u for u in live + pending if u.account is None]  # SASL is once per connection
                if guests:
                    self.server._sasl_succeeded(rng.choice(guests), _StubSasl(), rng.choice(dids),  # type: ignore[arg-type]
                                                None)
            elif op in (5, 6):
                self.send(rng.choice(live), f"JOIN {rng.choice(['#a', '#b', '#c', '#kept'])}")
            elif op == 7:
                self.send(rng.choice(live), f"PART {rng.choice(['#a', '#b', '#c', '#kept'])}")
            elif op == 8:
                self.send(rng.choice(live), f"KILL {rng.choice(live).nick} :bye")
            elif op == 9:
                self.send(rng.choice(live), "QUIT :gone")
            elif op == 10:
                self.send(rng.choice(live), f"KICK {rng.choice(['#a', '#b'])} {rng.choice(live).nick}")
            elif op == 11 and pending:
                self.server.disconnect(pending.pop(), "Connection closed")  # an unregistered connection drops
            elif op == 12:
                self.server.disconnect(rng.choice(live), "Connection reset by peer")  # no close(): the socket died
            everyone = [u for u in everyone if u in self.server.connections]
            live = [u for u in everyone if u.registered]
            pending = [u for u in everyone if not u.registered]
            counts = self.counters()
            self.assertEqual(counts, self.recount(), f"after step {step} (op {op})")
            seen = [max(a, b) for a, b in zip(seen, counts)]
            most_devices = max([most_devices] + [len(s) for s in self.server.sessions.values()])
        # The run must have reached the interesting states, or it proves little.
        self.assertTrue(all(n >= 2 for n in seen), seen)
        self.assertGreaterEqual(most_devices, 2)
        self.assertIn("#kept", self.server.channels)
        user, sink, _ = self.register("watcher")
        self.send(user, "LUSERS")
        by = {parse_bytes(b).command: parse_bytes(b) for b in sink}
        total, invisible, opers, unknown, formed = self.recount()
        self.assertEqual(by["251"].params[1],
                         f"There are {total - invisible} users and {invisible} invisible on 1 servers")
        self.assertEqual(by["252"].params[1], str(opers))
        self.assertEqual(by["253"].params[1], str(unknown))
        self.assertEqual(by["254"].params[1], str(formed))

    def test_persisted_empty_channel_not_formed(self) -> None:
        """A channel loaded from the store counts once someone is in it, and not after they leave."""
        from freeq.state.channel import Channel

        kept = Channel("#kept", EPOCH)
        kept.modes = {"n", "t"}
        kept.topic = "kept"
        self.server.load_channels([kept.record()])
        self.assertEqual(self.server.channels.formed, 0)
        alice, _, _ = self.register("alice")
        self.send(alice, "JOIN #kept")
        self.assertEqual(self.server.channels.formed, 1)
        self.send(alice, "PART #kept")
        self.assertIn("#kept", self.server.channels)
        self.assertEqual(self.server.channels.formed, 0)


class IdleTimeTests(ServerTestCase):
    """WHOIS idle time counts from the last message, not from keepalives."""

    def idle_of(self, asker: User, sink: list[bytes], nick: str) -> int:
        sink.clear()
        self.send(asker, f"WHOIS {nick}")
        line = next(parse(l.decode().rstrip("\r\n")) for l in sink if b" 317 " in l)
        assert line is not None
        return int(line.params[2])

    def test_ping_does_not_reset_idle_but_privmsg_does(self) -> None:
        """A PING keeps the connection alive without resetting 317; a PRIVMSG resets it."""
        alice, _sa, _ca = self.register("alice")
        bob, sb, _cb = self.register("bob")
        self.clock.advance(100)
        self.send(alice, "PING keepalive")
        self.assertGreaterEqual(self.idle_of(bob, sb, "alice"), 100)
        self.send(alice, "PRIVMSG bob :hi")
        self.assertEqual(self.idle_of(bob, sb, "alice"), 0)
