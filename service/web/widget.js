/*
 * Switchboard chat widget.
 *
 * Paste one tag into any page:
 *
 *   <script src="https://support.example.com/chat/widget.js"
 *           data-switchboard-url="https://support.example.com" defer></script>
 *
 * Optional attributes on the tag:
 *   data-title               heading of the chat panel (default "Chat with us")
 *   data-launcher-label      text of the launcher button (default "Chat with us")
 *   data-accent              accent colour, any CSS colour (default #2451c6)
 *   data-open="true"         open the panel as soon as the page loads
 *   data-customer-id,
 *   data-customer-signature  a signed-in customer: the id and hex HMAC-SHA256(secret, id),
 *                            computed by the host site's server. Without a valid signature the
 *                            visitor is anonymous.
 * The same options can be set before the tag as window.switchboardSettings = {title, open,
 * accent, customer: {id, signature}}.
 *
 * The widget builds its own DOM in a shadow root, so the host page's CSS cannot reach it.
 * The session token is kept in localStorage: a reload (or a dropped connection) resumes the
 * same conversation. window.SwitchboardChat exposes open(), close() and end().
 *
 * Files: the paperclip (or pasting or dropping an image) posts the file to /chat/files with
 * the session's upload credential (the session frame's `files`); a file that could not be sent
 * stays in the conversation with a Retry button. Files in messages (`files`: type and a signed
 * link) show as an image or a download link.
 *
 * Protocol: docs/interfaces.md (chat WebSocket frames).
 */
