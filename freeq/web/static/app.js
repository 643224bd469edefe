// freeq web client: IRC over WebSocket (text.ircv3.net) with AT Protocol sign-in.
// Plain JavaScript, no build step. Sign-in methods: guest, a did:key made in this browser
// (WebCrypto Ed25519, SASL ATPROTO-CHALLENGE "crypto"), or a one-time token from the auth broker
// (method "web-token"). Everything shown comes from the server as text (never as HTML).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const WANTED_CAPS = ["message-tags", "server-time", "echo-message", "account-notify", "account-tag",
    "extended-join", "away-notify", "multi-prefix", "batch", "cap-notify"];
  const CHUNK = 400;

  let ws = null;
  let state = null;

  // ---------------------------------------------------------------- encoding helpers
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  function b64urlEncode(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function b64urlDecode(text) {
    let s = text.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

  function base58btc(bytes) {
    const digits = [0];
    for (const byte of bytes) {
      let carry = byte;
      for (let i = 0; i < digits.length; i++) {
        carry += digits[i] << 8;
        digits[i] = carry % 58;
        carry = (carry / 58) | 0;
      }
      while (carry) { digits.push(carry % 58); carry = (carry / 58) | 0; }
    }
    let out = "";
    for (const byte of bytes) { if (byte === 0) out += "1"; else break; }
    for (let i = digits.length - 1; i >= 0; i--) out += B58[digits[i]];
    return out;
  }

  // ---------------------------------------------------------------- IRC lines
  function unescapeTag(v) {
    return v.replace(/\\(.)?/g, (m, c) => ({ ":": ";", s: " ", "\\": "\\", r: "\r", n: "\n" }[c] ?? (c || "")));
  }

  function parseLine(line) {
    const msg = { tags: {}, source: null, command: "", params: [] };
    let rest = line;
    if (rest.startsWith("@")) {
      const sp = rest.indexOf(" ");
      if (sp < 0) return null;
      for (const item of rest.slice(1, sp).split(";")) {
        if (!item) continue;
        const eq = item.indexOf("=");
        if (eq < 0) msg.tags[item] = "";
        else msg.tags[item.slice(0, eq)] = unescapeTag(item.slice(eq + 1));
      }
      rest = rest.slice(sp + 1).replace(/^ +/, "");
    }
    if (rest.startsWith(":")) {
      const sp = rest.indexOf(" ");
      if (sp < 0) return null;
      msg.source = rest.slice(1, sp);
      rest = rest.slice(sp + 1).replace(/^ +/, "");
    }
    while (rest.length) {
      if (rest.startsWith(":")) { msg.params.push(rest.slice(1)); break; }
      const sp = rest.indexOf(" ");
      if (sp < 0) { msg.params.push(rest); break; }
      msg.params.push(rest.slice(0, sp));
      rest = rest.slice(sp + 1).replace(/^ +/, "");
    }
    msg.command = (msg.params.shift() || "").toUpperCase();
    return msg;
  }

  const nickOf = (source) => (source || "").split("!")[0];
  const fold = (s) => s.toLowerCase();
  const isChannel = (t) => t.length > 1 && (t[0] === "#" || t[0] === "&");

  function send(line) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(line);
  }

  // ---------------------------------------------------------------- identity
  async function didKeyIdentity() {
    if (!window.crypto || !crypto.subtle) throw new Error("WebCrypto is not available (use https)");
    let priv = null;
    let pub = null;
    const saved = localStorage.getItem("freeq.didkey.v1");
    if (saved) {
      try {
        const data = JSON.parse(saved);
        priv = await crypto.subtle.importKey("pkcs8", b64urlDecode(data.pkcs8), { name: "Ed25519" }, false, ["sign"]);
        pub = b64urlDecode(data.pub);
      } catch (e) { priv = null; }
    }
    if (!priv) {
      let pair;
      try {
        pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
      } catch (e) {
        throw new Error("this browser cannot make Ed25519 keys; sign in with a broker token or as a guest");
      }
      pub = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
      const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
      localStorage.setItem("freeq.didkey.v1", JSON.stringify({ pkcs8: b64urlEncode(pkcs8), pub: b64urlEncode(pub) }));
      priv = pair.privateKey;
    }
    const multicodec = new Uint8Array(2 + pub.length);
    multicodec.set([0xed, 0x01]);
    multicodec.set(pub, 2);
    const did = "did:key:z" + base58btc(multicodec);
    return {
      did,
      async answer(challenge) {
        const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, priv, challenge));
        return { did, method: "crypto", signature: b64urlEncode(sig) };
      },
    };
  }

  function tokenIdentity(token) {
    return { did: "", async answer() { return { did: "", method: "web-token", signature: token }; } };
  }

  // ---------------------------------------------------------------- UI
  function setStatus(text) { $("status").textContent = text; }

  function badge(account) {
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = account.length > 26 ? account.slice(0, 16) + "…" + account.slice(-6) : account;
    b.title = "Signed in as " + account;
    return b;
  }

  function timeText(tags) {
    const d = tags && tags.time ? new Date(tags.time) : new Date();
    return d.toTimeString().slice(0, 5);
  }

  function addMessage(kind, nick, text, tags, account) {
    const li = document.createElement("li");
    li.className = kind;
    li.dataset.nick = nick || "";
    li.dataset.text = text;
    if (account) li.dataset.account = account;
    const t = document.createElement("span");
    t.className = "time";
    t.textContent = timeText(tags);
    li.append(t);
    if (nick) {
      const n = document.createElement("span");
      n.className = "nick";
      n.textContent = kind === "action" ? "* " + nick : "<" + nick + ">";
      li.append(n);
      if (account) li.append(badge(account));
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(body);
    const box = $("messages");
    const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 20;
    box.append(li);
    while (box.children.length > 1000) box.firstChild.remove();
    if (stick) box.scrollTop = box.scrollHeight;
  }

  const system = (text) => addMessage("system", "", text, null, null);

  function renderMembers() {
    const ul = $("members");
    ul.textContent = "";
    if (!state || !state.channel) return;
    const members = [...state.members.values()].sort((a, b) =>
      (b.prefix.includes("@") - a.prefix.includes("@")) || fold(a.nick).localeCompare(fold(b.nick)));
    for (const m of members) {
      const li = document.createElement("li");
      li.dataset.nick = m.nick;
      const account = state.accounts.get(fold(m.nick));
      li.append(document.createTextNode(m.prefix + m.nick + " "));
      if (account) { li.dataset.account = account; li.append(badge(account)); }
      ul.append(li);
    }
    $("count").textContent = "(" + members.length + ")";
  }

  function setChannel(name) {
    state.channel = name;
    state.members = new Map();
    $("title").textContent = name || "No channel";
    $("topic").textContent = "";
    renderMembers();
  }

  function setAccount(nick, account) {
    if (!state) return;
    if (account && account !== "*" && account !== "0") state.accounts.set(fold(nick), account);
    else state.accounts.delete(fold(nick));
  }

  // ---------------------------------------------------------------- protocol handling
  async function finishSasl() {
    const payload = state.saslBuffer;
    state.saslBuffer = "";
    let response;
    try {
      response = await state.identity.answer(b64urlDecode(payload));
    } catch (e) {
      system("Sign-in failed: " + e.message);
      send("AUTHENTICATE *");
      return;
    }
    const encoded = b64urlEncode(enc.encode(JSON.stringify(response)));
    for (let i = 0; i < encoded.length; i += CHUNK) send("AUTHENTICATE " + encoded.slice(i, i + CHUNK));
    if (encoded.length % CHUNK === 0) send("AUTHENTICATE +");
  }

  function capEnd() {
    if (!state.capDone) { state.capDone = true; send("CAP END"); }
  }

  function onLine(line) {
    const m = parseLine(line);
    if (!m) return;
    const p = m.params;
    const from = nickOf(m.source);
    const me = state.nick;
    switch (m.command) {
      case "PING": send("PONG :" + (p[0] || "")); break;
      case "CAP": {
        const sub = (p[1] || "").toUpperCase();
        if (sub === "LS") {
          const more = p[2] === "*";
          state.capLs.push(...(more ? p[3] : p[2] || "").split(" ").filter(Boolean));
          if (more) break;
          const offered = new Map(state.capLs.map((c) => { const i = c.indexOf("="); return i < 0 ? [c, ""] : [c.slice(0, i), c.slice(i + 1)]; }));
          const req = WANTED_CAPS.filter((c) => offered.has(c));
          if (state.identity && offered.has("sasl")) req.push("sasl");
          if (state.identity && !offered.has("sasl")) system("This server offers no SASL; continuing as a guest.");
          if (req.length) send("CAP REQ :" + req.join(" ")); else capEnd();
        } else if (sub === "ACK") {
          const acked = (p[2] || "").split(" ").filter(Boolean);
          for (const c of acked) if (!c.startsWith("-")) state.caps.add(c);
          if (acked.includes("sasl") && state.identity) send("AUTHENTICATE ATPROTO-CHALLENGE");
          else capEnd();
        } else if (sub === "NAK") {
          capEnd();
        }
        break;
      }
      case "AUTHENTICATE": {
        if (!state.identity) break;
        const piece = p[0] || "";
        if (piece !== "+") state.saslBuffer += piece;
        if (piece === "+" || piece.length < CHUNK) finishSasl();
        break;
      }
      case "900":
        state.account = p[2] || null;
        $("identity").textContent = "Signed in as " + state.account;
        break;
      case "903": capEnd(); break;
      case "902": case "904": case "905": case "906": case "908":
        if (m.command !== "908") system("Sign-in failed (" + (p[p.length - 1] || m.command) + "); continuing as a guest.");
        if (m.command !== "908") capEnd();
        break;
      case "001":
        state.nick = p[0];
        state.registered = true;
        setStatus("Connected as " + state.nick + ".");
        $("input").disabled = false;
        $("send").disabled = false;
        if (state.wantChannel) send("JOIN " + state.wantChannel);
        break;
      case "432": case "433":
        if (!state.registered) {
          state.nick = (state.nick + "_").slice(0, 30);
          send("NICK " + state.nick);
        } else {
          system((p[1] || "") + ": " + (p[2] || "nick refused"));
        }
        break;
      case "NICK":
        if (fold(from) === fold(me)) { state.nick = p[0]; setStatus("Connected as " + state.nick + "."); }
        if (state.members.has(fold(from))) {
          const old = state.members.get(fold(from));
          state.members.delete(fold(from));
          state.members.set(fold(p[0]), { nick: p[0], prefix: old.prefix });
          const acc = state.accounts.get(fold(from));
          state.accounts.delete(fold(from));
          if (acc) state.accounts.set(fold(p[0]), acc);
          system(from + " is now known as " + p[0]);
          renderMembers();
        }
        break;
      case "JOIN": {
        const chan = p[0];
        if (m.params.length >= 2) setAccount(from, p[1]);  // extended-join: JOIN <chan> <account|*> :<realname>
        else if (m.tags.account) setAccount(from, m.tags.account);
        if (fold(from) === fold(me)) {
          setChannel(chan);
          system("You joined " + chan);
          // WHOX fills the account badges of everyone already there.
          send("WHO " + chan + " %tna,42");
        } else if (state.channel && fold(chan) === fold(state.channel)) {
          state.members.set(fold(from), { nick: from, prefix: "" });
          system(from + " joined");
        }
        renderMembers();
        break;
      }
      case "PART": case "KICK": {
        const chan = p[0];
        const who = m.command === "KICK" ? p[1] : from;
        if (!state.channel || fold(chan) !== fold(state.channel)) break;
        if (fold(who) === fold(me)) { system("You left " + chan); setChannel(null); break; }
        state.members.delete(fold(who));
        system(who + (m.command === "KICK" ? " was kicked" : " left"));
        renderMembers();
        break;
      }
      case "QUIT":
        if (state.members.delete(fold(from))) { system(from + " quit (" + (p[0] || "") + ")"); renderMembers(); }
        break;
      case "ACCOUNT": setAccount(from, p[0]); renderMembers(); break;
      case "353": {
        const chan = p[2];
        if (!state.channel || fold(chan) !== fold(state.channel)) break;
        for (const entry of (p[3] || "").split(" ").filter(Boolean)) {
          const match = entry.match(/^([@+]*)(.*)$/);
          const nick = nickOf(match[2]);
          state.members.set(fold(nick), { nick, prefix: match[1] });
        }
        break;
      }
      case "366": renderMembers(); break;
      case "354":  // WHOX: <me> 42 <nick> <account>
        if (p[1] === "42") { setAccount(p[2], p[3]); renderMembers(); }
        break;
      case "330": setAccount(p[1], p[2]); renderMembers(); system(p[1] + " is logged in as " + p[2]); break;
      case "311": system(p[1] + " is " + p[2] + "@" + p[3] + " (" + (p[5] || "") + ")"); break;
      case "332": if (state.channel && fold(p[1]) === fold(state.channel)) $("topic").textContent = p[2] || ""; break;
      case "TOPIC":
        if (state.channel && fold(p[0]) === fold(state.channel)) {
          $("topic").textContent = p[1] || "";
          system(from + " set the topic: " + (p[1] || ""));
        }
        break;
      case "MODE":
        if (state.channel && fold(p[0]) === fold(state.channel)) {
          system(from + " sets mode " + p.slice(1).join(" "));
          send("NAMES " + state.channel);
          state.members = new Map();
        }
        break;
      case "PRIVMSG": case "NOTICE": {
        const target = p[0] || "";
        let text = p[1] || "";
        if (m.command === "NOTICE" && /^API-BEARER \S+$/.test(text)) {
          // A REST bearer token for this identity: kept for this tab only, never shown.
          sessionStorage.setItem("freeq.bearer", text.slice(11));
          break;
        }
        if (m.tags.account) setAccount(from, m.tags.account);
        const account = m.tags.account || state.accounts.get(fold(from)) || null;
        let kind = m.command === "NOTICE" ? "notice" : "privmsg";
        if (text.startsWith("\x01ACTION ") && text.endsWith("\x01")) { kind = "action"; text = text.slice(8, -1); }
        else if (text.startsWith("\x01")) break;  // other CTCP
        if (!m.source || !m.source.includes("!")) { system(text); break; }
        if (isChannel(target) && state.channel && fold(target) !== fold(state.channel)) {
          system("[" + target + "] <" + from + "> " + text);
          break;
        }
        const shown = isChannel(target) ? from : (fold(from) === fold(me) ? "→ " + target : from + " (private)");
        addMessage(kind, shown, text, m.tags, account);
        break;
      }
      case "ERROR": system("Server closed the connection: " + (p[0] || "")); break;
      case "FAIL": system("Error: " + p.slice(2).join(" ")); break;
      default:
        if (/^[45]\d\d$/.test(m.command)) system(p.slice(1).join(" "));
    }
  }

  // ---------------------------------------------------------------- user actions
  function sendText(text) {
    if (!state || !state.registered) return;
    if (text.startsWith("/")) {
      const [cmd, ...args] = text.slice(1).split(" ");
      const rest = args.join(" ");
      switch (cmd.toLowerCase()) {
        case "join": if (args[0]) { state.wantChannel = args[0]; send("JOIN " + args[0]); } return;
        case "part": if (state.channel) send("PART " + state.channel + (rest ? " :" + rest : "")); return;
        case "nick": if (args[0]) send("NICK " + args[0]); return;
        case "whois": if (args[0]) send("WHOIS " + args[0]); return;
        case "topic": if (state.channel) send("TOPIC " + state.channel + " :" + rest); return;
        case "msg":
          if (args.length > 1) {
            send("PRIVMSG " + args[0] + " :" + args.slice(1).join(" "));
            if (!state.caps.has("echo-message")) addMessage("privmsg", "→ " + args[0], args.slice(1).join(" "), null, state.account);
          }
          return;
        case "me":
          if (state.channel) {
            send("PRIVMSG " + state.channel + " :\x01ACTION " + rest + "\x01");
            if (!state.caps.has("echo-message")) addMessage("action", state.nick, rest, null, state.account);
          }
          return;
        case "quote": if (rest) send(rest); return;
        default: system("Unknown command /" + cmd); return;
      }
    }
    if (!state.channel) { system("Join a channel first: /join #channel"); return; }
    send("PRIVMSG " + state.channel + " :" + text);
    if (!state.caps.has("echo-message")) addMessage("privmsg", state.nick, text, null, state.account);
  }

  async function connect(nick, channel, auth, token) {
    disconnect();
    let identity = null;
    try {
      if (auth === "didkey") identity = await didKeyIdentity();
      else if (auth === "token") {
        if (!token) throw new Error("paste the token the auth broker gave you");
        identity = tokenIdentity(token.trim());
      }
    } catch (e) {
      system("Cannot sign in: " + e.message + ". Connecting as a guest.");
      identity = null;
    }
    $("identity").textContent = identity && identity.did ? "Signing in as " + identity.did : "";
    state = {
      nick, wantChannel: channel && (isChannel(channel) ? channel : "#" + channel), identity,
      capLs: [], caps: new Set(), capDone: false, saslBuffer: "", registered: false, account: null,
      channel: null, members: new Map(), accounts: new Map(),
    };
    setChannel(null);
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/irc";
    setStatus("Connecting…");
    const sock = new WebSocket(url, ["text.ircv3.net"]);
    ws = sock;
    sock.onopen = () => {
      setStatus("Registering…");
      send("CAP LS 302");
      send("NICK " + nick);
      send("USER " + (nick.replace(/[^A-Za-z0-9]/g, "").slice(0, 10) || "web") + " 0 * :freeq web client");
      $("connect").hidden = true;
      $("disconnect").hidden = false;
    };
    sock.onmessage = (ev) => {
      if (sock !== ws) return;
      const text = typeof ev.data === "string" ? ev.data : dec.decode(ev.data);
      for (const line of text.split(/\r?\n/)) if (line) onLine(line);
    };
    sock.onclose = (ev) => {
      if (sock !== ws) return;
      setStatus("Disconnected" + (ev.code === 1006 ? " (connection refused or lost)." : "."));
      $("input").disabled = true;
      $("send").disabled = true;
      $("connect").hidden = false;
      $("disconnect").hidden = true;
      ws = null;
    };
  }

  function disconnect() {
    if (ws) {
      const old = ws;
      send("QUIT :Leaving");
      ws = null;
      old.close();
    }
  }

  // ---------------------------------------------------------------- wiring
  function start() {
    const params = new URLSearchParams(location.search);
    const nick = params.get("nick");
    if (nick) $("nick").value = nick;
    const chan = params.get("channel");
    if (chan) $("channel").value = chan;
    const auth = params.get("auth");
    if (auth) $("auth").value = auth;
    $("token-label").hidden = $("auth").value !== "token";
    $("auth").addEventListener("change", () => { $("token-label").hidden = $("auth").value !== "token"; });
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      connect($("nick").value.trim(), $("channel").value.trim(), $("auth").value, $("token").value);
    });
    $("disconnect").addEventListener("click", disconnect);
    $("compose").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = $("input").value;
      if (text.trim()) sendText(text);
      $("input").value = "";
    });
    // A token in the URL fragment never reaches server logs: #token=<web token>.
    const frag = new URLSearchParams(location.hash.slice(1));
    if (frag.get("token")) { $("auth").value = "token"; $("token").value = frag.get("token"); $("token-label").hidden = false; }
    if (params.get("autoconnect") === "1" && $("nick").value) $("login").requestSubmit();
  }

  window.freeq = { connect, disconnect, sendText, parseLine, base58btc, get state() { return state; } };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
