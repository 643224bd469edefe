// freeq web client: IRC over WebSocket (text.ircv3.net) with AT Protocol sign-in.
// Plain JavaScript, no build step. Sign-in methods: guest, a did:key made in this browser
// (WebCrypto Ed25519, SASL ATPROTO-CHALLENGE "crypto"), or a one-time token from the auth broker
// (method "web-token"). Everything shown comes from the server as text (never as HTML).
// Conversations: several channels and private chats, each with its history (draft/chathistory),
// multiline messages (draft/multiline), edits and deletes (+draft/edit, REDACT / +draft/delete),
// reactions (+draft/react with +draft/reply) and read markers (draft/read-marker, MARKREAD).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const WANTED_CAPS = ["message-tags", "server-time", "echo-message", "account-notify", "account-tag",
    "extended-join", "away-notify", "multi-prefix", "batch", "cap-notify", "draft/chathistory",
    "draft/multiline", "draft/message-redaction", "draft/read-marker"];
  const CHUNK = 400;
  const HISTORY_LIMIT = 50;          // CHATHISTORY LATEST on joining a channel or opening a private chat
  const MAX_MESSAGES = 1000;         // kept per conversation
  const MAX_BATCHES = 20;            // open server batches (older ones are forgotten)
  const MAX_BATCH_LINES = 2000;      // lines held per open batch
  const MAX_REACTION_IDS = 5000;     // reaction msgids remembered (a REDACT of one takes it back)
  const MAX_REACTORS = 100;          // nicks shown per emoji
  const MAX_EMOJI = 50;              // different reactions shown per message
  const MAX_CONVS = 100;             // conversations listed (the oldest private chat not on screen goes)
  const LINE_BYTES = 400;            // text bytes per PRIVMSG line sent
  const MARK_DELAY = 250;            // ms before MARKREAD is sent for the conversation on screen
  const REACTIONS = ["👍", "❤", "😂", "🎉", "👀"];
  const PLACEHOLDER = "Message (Shift+Enter for a new line), or /join #channel, /msg, /query, /me, /nick";

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

  // ---------------------------------------------------------------- conversations
  // A conversation is a channel or a private chat (keyed by the folded name) with its own message
  // list; SERVER ("*") holds what belongs to none. Messages are kept per conversation, at most
  // MAX_MESSAGES, each with its msgid so edits, deletes and reactions can find it.
  const SERVER = "*";

  function escapeTag(v) {
    return v.replace(/[\\; \r\n]/g, (c) => ({ "\\": "\\\\", ";": "\\:", " ": "\\s", "\r": "\\r", "\n": "\\n" }[c]));
  }

  function tagPrefix(tags) {
    const parts = Object.entries(tags).map(([k, v]) => (v === "" ? k : k + "=" + escapeTag(v)));
    return parts.length ? "@" + parts.join(";") + " " : "";
  }

  function utf8Chunks(text, limit) {
    // Pieces of at most `limit` UTF-8 bytes, never splitting a code point.
    const out = [];
    let piece = "";
    let size = 0;
    for (const ch of text) {
      const n = enc.encode(ch).length;
      if (size + n > limit && piece) { out.push(piece); piece = ""; size = 0; }
      piece += ch;
      size += n;
    }
    out.push(piece);
    return out;
  }

  function timeOf(tags) {
    const t = tags && tags.time ? Date.parse(tags.time) : NaN;
    return Number.isNaN(t) ? Date.now() : t;
  }

  function isoTime(ms) { return new Date(ms).toISOString(); }

  function newConv(name, kind) {
    const list = document.createElement("ol");
    list.className = "log";
    list.dataset.conv = name;
    list.hidden = true;
    $("messages").append(list);
    const item = document.createElement("li");
    item.dataset.name = name;
    item.dataset.kind = kind;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = kind === "server" ? "Server" : name;
    const count = document.createElement("span");
    count.className = "unread";
    count.hidden = true;
    item.append(label, count);
    const key = kind === "server" ? SERVER : fold(name);
    item.addEventListener("click", () => showConv(item.dataset.key));
    item.dataset.key = key;
    $("convs").append(item);
    const conv = {
      key, name, kind, messages: [], byId: new Map(), members: new Map(), topic: "", marker: null,
      markSent: 0, markTimer: null, unread: 0, boundary: null, list, item, historyAsked: false,
    };
    state.convs.set(key, conv);
    // A private chat's marker is only sent when asked (a channel's comes with the JOIN): ask before its history.
    if (kind === "dm" && state.caps.has("draft/read-marker")) send("MARKREAD " + name);
    return conv;
  }

  function getConv(name, create) {
    const key = name === SERVER ? SERVER : fold(name);
    let conv = state.convs.get(key);
    if (!conv && create) {
      if (state.convs.size >= MAX_CONVS) {
        const old = [...state.convs.values()].find((c) => c.kind === "dm" && c.key !== state.active);
        if (old) dropConv(old);
      }
      conv = newConv(name, isChannel(name) ? "channel" : "dm");
    }
    return conv || null;
  }

  function dropConv(conv) {
    if (conv.key === SERVER) return;
    conv.list.remove();
    conv.item.remove();
    clearTimeout(conv.markTimer);
    state.convs.delete(conv.key);
    if (state.active === conv.key) {
      const next = [...state.convs.values()].reverse().find((c) => c.kind === "channel") || state.convs.get(SERVER);
      showConv(next.key);
    }
  }

  function renameConv(conv, name) {
    state.convs.delete(conv.key);
    const wasActive = state.active === conv.key;
    conv.key = fold(name);
    conv.name = name;
    conv.list.dataset.conv = name;
    conv.item.dataset.key = conv.key;
    conv.item.dataset.name = name;
    conv.item.querySelector(".name").textContent = name;
    state.convs.set(conv.key, conv);
    if (wasActive) { state.active = conv.key; $("title").textContent = name; }
  }

  const activeConv = () => (state ? state.convs.get(state.active) || null : null);
  const visible = () => document.visibilityState !== "hidden";

  function showConv(key) {
    const conv = state.convs.get(key);
    if (!conv) return;
    state.active = key;
    for (const c of state.convs.values()) {
      c.list.hidden = c !== conv;
      c.item.classList.toggle("active", c === conv);
    }
    $("title").textContent = conv.kind === "server" ? "No channel" : conv.name;
    $("topic").textContent = conv.topic;
    conv.boundary = conv.marker;
    placeDivider(conv);
    renderMembers();
    markRead(conv);
    conv.list.scrollTop = conv.list.scrollHeight;
  }

  function openDm(nick, show) {
    if (!nick || isChannel(nick) || fold(nick) === fold(state.nick)) return null;
    const conv = getConv(nick, true);
    askHistory(conv);
    if (show) showConv(conv.key);
    return conv;
  }

  function askHistory(conv) {
    if (conv.historyAsked || !state.caps.has("draft/chathistory") || !state.caps.has("batch")) return;
    if (conv.kind === "dm" && !state.account) return;  // guests' private chats are never stored
    conv.historyAsked = true;
    send("CHATHISTORY LATEST " + conv.name + " * " + HISTORY_LIMIT);
  }

  // ---------------------------------------------------------------- read markers and unread counts
  const lastTime = (conv) => conv.messages.reduce((t, m) => (m.kind === "system" ? t : Math.max(t, m.time)), 0);

  function unreadCount(conv) {
    const since = conv.marker || 0;
    return conv.messages.filter((m) => m.kind !== "system" && !m.self && !m.deleted && m.time > since).length;
  }

  function updateUnread(conv) {
    conv.unread = state.active === conv.key && visible() ? 0 : unreadCount(conv);
    const count = conv.item.querySelector(".unread");
    count.textContent = conv.unread ? String(conv.unread) : "";
    count.dataset.count = String(conv.unread);
    count.hidden = !conv.unread;
    conv.item.dataset.unread = String(conv.unread);
  }

  function markRead(conv) {
    // The conversation is on screen: move its read marker to its newest message (debounced).
    if (conv.kind === "server" || state.active !== conv.key || !visible()) { updateUnread(conv); return; }
    updateUnread(conv);
    // What is on screen now is read, even if another conversation is shown before the timer fires.
    const latest = Math.max(lastTime(conv), conv.markWant || 0);
    conv.markWant = latest;
    clearTimeout(conv.markTimer);
    conv.markTimer = setTimeout(() => {
      if (!latest || latest <= (conv.marker || 0) || latest <= conv.markSent) return;
      conv.markSent = latest;
      if (state.caps.has("draft/read-marker")) send("MARKREAD " + conv.name + " timestamp=" + isoTime(latest));
      else conv.marker = latest;
    }, MARK_DELAY);
  }

  function placeDivider(conv) {
    const old = conv.list.querySelector(".unread-marker");
    if (old) old.remove();
    if (conv.boundary == null) return;
    const first = conv.messages.find((m) => m.kind !== "system" && !m.self && m.time > conv.boundary);
    if (!first) return;
    const li = document.createElement("li");
    li.className = "unread-marker";
    li.textContent = "New messages";
    conv.list.insertBefore(li, first.li);
  }

  // ---------------------------------------------------------------- message rendering
  function setStatus(text) { $("status").textContent = text; }

  function badge(account) {
    const b = document.createElement("span");
    b.className = "badge";
    b.textContent = account.length > 26 ? account.slice(0, 16) + "…" + account.slice(-6) : account;
    b.title = "Signed in as " + account;
    return b;
  }

  function button(cls, text, title, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = text;
    if (title) b.title = title;
    b.addEventListener("click", (ev) => { ev.stopPropagation(); action(b); });
    return b;
  }

  function parseReactions(value) {
    // +freeq.at/reactions: emoji:nick,nick;emoji:nick
    const out = new Map();
    for (const part of (value || "").split(";")) {
      const i = part.lastIndexOf(":");
      if (i <= 0) continue;
      if (out.size < MAX_EMOJI) out.set(part.slice(0, i), part.slice(i + 1).split(",").filter(Boolean).slice(0, MAX_REACTORS));
    }
    return out;
  }

  function renderMessage(msg, conv) {
    const li = msg.li || document.createElement("li");
    msg.li = li;
    li.textContent = "";
    li.className = msg.kind + (msg.deleted ? " deleted" : "");
    li.dataset.nick = msg.nick || "";
    li.dataset.text = msg.deleted ? "" : msg.text;
    if (msg.msgid) li.dataset.msgid = msg.msgid;
    if (msg.account) li.dataset.account = msg.account;
    if (msg.edited) li.dataset.edited = "1"; else delete li.dataset.edited;
    if (msg.deleted) li.dataset.deleted = "1"; else delete li.dataset.deleted;
    const t = document.createElement("span");
    t.className = "time";
    t.textContent = new Date(msg.time).toTimeString().slice(0, 5);
    li.append(t);
    if (msg.nick) {
      const n = document.createElement("span");
      n.className = "nick";
      n.textContent = msg.kind === "action" ? "* " + msg.shown : "<" + msg.shown + ">";
      if (!msg.self && msg.from && !isChannel(msg.from)) {
        n.classList.add("link");
        n.title = "Private chat with " + msg.from;
        n.addEventListener("click", () => openDm(msg.from, true));
      }
      li.append(n);
      if (msg.account) li.append(badge(msg.account));
    }
    if (msg.replyTo && !msg.deleted) {
      const parent = conv.byId.get(msg.replyTo);
      const r = document.createElement("span");
      r.className = "reply-to";
      r.dataset.msgid = msg.replyTo;
      r.textContent = parent && !parent.deleted
        ? "↪ " + parent.nick + ": " + (parent.text.length > 60 ? parent.text.slice(0, 60) + "…" : parent.text)
        : "↪ (reply)";
      li.prepend(r);
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = msg.deleted ? "(message deleted)" : msg.text;
    li.append(body);
    if (msg.edited && !msg.deleted) {
      const e = document.createElement("span");
      e.className = "edited";
      e.textContent = "(edited)";
      li.append(e);
    }
    if (msg.msgid && !msg.deleted && msg.kind !== "system" && conv.kind !== "server") {
      const actions = document.createElement("span");
      actions.className = "actions";
      const picker = document.createElement("span");
      picker.className = "picker";
      picker.hidden = true;
      for (const emoji of REACTIONS) {
        picker.append(button("pick", emoji, "React with " + emoji, () => { picker.hidden = true; react(conv, msg, emoji); }));
      }
      actions.append(button("react", "☺+", "React", () => { picker.hidden = !picker.hidden; }), picker);
      actions.append(button("reply", "Reply", "Reply to this message", () => startReply(conv, msg)));
      if (msg.self && msg.kind !== "notice") {
        actions.append(button("edit", "Edit", "Edit this message", () => startEdit(conv, msg)));
        actions.append(button("delete", "Delete", "Delete this message", () => deleteMessage(conv, msg)));
      }
      li.append(actions);
    }
    if (msg.reactions.size && !msg.deleted) {
      const box = document.createElement("div");
      box.className = "reactions";
      for (const [emoji, nicks] of msg.reactions) {
        if (!nicks.length) continue;
        const mine = nicks.some((n) => fold(n) === fold(state.nick));
        const chip = button("reaction" + (mine ? " mine" : ""), emoji + " " + nicks.length, nicks.join(", "),
          () => react(conv, msg, emoji));
        chip.dataset.emoji = emoji;
        chip.dataset.count = String(nicks.length);
        box.append(chip);
      }
      li.append(box);
    }
    return li;
  }

  function makeMessage(kind, from, shown, text, tags, account) {
    const self = !!from && (state.account && account ? account === state.account : fold(from) === fold(state.nick));
    return {
      kind, from, nick: shown, shown, text, account, self, time: timeOf(tags), msgid: (tags && tags.msgid) || "",
      edited: !!(tags && tags["+freeq.at/edited"]), deleted: false,
      replyTo: (tags && (tags["+draft/reply"] || tags["+reply"])) || "",
      reactions: parseReactions(tags && tags["+freeq.at/reactions"]), li: null,
    };
  }

  function trim(conv) {
    while (conv.messages.length > MAX_MESSAGES) {
      const gone = conv.messages.shift();
      gone.li.remove();
      for (const [id, m] of conv.byId) if (m === gone) conv.byId.delete(id);
    }
  }

  function addMessage(conv, msg) {
    if (msg.msgid && conv.byId.has(msg.msgid)) return;
    if (msg.msgid) conv.byId.set(msg.msgid, msg);
    conv.messages.push(msg);
    const box = conv.list;
    const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 20;
    box.append(renderMessage(msg, conv));
    trim(conv);
    if (stick) box.scrollTop = box.scrollHeight;
    if (msg.kind !== "system") markRead(conv);
  }

  function addHistory(conv, msgs) {
    // History goes before what arrived live since the request; messages already shown are skipped.
    const fresh = msgs.filter((m) => !(m.msgid && conv.byId.has(m.msgid)));
    const anchor = conv.list.firstChild;
    for (const m of fresh) {
      if (m.msgid) conv.byId.set(m.msgid, m);
      conv.list.insertBefore(renderMessage(m, conv), anchor);
    }
    conv.messages = fresh.concat(conv.messages);
    trim(conv);
    if (state.active === conv.key) {
      conv.boundary = conv.marker;
      placeDivider(conv);
      conv.list.scrollTop = conv.list.scrollHeight;
    }
    markRead(conv);
  }

  function system(text, conv) {
    const target = conv || activeConv() || state.convs.get(SERVER);
    addMessage(target, makeMessage("system", "", "", text, null, null));
  }

  function renderMembers() {
    const ul = $("members");
    ul.textContent = "";
    const conv = activeConv();
    if (!conv || conv.kind !== "channel") { $("count").textContent = ""; return; }
    const members = [...conv.members.values()].sort((a, b) =>
      (b.prefix.includes("@") - a.prefix.includes("@")) || fold(a.nick).localeCompare(fold(b.nick)));
    for (const m of members) {
      const li = document.createElement("li");
      li.dataset.nick = m.nick;
      const account = state.accounts.get(fold(m.nick));
      li.append(document.createTextNode(m.prefix + m.nick + " "));
      if (account) { li.dataset.account = account; li.append(badge(account)); }
      if (fold(m.nick) !== fold(state.nick)) {
        li.classList.add("link");
        li.title = "Private chat with " + m.nick;
        li.addEventListener("click", () => openDm(m.nick, true));
      }
      ul.append(li);
    }
    $("count").textContent = "(" + members.length + ")";
  }

  function setAccount(nick, account) {
    if (!state) return;
    if (account && account !== "*" && account !== "0") state.accounts.set(fold(nick), account);
    else state.accounts.delete(fold(nick));
  }

  // ---------------------------------------------------------------- edits, deletes, reactions
  function rememberReaction(msgid, info) {
    if (!msgid) return;
    state.reactionIds.set(msgid, info);
    if (state.reactionIds.size > MAX_REACTION_IDS) state.reactionIds.delete(state.reactionIds.keys().next().value);
  }

  function applyReaction(conv, target, emoji, nick, add) {
    const msg = conv.byId.get(target);
    if (!msg || !emoji || (add && !msg.reactions.has(emoji) && msg.reactions.size >= MAX_EMOJI)) return;
    const nicks = (msg.reactions.get(emoji) || []).filter((n) => fold(n) !== fold(nick));
    if (add && nicks.length < MAX_REACTORS) nicks.push(nick);
    if (nicks.length) msg.reactions.set(emoji, nicks); else msg.reactions.delete(emoji);
    renderMessage(msg, conv);
  }

  function markDeleted(conv, msgid) {
    const msg = conv.byId.get(msgid);
    if (msg) { msg.deleted = true; renderMessage(msg, conv); updateUnread(conv); return; }
    const r = state.reactionIds.get(msgid);  // a reaction's own msgid: the reaction is taken back
    if (r) { state.reactionIds.delete(msgid); applyReaction(conv, r.target, r.emoji, r.nick, false); }
  }

  function react(conv, msg, emoji) {
    const mine = (msg.reactions.get(emoji) || []).some((n) => fold(n) === fold(state.nick));
    const tags = mine ? { "+freeq.at/unreact": emoji } : { "+draft/react": emoji };
    tags["+draft/reply"] = msg.msgid;
    send(tagPrefix(tags) + "TAGMSG " + conv.name);
    if (!state.caps.has("echo-message")) applyReaction(conv, msg.msgid, emoji, state.nick, !mine);
  }

  function startReply(conv, msg) {
    stopEdit();
    state.replying = { conv: conv.key, msgid: msg.msgid };
    $("input").placeholder = "Replying to " + msg.nick + " (Escape cancels)";
    $("compose").classList.add("replying");
    $("input").focus();
  }

  function startEdit(conv, msg) {
    state.replying = null;
    $("compose").classList.remove("replying");
    state.editing = { conv: conv.key, msgid: msg.msgid };
    $("input").value = msg.text;
    $("input").placeholder = "Editing a message (Escape cancels)";
    $("compose").classList.add("editing");
    $("input").focus();
  }

  function stopEdit() {
    // Also ends a reply: the compose box is back to a plain new message.
    state.editing = null;
    state.replying = null;
    $("input").placeholder = PLACEHOLDER;
    $("compose").classList.remove("editing", "replying");
  }

  function deleteMessage(conv, msg) {
    if (state.caps.has("draft/message-redaction")) send("REDACT " + conv.name + " " + msg.msgid);
    else send(tagPrefix({ "+draft/delete": msg.msgid }) + "TAGMSG " + conv.name);
  }

  // ---------------------------------------------------------------- batches
  function openBatch(m) {
    const ref = (m.params[0] || "").slice(1);
    if (!ref) return;
    if (state.batches.size >= MAX_BATCHES) state.batches.delete(state.batches.keys().next().value);
    state.batches.set(ref, { type: m.params[1] || "", args: m.params.slice(2), opener: m, lines: [] });
  }

  function closeBatch(m) {
    const ref = (m.params[0] || "").slice(1);
    const batch = state.batches.get(ref);
    if (!batch) return;
    state.batches.delete(ref);
    let out = batch.lines;
    if (batch.type === "draft/multiline") {
      // One message: lines joined with newlines, concat lines glued to the one before.
      const first = batch.lines.find((l) => l.command === "PRIVMSG" || l.command === "NOTICE");
      if (!first) return;
      let body = "";
      batch.lines.forEach((l, i) => {
        const concat = "draft/multiline-concat" in l.tags || "+draft/multiline-concat" in l.tags;
        body += (i && !concat ? "\n" : "") + (l.params[1] || "");
      });
      const tags = Object.assign({}, batch.opener.tags);
      delete tags.batch;
      out = [{ tags, source: batch.opener.source || first.source, command: first.command,
        params: [batch.args[0] || first.params[0], body] }];
    }
    const parent = batch.opener.tags.batch && state.batches.get(batch.opener.tags.batch);
    if (parent) { parent.lines.push(...out); return; }
    if (batch.type === "chathistory") { history(batch.args[0] || "", out); return; }
    for (const line of out) handle(line);
  }

  function history(target, lines) {
    const conv = getConv(target, false);
    if (!conv) return;
    const msgs = [];
    for (const m of lines) {
      const msg = chatMessage(m);
      if (msg) msgs.push(msg.msg);
    }
    addHistory(conv, msgs);
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
    if (m.command === "BATCH") {
      if ((m.params[0] || "").startsWith("+")) openBatch(m); else closeBatch(m);
      return;
    }
    const batch = m.tags.batch && state.batches.get(m.tags.batch);
    if (batch) {
      if (batch.lines.length < MAX_BATCH_LINES) batch.lines.push(m);
      return;
    }
    handle(m);
  }

  function chatMessage(m) {
    // A PRIVMSG/NOTICE as {conv, msg}, or null when it is not shown as a message.
    const p = m.params;
    const from = nickOf(m.source);
    const target = p[0] || "";
    let text = p[1] || "";
    if (!m.source || !m.source.includes("!")) return null;
    let kind = m.command === "NOTICE" ? "notice" : "privmsg";
    if (text.startsWith("\x01ACTION ") && text.endsWith("\x01")) { kind = "action"; text = text.slice(8, -1); }
    else if (text.startsWith("\x01")) return null;  // other CTCP
    const account = m.tags.account || state.accounts.get(fold(from)) || null;
    const mine = fold(from) === fold(state.nick);
    let conv;
    if (isChannel(target.replace(/^[@+~&%]+(?=[#&])/, ""))) conv = getConv(target.replace(/^[@+~&%]+(?=[#&])/, ""), true);
    else conv = getConv(mine ? target : from, true);
    const msg = makeMessage(kind, from, from, text, m.tags, account);
    return { conv, msg };
  }

  function onChat(m) {
    const p = m.params;
    const from = nickOf(m.source);
    const text = p[1] || "";
    if (m.command === "NOTICE" && /^API-BEARER \S+$/.test(text)) {
      // A REST bearer token for this identity: kept for this tab only, never shown.
      sessionStorage.setItem("freeq.bearer", text.slice(11));
      return;
    }
    if (m.tags.account) setAccount(from, m.tags.account);
    if (!m.source || !m.source.includes("!")) { system(text, state.convs.get(SERVER)); return; }
    const found = chatMessage(m);
    if (!found) return;
    const { conv, msg } = found;
    const edited = m.command === "PRIVMSG" ? m.tags["+draft/edit"] : undefined;
    if (edited) {
      const orig = conv.byId.get(edited);
      if (orig) {
        orig.text = msg.text;
        orig.edited = true;
        if (msg.msgid) conv.byId.set(msg.msgid, orig);
        renderMessage(orig, conv);
        return;
      }
      msg.edited = true;
    }
    if (conv.kind === "dm") askHistory(conv);
    addMessage(conv, msg);
  }

  function onTagmsg(m) {
    const from = nickOf(m.source);
    const target = m.params[0] || "";
    const conv = getConv(isChannel(target) ? target : (fold(from) === fold(state.nick) ? target : from), false);
    if (!conv) return;
    const reply = m.tags["+draft/reply"] || m.tags["+reply"];
    const deleted = m.tags["+draft/delete"];
    if (deleted) { markDeleted(conv, deleted); return; }
    const emoji = m.tags["+draft/react"] || m.tags["+react"];
    const unreact = m.tags["+freeq.at/unreact"];
    if (reply && emoji) {
      applyReaction(conv, reply, emoji, from, true);
      rememberReaction(m.tags.msgid, { target: reply, emoji, nick: from });
    } else if (reply && unreact) {
      applyReaction(conv, reply, unreact, from, false);
    }
  }

  function forChannel(name, fn) {
    const conv = getConv(name, false);
    if (conv && conv.kind === "channel") fn(conv);
  }

  function handle(m) {
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
          state.capValues = offered;
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
      case "NICK": {
        if (fold(from) === fold(me)) { state.nick = p[0]; setStatus("Connected as " + state.nick + "."); }
        const acc = state.accounts.get(fold(from));
        state.accounts.delete(fold(from));
        if (acc) state.accounts.set(fold(p[0]), acc);
        for (const conv of [...state.convs.values()]) {
          if (conv.kind === "channel" && conv.members.has(fold(from))) {
            const old = conv.members.get(fold(from));
            conv.members.delete(fold(from));
            conv.members.set(fold(p[0]), { nick: p[0], prefix: old.prefix });
            system(from + " is now known as " + p[0], conv);
          } else if (conv.kind === "dm" && conv.key === fold(from) && !state.convs.has(fold(p[0]))) {
            renameConv(conv, p[0]);
            system(from + " is now known as " + p[0], conv);
          }
        }
        renderMembers();
        break;
      }
      case "JOIN": {
        const chan = p[0];
        if (m.params.length >= 2) setAccount(from, p[1]);  // extended-join: JOIN <chan> <account|*> :<realname>
        else if (m.tags.account) setAccount(from, m.tags.account);
        if (fold(from) === fold(me)) {
          const conv = getConv(chan, true);
          conv.members = new Map();
          conv.historyAsked = false;
          showConv(conv.key);
          system("You joined " + chan, conv);
          // WHOX fills the account badges of everyone already there.
          send("WHO " + chan + " %tna,42");
        } else {
          forChannel(chan, (conv) => {
            conv.members.set(fold(from), { nick: from, prefix: "" });
            system(from + " joined", conv);
          });
        }
        renderMembers();
        break;
      }
      case "PART": case "KICK": {
        const chan = p[0];
        const who = m.command === "KICK" ? p[1] : from;
        forChannel(chan, (conv) => {
          if (fold(who) === fold(me)) {
            system("You left " + chan, state.convs.get(SERVER));
            dropConv(conv);
            return;
          }
          conv.members.delete(fold(who));
          system(who + (m.command === "KICK" ? " was kicked" : " left"), conv);
        });
        renderMembers();
        break;
      }
      case "QUIT":
        for (const conv of state.convs.values()) {
          if (conv.kind === "channel" && conv.members.delete(fold(from))) system(from + " quit (" + (p[0] || "") + ")", conv);
        }
        renderMembers();
        break;
      case "ACCOUNT": setAccount(from, p[0]); renderMembers(); break;
      case "353":
        forChannel(p[2] || "", (conv) => {
          for (const entry of (p[3] || "").split(" ").filter(Boolean)) {
            const match = entry.match(/^([@+]*)(.*)$/);
            const nick = nickOf(match[2]);
            conv.members.set(fold(nick), { nick, prefix: match[1] });
          }
        });
        break;
      case "366":
        renderMembers();
        forChannel(p[1] || "", askHistory);
        break;
      case "354":  // WHOX: <me> 42 <nick> <account>
        if (p[1] === "42") { setAccount(p[2], p[3]); renderMembers(); }
        break;
      case "330": setAccount(p[1], p[2]); renderMembers(); system(p[1] + " is logged in as " + p[2]); break;
      case "311": system(p[1] + " is " + p[2] + "@" + p[3] + " (" + (p[5] || "") + ")"); break;
      case "332":
        forChannel(p[1] || "", (conv) => {
          conv.topic = p[2] || "";
          if (state.active === conv.key) $("topic").textContent = conv.topic;
        });
        break;
      case "TOPIC":
        forChannel(p[0] || "", (conv) => {
          conv.topic = p[1] || "";
          if (state.active === conv.key) $("topic").textContent = conv.topic;
          system(from + " set the topic: " + (p[1] || ""), conv);
        });
        break;
      case "MODE":
        forChannel(p[0] || "", (conv) => {
          system(from + " sets mode " + p.slice(1).join(" "), conv);
          send("NAMES " + conv.name);
          conv.members = new Map();
        });
        break;
      case "MARKREAD": {
        const conv = getConv(p[0] || "", false);
        const value = p[1] || "*";
        if (!conv) break;
        const ms = value.startsWith("timestamp=") ? Date.parse(value.slice(10)) : NaN;
        conv.marker = Number.isNaN(ms) ? null : Math.max(ms, conv.marker || 0);
        updateUnread(conv);
        break;
      }
      case "PRIVMSG": case "NOTICE": onChat(m); break;
      case "TAGMSG": onTagmsg(m); break;
      case "REDACT": {
        const target = p[0] || "";
        const conv = getConv(isChannel(target) ? target : (fold(from) === fold(me) ? target : from), false);
        if (conv && p[1]) markDeleted(conv, p[1]);
        break;
      }
      case "ERROR": system("Server closed the connection: " + (p[0] || "")); break;
      case "FAIL":
        if (p[0] === "CHATHISTORY" && p[1] === "INVALID_TARGET") break;  // no history kept for this chat
        system("Error: " + p.slice(2).join(" "));
        break;
      default:
        if (/^[45]\d\d$/.test(m.command)) system(p.slice(1).join(" "));
    }
  }

  // ---------------------------------------------------------------- user actions
  function capLimit(name, fallback) {
    const value = (state.capValues && state.capValues.get("draft/multiline")) || "";
    for (const item of value.split(",")) {
      const [k, v] = item.split("=");
      if (k === name && /^\d+$/.test(v || "")) return Number(v);
    }
    return fallback;
  }

  function sendMessage(conv, text, action) {
    // One message to `conv`: a draft/multiline batch when it has several lines (or one long line) and the
    // server takes batches, else one PRIVMSG per line (long lines cut into pieces).
    const target = conv.name;
    const body = action ? "\x01ACTION " + text + "\x01" : text;
    const lines = body.replace(/\r\n?/g, "\n").split("\n");
    const long = lines.some((l) => enc.encode(l).length > LINE_BYTES);
    const multiline = state.caps.has("draft/multiline") && state.caps.has("batch");
    const reply = state.replying && state.replying.conv === conv.key ? { "+draft/reply": state.replying.msgid } : {};
    if (state.replying) stopEdit();
    if ((lines.length > 1 || long) && multiline && !action) {
      const pieces = [];
      for (const l of lines) utf8Chunks(l, LINE_BYTES).forEach((c, i) => pieces.push([c, i > 0]));
      if (pieces.length > capLimit("max-lines", 100) || enc.encode(body).length > capLimit("max-bytes", 40000)) {
        system("That message is too long for this server.", conv);
        return;
      }
      const ref = "ml" + Math.random().toString(36).slice(2, 10) + (state.batchSeq++).toString(36);
      send(tagPrefix(reply) + "BATCH +" + ref + " draft/multiline " + target);
      for (const [piece, concat] of pieces) {
        send(tagPrefix(concat ? { batch: ref, "draft/multiline-concat": "" } : { batch: ref }) + "PRIVMSG " + target + " :" + piece);
      }
      send("BATCH -" + ref);
    } else {
      for (const l of lines) {
        if (!l.trim()) continue;
        for (const piece of utf8Chunks(l, LINE_BYTES)) send(tagPrefix(reply) + "PRIVMSG " + target + " :" + piece);
      }
    }
    if (!state.caps.has("echo-message")) {
      addMessage(conv, makeMessage(action ? "action" : "privmsg", state.nick, state.nick, text, null, state.account));
    }
  }

  function sendEdit(text) {
    const { conv: key, msgid } = state.editing;
    stopEdit();
    const conv = state.convs.get(key);
    if (!conv) return;
    if (text.includes("\n")) { system("An edit is one line.", conv); return; }
    if (enc.encode(text).length > LINE_BYTES) { system("An edit must be shorter.", conv); return; }
    send(tagPrefix({ "+draft/edit": msgid }) + "PRIVMSG " + conv.name + " :" + text);
  }

  function sendText(text) {
    if (!state || !state.registered) return;
    if (state.editing) { sendEdit(text); return; }
    const conv = activeConv();
    if (text.startsWith("/") && !text.startsWith("//")) {
      const [cmd, ...args] = text.slice(1).split(" ");
      const rest = args.join(" ");
      switch (cmd.toLowerCase()) {
        case "join": if (args[0]) { state.wantChannel = args[0]; send("JOIN " + args[0]); } return;
        case "part":
          if (conv && conv.kind === "channel") send("PART " + conv.name + (rest ? " :" + rest : ""));
          else if (conv && conv.kind === "dm") dropConv(conv);
          return;
        case "close": if (conv && conv.kind === "dm") dropConv(conv); return;
        case "nick": if (args[0]) send("NICK " + args[0]); return;
        case "whois": if (args[0]) send("WHOIS " + args[0]); return;
        case "topic": if (conv && conv.kind === "channel") send("TOPIC " + conv.name + " :" + rest); return;
        case "query": if (args[0]) openDm(args[0], true); return;
        case "msg":
          if (args.length > 1 && args[0]) {
            const to = isChannel(args[0]) ? getConv(args[0], false) : openDm(args[0], true);
            if (to) sendMessage(to, args.slice(1).join(" "), false);
            else send("PRIVMSG " + args[0] + " :" + args.slice(1).join(" "));
          }
          return;
        case "me":
          if (conv && conv.kind !== "server") sendMessage(conv, rest, true);
          return;
        case "quote": if (rest) send(rest); return;
        default: system("Unknown command /" + cmd); return;
      }
    }
    if (!conv || conv.kind === "server") { system("Join a channel first: /join #channel"); return; }
    sendMessage(conv, text.startsWith("//") ? text.slice(1) : text, false);
  }

  async function connect(nick, channel, auth, token) {
    disconnect();
    let identity = null;
    let failure = null;
    try {
      if (auth === "didkey") identity = await didKeyIdentity();
      else if (auth === "token") {
        if (!token) throw new Error("paste the token the auth broker gave you");
        identity = tokenIdentity(token.trim());
      }
    } catch (e) {
      failure = "Cannot sign in: " + e.message + ". Connecting as a guest.";
      identity = null;
    }
    $("identity").textContent = identity && identity.did ? "Signing in as " + identity.did : "";
    $("messages").textContent = "";
    $("convs").textContent = "";
    state = {
      nick, wantChannel: channel && (isChannel(channel) ? channel : "#" + channel), identity,
      capLs: [], caps: new Set(), capValues: new Map(), capDone: false, saslBuffer: "", registered: false,
      account: null, accounts: new Map(), convs: new Map(), active: null, batches: new Map(),
      reactionIds: new Map(), editing: null, replying: null, batchSeq: 0,
    };
    newConv(SERVER, "server");
    showConv(SERVER);
    if (failure) system(failure);
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
      else if (state && state.editing) stopEdit();
      $("input").value = "";
    });
    // Enter sends; Shift+Enter starts a new line of the same message; Escape cancels an edit.
    $("input").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("compose").requestSubmit(); }
      else if (ev.key === "Escape" && state && (state.editing || state.replying)) { stopEdit(); $("input").value = ""; }
    });
    document.addEventListener("visibilitychange", () => { const c = activeConv(); if (c) markRead(c); });
    // A token in the URL fragment never reaches server logs: #token=<web token>.
    const frag = new URLSearchParams(location.hash.slice(1));
    if (frag.get("token")) { $("auth").value = "token"; $("token").value = frag.get("token"); $("token-label").hidden = false; }
    if (params.get("autoconnect") === "1" && $("nick").value) $("login").requestSubmit();
  }

  window.freeq = {
    connect, disconnect, sendText, parseLine, base58btc, showConv,
    get state() { return state; },
    get active() { return state ? state.active : null; },
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