(function () {
  "use strict";

  if (window.SwitchboardChat) return; // pasted twice: one widget is enough

  var script = document.currentScript;
  var settings = window.switchboardSettings || {};
  var data = (script && script.dataset) || {};

  var SESSION_KEY = "switchboard.chat.session";
  var OPEN_KEY = "switchboard.chat.open";
  var CHOICES_KEY = "switchboard.chat.choices"; // quick replies survive a reload
  var MAX_TEXT = 1000;
  var MAX_FILE = 5 * 1024 * 1024; // the server's cap, checked here first to save the upload

  function baseUrl() {
    var raw = data.switchboardUrl || settings.url;
    if (!raw && script && script.src) raw = new URL(script.src, location.href).origin;
    if (!raw) raw = location.origin;
    return new URL(raw, location.href).href.replace(/\/+$/, "");
  }

  var BASE = baseUrl();
  var WS_URL = BASE.replace(/^http/, "ws") + "/chat/ws";
  var FILES_URL = BASE + "/chat/files";
  var TITLE = data.title || settings.title || "Chat with us";
  var LAUNCHER = data.launcherLabel || settings.launcherLabel || "Chat with us";
  var ACCENT = data.accent || settings.accent || "";
  var CUSTOMER = (function () {
    var c = settings.customer || {};
    var id = data.customerId || c.id;
    var signature = data.customerSignature || c.signature;
    return id && signature ? { id: String(id), signature: String(signature) } : null;
  })();

  var store = {
    get: function (key) {
      try { return window.localStorage.getItem(key); } catch (e) { return null; }
    },
    set: function (key, value) {
      try {
        if (value === null) window.localStorage.removeItem(key);
        else window.localStorage.setItem(key, value);
      } catch (e) { /* storage disabled: the chat still works, it just won't resume */ }
    },
  };

  var CSS = [
    ":host { all: initial; }",
    "* { box-sizing: border-box; }",
    ".root { --accent: #2451c6; --accent-ink: #fff; --ink: #1d2330; --muted: #5b6475;",
    "  --line: #dde1e8; --bg: #fff; --bubble: #f0f2f6;",
    "  font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: var(--ink);",
    "  position: fixed; right: 20px; bottom: 20px; z-index: 2147483000;",
    "  display: flex; flex-direction: column; align-items: flex-end; gap: 12px; }",
    "button, textarea { font: inherit; color: inherit; }",
    "button { cursor: pointer; }",
    ":focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }",
    ".visually-hidden { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px;",
    "  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0; }",
    ".launcher { display: inline-flex; align-items: center; gap: 8px; border: 0; border-radius: 999px;",
    "  padding: 12px 20px; background: var(--accent); color: var(--accent-ink); font-weight: 600;",
    "  box-shadow: 0 6px 20px rgba(20, 30, 60, .25); }",
    ".launcher svg { width: 20px; height: 20px; fill: currentColor; }",
    ".launcher .unread { display: none; min-width: 10px; height: 10px; border-radius: 50%;",
    "  background: #ffb020; }",
    ".launcher.has-unread .unread { display: inline-block; }",
    ".panel { width: 370px; height: min(560px, calc(100vh - 110px)); display: flex; flex-direction: column;",
    "  background: var(--bg); border: 1px solid var(--line); border-radius: 14px; overflow: hidden;",
    "  box-shadow: 0 12px 40px rgba(20, 30, 60, .22); }",
    ".panel[hidden] { display: none; }",
    ".head { display: flex; align-items: flex-start; gap: 8px; padding: 14px 16px;",
    "  background: var(--accent); color: var(--accent-ink); }",
    ".head .titles { flex: 1; min-width: 0; }",
    ".head h2 { margin: 0; font-size: 16px; font-weight: 650; }",
    ".status { margin: 2px 0 0; font-size: 13px; opacity: .92; min-height: 1.2em; }",
    ".icon-button { border: 0; background: transparent; color: inherit; border-radius: 6px;",
    "  width: 32px; height: 32px; display: grid; place-items: center; }",
    ".icon-button:hover { background: rgba(255, 255, 255, .18); }",
    ".icon-button svg { width: 18px; height: 18px; fill: currentColor; }",
    ".scroller { flex: 1; min-height: 0; overflow-y: auto; overscroll-behavior: contain; }",
    ".messages { list-style: none; margin: 0; padding: 14px 14px 6px;",
    "  display: flex; flex-direction: column; gap: 6px; }",
    ".msg { max-width: 85%; display: flex; flex-direction: column; gap: 2px; }",
    ".msg .who { font-size: 12px; color: var(--muted); margin: 6px 2px 0; }",
    ".msg .text { padding: 8px 12px; border-radius: 14px; white-space: pre-wrap; overflow-wrap: anywhere;",
    "  background: var(--bubble); }",
    ".msg.customer { align-self: flex-end; align-items: flex-end; }",
    ".msg.customer .text { background: var(--accent); color: var(--accent-ink); border-bottom-right-radius: 4px; }",
    ".msg.bot .text, .msg.agent .text { border-bottom-left-radius: 4px; }",
    ".msg.agent .text { background: #e6f4ea; }",
    ".msg.system { align-self: center; max-width: 95%; text-align: center; }",
    ".msg.system .text { background: transparent; color: var(--muted); font-size: 13px; padding: 4px; }",
    ".choices { display: flex; flex-wrap: wrap; gap: 8px; padding: 4px 14px 10px; }",
    ".choices:empty { display: none; }",
    ".choices.rating { gap: 6px; }",
    ".choices.rating .choice { min-width: 38px; padding-left: 0; padding-right: 0; }",
    ".choice { border: 1.5px solid var(--accent); background: var(--bg); color: var(--accent);",
    "  border-radius: 999px; padding: 5px 14px; font-weight: 600; }",
    ".choice:hover { background: var(--accent); color: var(--accent-ink); }",
    ".notice { margin: 0; padding: 6px 14px; font-size: 13px; color: #8a4b00; background: #fff6e5;",
    "  border-top: 1px solid #f3dfb8; }",
    ".notice:empty { display: none; }",
    ".composer { display: flex; gap: 8px; align-items: flex-end; padding: 10px 12px;",
    "  border-top: 1px solid var(--line); }",
    ".composer textarea { flex: 1; resize: none; border: 1px solid var(--line); border-radius: 10px;",
    "  padding: 8px 10px; min-height: 40px; max-height: 120px; background: var(--bg); }",
    ".composer textarea:disabled { background: #f6f7f9; }",
    ".send { border: 0; border-radius: 10px; padding: 9px 16px; background: var(--accent);",
    "  color: var(--accent-ink); font-weight: 600; }",
    ".send:disabled, .choice:disabled { opacity: .5; cursor: default; }",
    ".foot { display: flex; justify-content: space-between; align-items: center; padding: 0 12px 10px;",
    "  font-size: 12px; color: var(--muted); }",
    ".link-button { border: 0; background: none; padding: 2px 0; color: var(--muted);",
    "  text-decoration: underline; font-size: 12px; }",
    ".link-button:hover { color: var(--ink); }",
    ".restart { margin: 4px auto 10px; border: 1.5px solid var(--accent); color: var(--accent);",
    "  background: var(--bg); border-radius: 999px; padding: 6px 16px; font-weight: 600; }",
    ".restart[hidden], .link-button[hidden] { display: none; }",
    ".attach { border: 1px solid var(--line); background: var(--bg); color: var(--muted);",
    "  border-radius: 10px; width: 40px; height: 40px; display: grid; place-items: center; flex: none; }",
    ".attach:hover:not(:disabled) { color: var(--accent); border-color: var(--accent); }",
    ".attach:disabled { opacity: .5; cursor: default; }",
    ".attach svg { width: 20px; height: 20px; fill: currentColor; }",
    ".msg .file { display: block; max-width: 240px; border-radius: 12px; overflow: hidden;",
    "  border: 1px solid var(--line); background: var(--bubble); text-decoration: none; color: inherit; }",
    ".msg.customer .file { border-bottom-right-radius: 4px; }",
    ".msg.agent .file, .msg.bot .file { border-bottom-left-radius: 4px; }",
    ".msg .file img { display: block; width: 100%; max-height: 220px; object-fit: cover; }",
    ".msg .file.doc { display: flex; align-items: center; gap: 10px; padding: 10px 12px; }",
    ".msg .file.doc .badge { flex: none; width: 36px; height: 44px; border-radius: 6px; background: var(--accent);",
    "  color: var(--accent-ink); font: 700 11px/44px system-ui, sans-serif; text-align: center; }",
    ".msg .file.doc .what { display: flex; flex-direction: column; font-size: 13px; }",
    ".msg .file.doc .what strong { font-size: 14px; }",
    ".msg .file.doc .what span { color: var(--muted); }",
    ".msg.failed .file, .msg.sending .file { opacity: .6; }",
    ".msg .file-state { font-size: 12px; color: var(--muted); display: flex; gap: 8px; align-items: center; }",
    ".msg.failed .file-state { color: #a3261b; }",
    ".retry { border: 1.5px solid currentColor; background: transparent; color: inherit; border-radius: 999px;",
    "  padding: 1px 10px; font-size: 12px; font-weight: 600; }",
    ".composer.dropping { outline: 2px dashed var(--accent); outline-offset: -4px; }",
    "@media (max-width: 480px) {",
    "  .root { right: 0; bottom: 0; left: 0; align-items: stretch; padding: 10px; }",
    "  .launcher { align-self: flex-end; }",
    "  .panel { width: 100%; height: calc(100vh - 90px); }",
    "}",
    "@media (prefers-reduced-motion: no-preference) {",
    "  .panel { animation: rise .16s ease-out; }",
    "  @keyframes rise { from { opacity: 0; transform: translateY(8px); } to { opacity: 1; transform: none; } }",
    "}",
  ].join("\n");

  var ICON_CHAT = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/></svg>';
  var ICON_CLIP = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 6 0v10.5a1.5 1.5 0 0 1-3 0V6.5H9v9a3 3 0 0 0 6 0V5a4.5 4.5 0 0 0-9 0v11.5a6 6 0 0 0 12 0v-10h-1.5z"/></svg>';
  var ICON_MIN = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M5 11h14v2H5z"/></svg>';

  // ---- DOM ---------------------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "class") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  var host = document.createElement("switchboard-chat");
  // Inline !important beats any host-page rule aimed at our element.
  host.style.setProperty("display", "block", "important");
  host.style.setProperty("position", "static", "important");
  var shadow = host.attachShadow({ mode: "open" });

  var root = el("div", { class: "root", part: "root" });
  if (ACCENT) root.style.setProperty("--accent", ACCENT);

  var launcher = el("button", { class: "launcher", type: "button", "aria-expanded": "false",
                                "aria-controls": "sb-panel" });
  launcher.innerHTML = ICON_CHAT; // static markup, no data
  launcher.appendChild(el("span", { class: "label", text: LAUNCHER }));
  launcher.appendChild(el("span", { class: "unread", "aria-hidden": "true" }));

  var statusLine = el("p", { class: "status", id: "sb-status", "aria-live": "polite" });
  var minimize = el("button", { class: "icon-button", type: "button", "aria-label": "Minimise chat" });
  minimize.innerHTML = ICON_MIN;
  var head = el("div", { class: "head" }, [
    el("div", { class: "titles" }, [el("h2", { id: "sb-title", text: TITLE }), statusLine]),
    minimize,
  ]);
  var messages = el("ol", { class: "messages", role: "log", "aria-live": "polite",
                            "aria-label": "Messages" });
  var choices = el("div", { class: "choices", role: "group", "aria-label": "Quick replies" });
  // Quick replies scroll with the conversation, right under the question they answer.
  var scroller = el("div", { class: "scroller", tabindex: "0", role: "region",
                             "aria-label": "Conversation" }, [messages, choices]);
  var notice = el("p", { class: "notice", role: "status" });
  var restart = el("button", { class: "restart", type: "button", text: "Start a new chat", hidden: "" });
  var input = el("textarea", { id: "sb-input", rows: "1", maxlength: String(MAX_TEXT),
                               placeholder: "Type your message…", autocomplete: "off" });
  var send = el("button", { class: "send", type: "submit", text: "Send" });
  var attach = el("button", { class: "attach", type: "button", "aria-label": "Attach a photo or file",
                              title: "Attach a photo or file (up to 5 MB)" });
  attach.innerHTML = ICON_CLIP; // static markup, no data
  var picker = el("input", { type: "file", hidden: "", "aria-hidden": "true", tabindex: "-1",
                             accept: "image/*,application/pdf,text/plain" });
  var composer = el("form", { class: "composer" }, [
    attach, picker,
    el("label", { for: "sb-input", class: "visually-hidden", text: "Message" }), input, send,
  ]);
  var endButton = el("button", { class: "link-button", type: "button", text: "End chat" });
  var foot = el("div", { class: "foot" }, [
    el("span", { text: "Powered by Switchboard" }), endButton,
  ]);
  var panel = el("section", { class: "panel", id: "sb-panel", "aria-labelledby": "sb-title",
                              hidden: "" },
                 [head, scroller, restart, notice, composer, foot]);

  root.appendChild(panel);
  root.appendChild(launcher);
  shadow.appendChild(el("style", { text: CSS }));
  shadow.appendChild(root);

  // ---- state -------------------------------------------------------------------------------

  var ws = null;
  var session = store.get(SESSION_KEY);
  var connected = false;      // a session frame arrived on the current socket
  var everConnected = false;
  var finished = false;       // the chat ended: no reconnects until "Start a new chat"
  var attempt = 0;
  var retryTimer = null;
  var lastSender = null;
  var filesCredential = null; // the session frame's `files`: what /chat/files takes

  function isOpen() { return !panel.hidden; }

  function setOpen(open, byUser) {
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", String(open));
    launcher.classList.remove("has-unread");
    store.set(OPEN_KEY, open ? "1" : null);
    if (open) {
      if (!ws && !finished) connect();
      scrollDown();
      if (byUser) input.focus();
    } else if (byUser) {
      launcher.focus();
    }
  }

  function scrollDown() { scroller.scrollTop = scroller.scrollHeight; }

  var WHO = { customer: "You", bot: "Assistant", agent: "Agent" };

  function addMessage(from, text, files) {
    var kind = WHO[from] ? from : "system";
    var item = el("li", { class: "msg " + kind });
    var who = el("span", { class: "who", text: WHO[kind] || "" });
    // Screen readers hear who spoke every time; sighted users see it when the sender changes.
    if (kind === "system") who = null;
    else if (lastSender === kind || kind === "customer") who.className = "visually-hidden";
    if (who) item.appendChild(who);
    (files || []).forEach(function (file) { item.appendChild(fileView(file, kind)); });
    if (text || !(files && files.length)) item.appendChild(el("span", { class: "text", text: text }));
    messages.appendChild(item);
    lastSender = kind;
    scrollDown();
    if (!isOpen() && kind !== "customer") launcher.classList.add("has-unread");
    return item;
  }

  var IMAGES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
  var KINDS = { "application/pdf": "PDF", "text/plain": "TXT" };

  // A file in a message: an image shown (it opens full size), anything else a download card.
  function fileView(file, kind) {
    var whose = kind === "customer" ? "you sent" : "from " + (WHO[kind] || "us").toLowerCase();
    var href = file.url ? BASE + file.url : file.local;
    if (IMAGES.indexOf(file.content_type) >= 0) {
      var link = el("a", { class: "file photo", href: href, target: "_blank", rel: "noopener",
                           "aria-label": "Photo " + whose + ": open full size" });
      var img = el("img", { src: href, alt: "" });
      img.addEventListener("load", scrollDown);
      link.appendChild(img);
      return link;
    }
    var label = KINDS[file.content_type] || "FILE";
    var card = el("a", { class: "file doc", href: href, download: "", rel: "noopener",
                         "aria-label": label + " file " + whose + ": download" }, [
      el("span", { class: "badge", text: label, "aria-hidden": "true" }),
      el("span", { class: "what" }, [el("strong", { text: file.name || (label + " document") }),
                                     el("span", { text: "Download" })]),
    ]);
    return card;
  }

  function showChoices(list, rating) {
    choices.textContent = "";
    choices.classList.toggle("rating", !!rating);
    choices.setAttribute("aria-label", rating ? "Rating" : "Quick replies");
    (list || []).forEach(function (choice) {
      if (!choice || typeof choice.value !== "string") return;
      var button = el("button", { class: "choice", type: "button", text: choice.label || choice.value });
      button.addEventListener("click", function () { sendText(choice.value, choice.label); });
      button.disabled = !connected;
      choices.appendChild(button);
    });
    scrollDown();
  }

  // A replayed transcript carries no choices: bring back the ones we saw for the same message.
  function choicesFor(frame) {
    if (Array.isArray(frame.choices) && frame.choices.length) {
      store.set(CHOICES_KEY, JSON.stringify({ session: session, text: frame.text, choices: frame.choices }));
      return frame.choices;
    }
    try {
      var saved = JSON.parse(store.get(CHOICES_KEY) || "null");
      if (saved && saved.session === session && saved.text === frame.text) return saved.choices;
    } catch (e) { /* unreadable: no quick replies */ }
    return null;
  }

  function minutes(seconds) { return Math.max(1, Math.round(seconds / 60)); }

  var lastState = null;
  var surveyPending = false; // a rating was asked and not answered yet

  function showStatus(frame) {
    var text = "";
    if (frame.state === "self_service") text = "You're chatting with our assistant";
    else if (frame.state === "queued") {
      if (typeof frame.position === "number") {
        text = "You're number " + frame.position + " in line, about " +
          minutes(frame.estimated_wait_s || 0) + " min";
      } else if (lastState === "queued" && statusLine.textContent) {
        text = statusLine.textContent; // still waiting, no news: keep the last position
      } else {
        text = "Waiting for the next available person";
      }
    } else if (frame.state === "with_agent") text = "You're chatting with our team";
    else if (frame.state === "closed") text = surveyPending ? "One last question before you go" : "This chat has ended";
    statusLine.textContent = text;
    lastState = frame.state;
    // A survey asked as the chat closes keeps the socket until it is answered.
    if (frame.state === "closed" && !surveyPending) finish("closed");
  }

  function setConnected(value) {
    connected = value;
    var canType = value && !finished;
    input.disabled = !canType;
    send.disabled = !canType;
    attach.disabled = !canType || !filesCredential;
    endButton.hidden = finished;
    Array.prototype.forEach.call(choices.querySelectorAll("button"), function (b) {
      b.disabled = !canType;
    });
  }

  function finish(why) {
    finished = true;
    choices.textContent = "";
    store.set(SESSION_KEY, null);
    store.set(CHOICES_KEY, null);
    session = null;
    clearTimeout(retryTimer);
    notice.textContent = "";
    restart.hidden = false;
    if (why === "ended") statusLine.textContent = "You ended the chat";
    if (ws) {
      var socket = ws;
      ws = null;
      // Let the server finish its last frames before the socket goes.
      setTimeout(function () { try { socket.close(1000); } catch (e) { /* already gone */ } }, 500);
    }
    setConnected(false);
  }

  // ---- connection --------------------------------------------------------------------------

  function connect() {
    clearTimeout(retryTimer);
    if (finished) return;
    var socket;
    try {
      socket = new WebSocket(WS_URL);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = socket;
    socket.onopen = function () {
      var start = { type: "start", session: session || null };
      if (CUSTOMER) start.customer = CUSTOMER;
      socket.send(JSON.stringify(start));
    };
    socket.onmessage = function (event) {
      if (socket !== ws) return;
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame && typeof frame === "object") handle(frame);
    };
    socket.onclose = function () {
      if (socket !== ws) return;
      ws = null;
      setConnected(false);
      if (!finished) scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    clearTimeout(retryTimer);
    if (everConnected) notice.textContent = "Connection lost. Reconnecting…";
    var delay = Math.min(15000, 500 * Math.pow(2, attempt)) * (0.6 + Math.random() * 0.4);
    attempt += 1;
    retryTimer = setTimeout(connect, delay);
  }

  function handle(frame) {
    switch (frame.type) {
      case "session":
        // Every (re)connect replays the conversation from the server: start from a clean list.
        messages.textContent = "";
        choices.textContent = "";
        lastSender = null;
        session = frame.session;
        filesCredential = typeof frame.files === "string" ? frame.files : null;
        store.set(SESSION_KEY, session);
        attempt = 0;
        everConnected = true;
        notice.textContent = "";
        setConnected(true);
        break;
      case "message":
        if (typeof frame.text !== "string") return;
        addMessage(frame.from, frame.text, Array.isArray(frame.files) ? frame.files : null);
        showChoices(frame.from === "bot" ? choicesFor(frame) : null);
        break;
      case "survey":
        if (typeof frame.text !== "string") return;
        addMessage("bot", frame.text);
        surveyPending = true;
        showChoices(frame.choices, true);
        break;
      case "status":
        showStatus(frame);
        break;
      case "error": {
        var text = frame.message || "Something went wrong.";
        var last = messages.lastElementChild;
        // The same trouble on every retry is said once.
        if (!(last && last.classList.contains("system") && last.textContent === text)) {
          addMessage("system", text);
        }
        break;
      }
      default:
        break; // frames from a newer server: ignore
    }
  }

  function sendText(value, label) {
    var text = String(value).trim();
    if (!text || !connected || !ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify({ type: "message", text: text.slice(0, MAX_TEXT) }));
    surveyPending = false; // the server thanks, asks again, or lets the rating go
    addMessage("customer", label || text);
    choices.textContent = "";
    store.set(CHOICES_KEY, null);
    return true;
  }

  // ---- files -------------------------------------------------------------------------------

  function sendFile(file) {
    if (!file || !connected || !filesCredential) return;
    if (file.size > MAX_FILE) {
      addMessage("system", "“" + file.name + "” is over 5 MB. Please send a smaller file.");
      return;
    }
    var local = URL.createObjectURL(file);
    var shown = { content_type: file.type, local: local, name: file.name };
    var item = addMessage("customer", "", [shown]);
    upload(item, file);
    choices.textContent = "";
  }

  function upload(item, file) {
    var state = item.querySelector(".file-state");
    if (!state) {
      state = el("span", { class: "file-state", role: "status" });
      item.appendChild(state);
    }
    item.classList.remove("failed");
    item.classList.add("sending");
    state.textContent = "Sending…";
    fetch(FILES_URL, { method: "POST", body: file, credentials: "omit",
                 headers: { "Authorization": "Bearer " + filesCredential,
                            "Content-Type": file.type || "application/octet-stream" } })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) throw new Error(body.error || "the file could not be sent");
          item.classList.remove("sending");
          item.removeChild(state);
          var view = item.querySelector(".file");
          if (view && body.file && typeof body.file.url === "string") { // the server's copy
            view.href = BASE + body.file.url;
            var img = view.querySelector("img");
            if (img) img.src = view.href;
          }
        });
      })
      .catch(function (error) {
        item.classList.remove("sending");
        item.classList.add("failed");
        state.textContent = "";
        var why = error instanceof TypeError ? "the file could not be sent: check your connection"
          : error.message; // the server's words say why and what to do
        state.appendChild(el("span", { text: why.charAt(0).toUpperCase() + why.slice(1) + "." }));
        var retry = el("button", { class: "retry", type: "button", text: "Retry" });
        retry.addEventListener("click", function () { upload(item, file); });
        state.appendChild(retry);
        scrollDown();
      });
  }

  attach.addEventListener("click", function () { picker.click(); });
  picker.addEventListener("change", function () {
    Array.prototype.forEach.call(picker.files || [], sendFile);
    picker.value = "";
  });
  input.addEventListener("paste", function (event) {
    var items = (event.clipboardData && event.clipboardData.files) || [];
    if (!items.length) return;
    event.preventDefault();
    Array.prototype.forEach.call(items, sendFile);
  });
  composer.addEventListener("dragover", function (event) {
    if (!filesCredential || !connected) return;
    event.preventDefault();
    composer.classList.add("dropping");
  });
  composer.addEventListener("dragleave", function () { composer.classList.remove("dropping"); });
  composer.addEventListener("drop", function (event) {
    composer.classList.remove("dropping");
    var dropped = (event.dataTransfer && event.dataTransfer.files) || [];
    if (!dropped.length) return;
    event.preventDefault();
    Array.prototype.forEach.call(dropped, sendFile);
  });

  // ---- events ------------------------------------------------------------------------------

  launcher.addEventListener("click", function () { setOpen(!isOpen(), true); });
  minimize.addEventListener("click", function () { setOpen(false, true); });
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape") setOpen(false, true);
  });
  composer.addEventListener("submit", function (event) {
    event.preventDefault();
    if (sendText(input.value)) {
      input.value = "";
      autosize();
    }
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit ? composer.requestSubmit() : send.click();
    }
  });
  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, 120) + "px";
  }
  input.addEventListener("input", autosize);
  endButton.addEventListener("click", function () {
    if (ws && connected && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
    addMessage("system", "You ended the chat.");
    finish("ended");
  });
  restart.addEventListener("click", function () {
    finished = false;
    restart.hidden = true;
    messages.textContent = "";
    statusLine.textContent = "";
    lastSender = null;
    lastState = null;
    attempt = 0;
    connect();
    input.focus();
  });
  window.addEventListener("online", function () {
    if (!ws && !finished && (everConnected || isOpen())) { attempt = 0; connect(); }
  });

  window.SwitchboardChat = {
    open: function () { setOpen(true, true); },
    close: function () { setOpen(false, true); },
    end: function () { endButton.click(); },
  };

  function mount() {
    document.body.appendChild(host);
    setConnected(false);
    endButton.hidden = false;
    var wantOpen = data.open === "true" || settings.open === true || store.get(OPEN_KEY) === "1";
    if (wantOpen) setOpen(true);
    else if (session) connect(); // a conversation is going on: resume it so replies arrive
  }

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
