// Switchboard agent console: one WebSocket to /agent/ws (frames in docs/interfaces.md), plain DOM.
//
// State lives in `state`; every change calls render(). All customer-supplied text goes into
// the page through textContent, never as HTML.

import { createFiles, fileLabel, filesSummary } from "/static/files.js";

const TOKEN_KEY = "switchboard.agent.token";
const PRESENCE_KEY = "switchboard.agent.presence";
const REASON_KEY = "switchboard.agent.away_reason";
const UNACKED_KEY = "switchboard.agent.unacked"; // frames the server has not acknowledged yet

const CHANNELS = { chat: "Web chat", sms: "SMS", whatsapp: "WhatsApp", voice: "Phone call" };
const REASONS = {
  self_service_failed: "Self-service didn't solve it",
  requested_agent: "Asked for a person",
  low_confidence: "The assistant couldn't tell what they need",
  no_input: "No answer to the assistant",
  invalid_input: "Couldn't use the menu",
  no_self_service: "No self-service for this contact type",
  repeat_contact: "Repeat contact: they got in touch about this recently",
  customer_left: "The customer left",
  timeout: "The offer timed out",
  technical_fallback: "Put on hold after a technical problem",
  flow_input_failed: "Couldn't give what self-service asked for",
  lookup_not_found: "Self-service couldn't find what they gave",
  lookup_failed: "Self-service couldn't look it up",
  flow_unavailable: "Self-service flow was changed mid-way",
  transferred: "Transferred by a colleague",
};
// What became of this agent's transfer (transfer_result.status), for the toast.
const TRANSFER_RESULTS = {
  transferred: (t) => `Transferred to ${t}.`,
  pending: (t) => `Waiting for ${t} to accept. You keep the contact until then.`,
  accepted: (t) => `${t} accepted the contact.`,
  returned_to_queue: (t) => `${t} didn't take it: the contact went back to its queue.`,
  declined: (t) => `${t} declined: the contact stays with you.`,
  timeout: (t) => `${t} didn't answer in time: the contact stays with you.`,
  agent_unavailable: (t) => `${t} went away before taking it: the contact stays with you.`,
};
const OUTCOMES = {
  self_service_resolved: "Solved by self-service",
  agent_resolved: "Resolved by an agent",
  agent_unresolved: "Not resolved by the agent",
  abandoned_in_queue: "Left while waiting",
  customer_left: "Customer left",
  hung_up_in_ivr: "Hung up in the phone menu",
  idle_timeout: "Went quiet",
  opted_out: "Opted out",
};
const SPEAKERS = { customer: "Customer", bot: "Assistant", agent: "You", note: "Private note" };
// The reply box writes to the customer, or a private note only agents see (note frame).
const COMPOSE = {
  reply: { label: "Reply to the customer", send: "Send",
           placeholder: "Type a reply, or / for saved replies. Enter sends, Shift+Enter adds a line." },
  note: { label: "Private note", send: "Add note",
          placeholder: "Write a private note for agents and supervisors. Enter adds it, Shift+Enter adds a line." },
};
// An agent message's states (message_status frames), in the order they can only move forward.
// "sending": written here, not yet acknowledged by the server (it is sent again after a reconnect).
const DELIVERY_RANK = { sending: -1, queued: 0, sent: 1, delivered: 2, failed: 3 };
const DELIVERY_LABELS = { sending: "Sending…", queued: "Queued", sent: "Sent", delivered: "Delivered",
                          failed: "Not delivered" };
// Errors that leave a frame undone for now: it is sent again (same id) after a pause.
const TRANSIENT_ERRORS = new Set(["unavailable", "rate_limited", "not_recorded"]);

const $ = (id) => document.getElementById(id);
const ui = {
  me: $("me"), connection: $("connection"), agentName: $("agent-name"), signOut: $("sign-out"),
  loginView: $("login-view"), loginForm: $("login-form"), token: $("token"),
  loginError: $("login-error"), signIn: $("sign-in"),
  consoleView: $("console-view"),
  presenceToggle: $("presence-toggle"), presenceLabel: $("presence-label"),
  presenceHint: $("presence-hint"), reasonPicker: $("reason-picker"), reasons: $("reasons"),
  reasonHeading: $("reason-heading"), reasonCancel: $("reason-cancel"),
  statusPill: $("status-pill"), statusText: $("status-text"), statusTime: $("status-time"),
  offers: $("offers"), offerCount: $("offer-count"), offersEmpty: $("offers-empty"),
  contacts: $("contacts"), contactCount: $("contact-count"), contactsEmpty: $("contacts-empty"),
  placeholder: $("placeholder"), conversation: $("conversation"),
  heading: $("conversation-heading"), meta: $("conversation-meta"),
  offerActions: $("offer-actions"), offerExpires: $("offer-expires"),
  accept: $("accept"), decline: $("decline"), endedBanner: $("ended-banner"),
  transcript: $("transcript"), replyForm: $("reply-form"), reply: $("reply"), send: $("send"),
  attach: $("attach"), attachInput: $("attach-input"),
  wrapForm: $("wrap-up-form"), contactType: $("contact-type"), note: $("note"),
  finish: $("finish"),
  transferForm: $("transfer-form"), transferTarget: $("transfer-target"),
  transferNote: $("transfer-note"), transferButton: $("transfer"),
  transferStatus: $("transfer-status"),
  ctxTransferSection: $("ctx-transfer-section"), ctxTransfer: $("ctx-transfer"),
  ctxTransferNote: $("ctx-transfer-note"),
  contextEmpty: $("context-empty"), contextBody: $("context-body"), ctxType: $("ctx-type"),
  ctxConfidence: $("ctx-confidence"), ctxReason: $("ctx-reason"), ctxQueue: $("ctx-queue"),
  ctxCustomer: $("ctx-customer"), ctxAttributes: $("ctx-attributes"), ctxSteps: $("ctx-steps"),
  ctxEarlier: $("ctx-earlier"), toast: $("toast"),
  repliesPanel: $("replies-panel"), repliesFilter: $("replies-filter"),
  repliesList: $("replies-list"), repliesButton: $("replies-button"),
  repliesHintAction: $("replies-hint-action"), windowClosed: $("window-closed"),
  windowClosedText: $("window-closed-text"), templatesButton: $("templates-button"),
  windowNote: $("window-note"),
  modeReply: $("mode-reply"), modeNote: $("mode-note"), replyLabel: $("reply-label"),
  noteHint: $("note-hint"),
};

const state = {
  agent: null,
  contactTypes: new Map(), // id -> label
  targets: { queues: [], agents: [] }, // where this agent may transfer to (ready frame)
  presence: "away",
  reasons: [], // the deployment's away reasons (ready frame): {id, label, limit_min}
  reason: null, // why away, as the server last said
  since: null, // ms: when the status began (ready and presence frames)
  choosingReason: false, // going away from available: the picker is open, nothing sent yet
  offers: new Map(), // contact_id -> {frame, expiresAt, pending}
  contacts: new Map(), // contact_id -> {frame, transcript, ended, unread, pending}
  selected: null, // contact_id of an offer or a contact
  earlyStatuses: new Map(), // contact_id -> message_status frames that came before "assigned"
  callbacksGone: new Map(), // contact_id -> attempt whose call failed before "assigned" came
  replies: new Map(), // contact_id -> saved replies filled in for it (replies frame)
  templates: new Map(), // contact_id -> message templates filled in for it (templates frame)
  compose: "reply", // what the reply box writes: "reply" or "note" (a call: notes only)
  // the saved reply the box's text came from, for the contact it was inserted for: named on
  // the message frame (saved_reply) so ops can see which replies carry the load
  fromReply: null, // {id, contactId}
};

// ---- connection ----------------------------------------------------------------------------

let ws = null;
let socketReady = false; // the current socket's ready frame arrived: frames may go now
let attempt = 0;
let retryTimer = null;
let signedIn = false; // a ready frame arrived at least once with the current token
let endedBeforeReconnect = new Map(); // contact_id -> why it ended, kept across a re-sync

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/agent/ws`;
}

function connect(token) {
  clearTimeout(retryTimer);
  setConnection("connecting");
  const socket = new WebSocket(wsUrl());
  ws = socket;
  socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token })));
  socket.addEventListener("message", (event) => {
    if (socket !== ws) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (frame && typeof frame === "object") handle(frame);
  });
  socket.addEventListener("close", () => {
    if (socket !== ws) return;
    ws = null;
    socketReady = false;
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return; // signed out, or the token was refused
    if (!signedIn) {
      showLogin("Couldn't reach Switchboard. Check the connection and try again.");
      return;
    }
    setConnection("reconnecting");
    const delay = Math.min(15000, 500 * 2 ** attempt) * (0.6 + Math.random() * 0.4);
    attempt += 1;
    retryTimer = setTimeout(() => connect(token), delay);
  });
}

function sendFrame(frame) {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    toast("Not connected. Your last action was not sent; try again in a moment.");
    return false;
  }
  ws.send(JSON.stringify(frame));
  return true;
}

// ---- frames the server must acknowledge -----------------------------------------------------
// A message, note or template frame carries an id of the console's making and is kept until the
// server acknowledges it (the first message_status naming it, the note's echo, an error naming
// it). After a reconnect the ready frame brings, every one still kept goes again, in order, with
// the same id: the server keeps and sends each id once, and answers a repeat with its state.

const unacked = new Map(loadUnacked()); // id -> frame, in the order written
const retryTimers = new Map(); // id -> timer of a frame sent again after a transient error

function loadUnacked() {
  try {
    const frames = JSON.parse(sessionStorage.getItem(UNACKED_KEY) || "[]");
    return Array.isArray(frames) ? frames.filter((f) => f && f.id).map((f) => [f.id, f]) : [];
  } catch {
    return [];
  }
}

function saveUnacked() {
  if (unacked.size) sessionStorage.setItem(UNACKED_KEY, JSON.stringify([...unacked.values()]));
  else sessionStorage.removeItem(UNACKED_KEY);
}

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16)); // pages served over plain http
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Send a frame the server must acknowledge; its id. Offline, it waits for the reconnect.
function sendKept(frame) {
  const kept = { ...frame, id: newId(), at: Date.now() / 1000 };
  unacked.set(kept.id, kept);
  saveUnacked();
  if (ws && socketReady && ws.readyState === WebSocket.OPEN) ws.send(wire(kept));
  return kept.id;
}

// A kept frame as the server gets it: without what only this console uses.
function wire(frame) {
  const { shown, tries, at, ...sent } = frame;
  return JSON.stringify(sent);
}

function acknowledge(id) {
  clearTimeout(retryTimers.get(id));
  retryTimers.delete(id);
  if (id && unacked.delete(id)) saveUnacked();
}

function resendUnacked() {
  for (const frame of unacked.values()) ws.send(wire(frame));
}

function resendLater(id) {
  if (retryTimers.has(id)) return;
  const tries = (unacked.get(id).tries || 0) + 1;
  unacked.get(id).tries = tries;
  retryTimers.set(id, setTimeout(() => {
    retryTimers.delete(id);
    const frame = unacked.get(id);
    if (frame && ws && socketReady && ws.readyState === WebSocket.OPEN) ws.send(wire(frame));
  }, Math.min(15000, 1000 * 2 ** tries)));
}

// The lines of a contact's frames still unacknowledged that its transcript lacks: shown as sending.
function pendingLines(contactId, transcript) {
  const have = new Set(transcript.map((line) => line.id || line.messageId).filter(Boolean));
  return [...unacked.values()].filter((f) => f.contact_id === contactId && !have.has(f.id))
    .map(pendingLine);
}

function pendingLine(frame) {
  const at = frame.at || Date.now() / 1000; // when it was written
  if (frame.type === "note") {
    return { from: "note", private: true, text: frame.text, at, id: frame.id, role: "agent",
             author_id: state.agent?.id, author_name: state.agent?.name, sending: true };
  }
  const line = { from: "agent", text: frame.text ?? frame.shown ?? "", at, messageId: frame.id,
                 delivery: { state: "sending", reason: "" } };
  if (frame.type === "template") line.template = frame.template_id;
  return line;
}

function setConnection(status) {
  const labels = { connecting: "Connecting…", online: "Connected", reconnecting: "Reconnecting…" };
  ui.connection.dataset.state = status;
  ui.connection.textContent = labels[status];
}

// ---- frames from the server ----------------------------------------------------------------

function handle(frame) {
  switch (frame.type) {
    case "ready":
      return onReady(frame);
    case "presence":
      state.presence = frame.status === "available" ? "available" : "away";
      state.reason = frame.reason || null;
      state.since = frame.since ? Date.parse(frame.since) : Date.now();
      state.choosingReason = false;
      sessionStorage.setItem(PRESENCE_KEY, state.presence);
      sessionStorage.setItem(REASON_KEY, state.reason || "");
      return render();
    case "offer":
      return onOffer(frame);
    case "offer_withdrawn":
      return onOfferWithdrawn(frame);
    case "assigned":
      return onAssigned(frame);
    case "message":
      return onMessage(frame);
    case "contact_ended":
      return onContactEnded(frame);
    case "wrapped_up":
      return onWrappedUp(frame);
    case "transfer_result":
      return onTransferResult(frame);
    case "callback_result":
      return onCallbackResult(frame);
    case "message_status":
      return onMessageStatus(frame);
    case "replies":
      return onReplies(frame);
    case "templates":
      return onTemplates(frame);
    case "note":
      return onNote(frame);
    case "error":
      return onError(frame);
    default:
      return undefined; // a newer server: ignore what we don't know
  }
}

function onReady(frame) {
  const reconnect = signedIn;
  signedIn = true;
  attempt = 0;
  socketReady = true;
  resendUnacked(); // the server answers them after the re-sync of contacts that follows ready
  state.agent = frame.agent || {};
  state.contactTypes = new Map((frame.contact_types || []).map((t) => [t.id, t.label || t.id]));
  state.targets = { queues: frame.transfer_targets?.queues || [],
                    agents: frame.transfer_targets?.agents || [] };
  // The server re-sends current offers and assigned contacts after ready: it is the truth.
  endedBeforeReconnect = new Map([...state.contacts].filter(([, c]) => c.ended)
    .map(([id, c]) => [id, c.ended]));
  state.offers.clear();
  state.contacts.clear();
  state.presence = state.agent.status === "available" ? "available" : "away";
  state.reasons = frame.away_reasons || [];
  state.reason = state.agent.reason || null;
  state.since = state.agent.since ? Date.parse(state.agent.since) : Date.now();
  state.choosingReason = false;
  setConnection("online");
  ui.agentName.textContent = state.agent.name || "";
  ui.loginView.hidden = true;
  ui.consoleView.hidden = false;
  ui.me.hidden = false;
  ui.signIn.disabled = false;
  ui.token.value = "";
  pickersFor = null; // the contact types and colleagues may have changed
  // After a dropped connection or a reload, go back to the presence the agent had chosen.
  const reason = sessionStorage.getItem(REASON_KEY);
  if (sessionStorage.getItem(PRESENCE_KEY) === "available" && state.presence !== "available") {
    sendFrame({ type: "presence", status: "available" });
  } else if (sessionStorage.getItem(PRESENCE_KEY) === "away" && state.presence === "away" && reason &&
             state.reason !== reason && state.reasons.some((r) => r.id === reason)) {
    sendFrame({ type: "presence", status: "away", reason }); // a dropped socket forgot why
  }
  render();
  if (!reconnect) ui.presenceToggle.focus();
}

function onOffer(frame) {
  if (!frame.contact_id) return;
  const seconds = Number(frame.expires_in_s);
  state.offers.set(frame.contact_id, {
    frame,
    expiresAt: Number.isFinite(seconds) ? Date.now() + seconds * 1000 : null,
    pending: false,
  });
  if (!state.selected || !isKnown(state.selected)) state.selected = frame.contact_id;
  render();
}

function onOfferWithdrawn(frame) {
  if (!state.offers.delete(frame.contact_id)) return;
  if (state.selected === frame.contact_id) state.selected = firstSelectable();
  const why = frame.reason === "customer_left" ? "the customer left" :
    frame.reason === "timeout" ? "it timed out" : "it went to someone else";
  toast(`An offer was withdrawn: ${why}.`);
  render();
}

function onAssigned(frame) {
  const id = frame.contact_id;
  const known = state.contacts.get(id);
  const offer = state.offers.get(id);
  state.offers.delete(id);
  if (state.callbacksGone.has(id) &&
      state.callbacksGone.get(id) === frame.context?.callback?.attempts) {
    state.callbacksGone.delete(id); // its call already failed: it is back in the queue
    if (state.selected === id) state.selected = firstSelectable();
    return render();
  }
  // Some assigned frames (re-sync after a reconnect) carry less context than the offer did.
  const context = { ...(offer?.frame.context || known?.frame.context || {}), ...(frame.context || {}) };
  state.contacts.set(id, {
    frame: { ...(offer?.frame || {}), ...frame, context },
    transcript: Array.isArray(context.transcript) ? [...context.transcript] : (known?.transcript || []),
    ended: known?.ended || endedBeforeReconnect.get(id) || null,
    unread: 0,
    pending: false,
    window: windowOf(frame.reply_window) || known?.window || null,
  });
  const contact = state.contacts.get(id);
  contact.transcript.push(...pendingLines(id, contact.transcript));
  if (frame.channel !== "voice") sendFrame({ type: "replies", contact_id: id }); // ready for "/"
  if (contact.window?.templates) sendFrame({ type: "templates", contact_id: id });
  for (const early of state.earlyStatuses.get(id) || []) applyStatus(contact, early);
  state.earlyStatuses.delete(id);
  const wasWaitingForThis = offer?.pending || !state.selected || !isKnown(state.selected);
  if (wasWaitingForThis || state.selected === id) {
    state.selected = id;
    render();
    ui.reply.focus();
  } else {
    render();
  }
}

function onMessage(frame) {
  const contact = state.contacts.get(frame.contact_id);
  if (!contact || typeof frame.text !== "string") return;
  const line = { from: frame.from || "customer", text: frame.text, at: Date.now() / 1000 };
  if (Array.isArray(frame.attachments) && frame.attachments.length) line.attachments = frame.attachments;
  contact.transcript.push(line);
  if (contact.window && line.from === "customer") { // the customer wrote: the window opens again
    contact.window.lastAt = Number(frame.at) || serverNow(contact.window);
    contact.windowClosed = false;
  }
  if (state.selected !== frame.contact_id) contact.unread += 1;
  render();
}

// A private note on a contact of ours (ours, a colleague's before a transfer, a supervisor's).
function onNote(frame) {
  const note = frame.note;
  if (!note || typeof note.text !== "string") return;
  const contact = state.contacts.get(frame.contact_id);
  const offer = state.offers.get(frame.contact_id);
  const transcript = contact ? contact.transcript : offer?.frame.context?.transcript;
  acknowledge(note.id);
  if (!transcript) return;
  const known = note.id ? transcript.findIndex((line) => line.id === note.id) : -1;
  if (known >= 0) transcript[known] = { ...note, from: "note" }; // kept: no longer sending
  else transcript.push({ ...note, from: "note" });
  if (contact) {
    const ours = note.author_id === state.agent?.id;
    if (!ours && state.selected !== frame.contact_id) contact.unread += 1;
    if (note.role === "supervisor" && state.selected !== frame.contact_id) {
      toast(`${note.author_name || "A supervisor"} left a note on ${contactTitle(contact.frame)}.`, "info");
    }
  }
  render();
}

function onMessageStatus(frame) {
  if (!frame.contact_id || !(frame.state in DELIVERY_RANK) || frame.state === "sending") return;
  acknowledge(frame.message_id);
  const contact = state.contacts.get(frame.contact_id);
  if (!contact) {
    // The greeting's first states can overtake the accept's answer.
    const early = state.earlyStatuses.get(frame.contact_id) || [];
    state.earlyStatuses.set(frame.contact_id, [...early, frame].slice(-50));
    return;
  }
  applyStatus(contact, frame);
  render();
}

// A status belongs to the line it names (its id is the console's own, or the server's in a
// re-synced transcript), or to the oldest agent line with its text that has no id yet (frames
// come in the order the lines were sent: the greeting, frames without an id).
function applyStatus(contact, frame) {
  let line = contact.transcript.find((l) => (l.messageId || l.id) === frame.message_id);
  if (!line) {
    line = contact.transcript.find((l) => l.from === "agent" && !l.messageId && !l.id && l.text === frame.text);
  }
  if (!line) {
    if (frame.state === "failed") toast(frame.reason || "A message to the customer was not delivered.");
    return;
  }
  line.messageId = frame.message_id;
  if (line.delivery && DELIVERY_RANK[frame.state] < DELIVERY_RANK[line.delivery.state]) return;
  line.delivery = { state: frame.state, reason: frame.reason || "" };
}

function deliveryMark(line) {
  const { state: status, reason } = line.delivery;
  const retrying = (status === "queued" || status === "sending") && reason;
  const label = !retrying ? DELIVERY_LABELS[status] : status === "queued" ? "Queued · retrying" : "Retrying…";
  return el("span", { class: `delivery ${status}`, "data-state": status, title: reason || null,
                      text: status === "failed" && reason ? `${label}: ${reason}` : label });
}

function onContactEnded(frame) {
  const contact = state.contacts.get(frame.contact_id);
  if (!contact) return;
  contact.ended = frame.reason || "ended";
  render();
}

function onWrappedUp(frame) {
  const contact = state.contacts.get(frame.contact_id);
  dropContact(frame.contact_id);
  state.replies.delete(frame.contact_id);
  state.templates.delete(frame.contact_id);
  forgetAttachments(frame.contact_id);
  if (state.selected === frame.contact_id) state.selected = firstSelectable();
  toast(`Wrapped up${contact ? `: ${contactTitle(contact.frame)}` : ""}.`, "info");
  render();
}

function onTransferResult(frame) {
  const contact = state.contacts.get(frame.contact_id);
  const target = frame.agent_name || (frame.queue ? `the ${queueLabel(frame.queue)} queue` : "a colleague");
  const say = TRANSFER_RESULTS[frame.status];
  toast(say ? say(target) : humanise(frame.status), "info");
  if (!contact) return render();
  contact.pending = false;
  if (frame.told_customer) {
    contact.transcript.push({ from: "agent", text: frame.told_customer, at: Date.now() / 1000 });
  }
  if (frame.status === "pending") {
    contact.transfer = `Waiting for ${target} to accept (warm transfer).`;
  } else if (frame.status === "transferred" || frame.status === "accepted") {
    dropContact(frame.contact_id); // it is the next agent's now
    if (state.selected === frame.contact_id) state.selected = firstSelectable();
  } else {
    contact.transfer = null;
  }
  render();
}

// What became of a call placed back: answered (the agent is dialled in), or not answered (the
// contact leaves this agent: it waits for its retry, or was given up).
function onCallbackResult(frame) {
  const contact = state.contacts.get(frame.contact_id);
  if (frame.status === "answered") { // the agent's phone rings now
    if (contact?.frame.context?.callback) contact.frame.context.callback.state = "answered";
    toast("The customer answered: your phone rings now.", "info");
    return render();
  }
  const why = { no_answer: "didn't answer", busy: "was busy", failed: "couldn't be reached" };
  const seconds = Math.round(Number(frame.retry_in_s));
  const delay = seconds >= 120 ? `${Math.round(seconds / 60)} min` : `${seconds} s`;
  const next = frame.gave_up ? "The callback was given up."
    : `It goes back to the queue and is tried again in ${delay}.`;
  toast(`The customer ${why[frame.status] || humanise(frame.status)}. ${next}`, "info");
  if (!contact) state.callbacksGone.set(frame.contact_id, frame.attempt); // "assigned" follows
  dropContact(frame.contact_id);
  if (state.selected === frame.contact_id) state.selected = firstSelectable();
  render();
}

function callbackLabel(callback) {
  const of = `${callback.attempts} of ${callback.max_attempts}`;
  const tried = callback.state === "calling" ? ` (attempt ${of})`
    : Number(callback.attempts) > 0 ? ` (tried ${of})` : "";
  return `Callback to ${callback.number}${tried}`;
}

function queueLabel(name) {
  return state.targets.queues.find((q) => q.name === name)?.label || name;
}

function onError(frame) {
  if (frame.code === "unauthorized") {
    for (const id of [...unacked.keys()]) acknowledge(id); // another agent may sign in here
    sessionStorage.removeItem(TOKEN_KEY);
    signedIn = false;
    showLogin("That token wasn't accepted. Check it and try again.");
    return;
  }
  const id = frame.contact_id;
  if (id && (frame.code === "offer_gone" || frame.code === "contact_gone") && state.offers.has(id)) {
    state.offers.delete(id);
    if (state.selected === id) state.selected = firstSelectable();
  }
  const offer = id && state.offers.get(id);
  if (offer) offer.pending = false;
  const contact = id && state.contacts.get(id);
  const written = frame.id && unacked.get(frame.id);
  if (written && TRANSIENT_ERRORS.has(frame.code)) { // not done yet: it goes again shortly
    resendLater(frame.id);
    const waiting = contact?.transcript.find((l) => (l.messageId || l.id) === frame.id);
    if (waiting?.delivery?.state === "sending") waiting.delivery.reason = frame.message || frame.code;
    return render();
  }
  if (!written && contact) contact.pending = false;
  acknowledge(frame.id);
  const line = frame.id && contact?.transcript.find((l) => (l.messageId || l.id) === frame.id);
  if (written?.type === "note") { // a note that was not kept goes back into the box, not lost
    if (line) contact.transcript.splice(contact.transcript.indexOf(line), 1);
    if (state.selected === id && !ui.reply.value) ui.reply.value = written.text;
  } else if (line) { // a final answer to that message: it was not sent
    line.failed = true;
    if (line.delivery?.state === "sending") delete line.delivery;
  } else if (!frame.id && contact && ["delivery_failed", "not_text", "outside_window", "not_recorded",
                                     "not_template", "template_gaps", "unknown_template"].includes(frame.code)) {
    const last = [...contact.transcript].reverse().find((l) => l.from === "agent");
    if (last) last.failed = true;
  }
  if (contact && frame.code === "outside_window") {
    contact.windowClosed = true; // the server's word: the reply box offers a template now
    if (contact.window?.templates && state.selected === id) { // the line says why; the box offers
      render();
      ui.templatesButton.focus();
      return;
    }
  }
  if (contact && frame.code === "not_assigned") {
    dropContact(id);
    if (state.selected === id) state.selected = firstSelectable();
  }
  toast(frame.message || `Something went wrong (${frame.code || "error"}).`);
  render();
}

// ---- actions -------------------------------------------------------------------------------

ui.loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  ui.loginError.textContent = "";
  ui.signIn.disabled = true;
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.removeItem(PRESENCE_KEY);
  signedIn = false;
  connect(token);
});

ui.signOut.addEventListener("click", () => {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "presence", status: "away" }));
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(PRESENCE_KEY);
  for (const id of [...unacked.keys()]) acknowledge(id); // another agent may sign in here
  const socket = ws;
  ws = null;
  socket?.close(1000);
  signedIn = false;
  state.offers.clear();
  state.contacts.clear();
  state.selected = null;
  renderedFor = null;
  showLogin("");
});

ui.presenceToggle.addEventListener("click", () => {
  if (state.presence === "available" && state.reasons.length) {
    state.choosingReason = !state.choosingReason; // away needs a reason: pick one first
    renderPresence();
    if (state.choosingReason) focusReason();
    return;
  }
  sendFrame({ type: "presence", status: state.presence === "available" ? "away" : "available" });
});

ui.reasonCancel.addEventListener("click", () => {
  state.choosingReason = false;
  renderPresence();
  ui.presenceToggle.focus();
});

// The reasons are a radio group: arrows move and choose, Escape closes an unsent choice.
ui.reasons.addEventListener("keydown", (event) => {
  const options = [...ui.reasons.querySelectorAll("[role=radio]")];
  const at = options.indexOf(document.activeElement);
  const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 }[event.key];
  if (step && at >= 0) {
    event.preventDefault();
    options[(at + step + options.length) % options.length].focus();
  } else if (event.key === "Escape" && state.choosingReason) {
    ui.reasonCancel.click();
  }
});

function chooseReason(id) {
  if (state.presence === "away" && state.reason === id) return;
  sendFrame({ type: "presence", status: "away", reason: id });
}

function focusReason() {
  (ui.reasons.querySelector("[aria-checked=true]") || ui.reasons.querySelector("[role=radio]"))
    ?.focus();
}

ui.accept.addEventListener("click", () => {
  const offer = state.offers.get(state.selected);
  if (!offer || offer.pending) return;
  if (sendFrame({ type: "accept", contact_id: state.selected })) {
    offer.pending = true;
    render();
  }
});

ui.decline.addEventListener("click", () => {
  const id = state.selected;
  if (!state.offers.has(id)) return;
  if (sendFrame({ type: "decline", contact_id: id })) {
    state.offers.delete(id);
    state.selected = firstSelectable();
    render();
  }
});

ui.replyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const contact = state.contacts.get(state.selected);
  const text = ui.reply.value.trim();
  if (!contact || !text || contact.ended) return;
  if (composeMode() === "note") {
    // Shown as sending until the server keeps it (its note frame, on every console of ours).
    const id = sendKept({ type: "note", contact_id: state.selected, text });
    contact.transcript.push(pendingLine(unacked.get(id)));
    ui.reply.value = "";
    render();
    return;
  }
  if (windowClosed(contact)) {
    openReplies("templates"); // a typed text can't reach the customer now
    return;
  }
  if (selectGap()) {
    toast("Fill in the marked gap before sending: this customer has no value for it.");
    return;
  }
  const frame = { type: "message", contact_id: state.selected, text };
  if (state.fromReply?.contactId === state.selected) frame.saved_reply = state.fromReply.id;
  state.fromReply = null;
  const id = sendKept(frame);
  contact.transcript.push(pendingLine(unacked.get(id)));
  ui.reply.value = "";
  render();
});

ui.reply.addEventListener("input", () => {
  if (!ui.reply.value.trim()) state.fromReply = null; // emptied: what comes next is typed
});

ui.reply.addEventListener("keydown", (event) => {
  const atStart = ui.reply.selectionStart === 0 && ui.reply.selectionEnd === 0;
  if (event.key === "/" && atStart && !event.ctrlKey && !event.metaKey && !event.altKey &&
      composeMode() === "reply") {
    event.preventDefault();
    openReplies();
    return;
  }
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.replyForm.requestSubmit();
  }
});

ui.wrapForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const contact = state.contacts.get(state.selected);
  if (!contact || contact.pending) return;
  const resolved = ui.wrapForm.elements.resolved.value;
  if (!resolved) return;
  const frame = { type: "wrap_up", contact_id: state.selected, resolved: resolved === "yes",
                  note: ui.note.value.trim() };
  if (ui.contactType.value) frame.contact_type = ui.contactType.value;
  if (sendFrame(frame)) {
    contact.pending = true;
    render();
  }
});

ui.transferForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const contact = state.contacts.get(state.selected);
  const [kind, target] = (ui.transferTarget.value || "").split(":");
  if (!contact || contact.pending || !target) return;
  const frame = { type: "transfer", contact_id: state.selected, [kind]: target,
                  mode: ui.transferForm.elements.mode.value, note: ui.transferNote.value.trim() };
  if (sendFrame(frame)) {
    contact.pending = true;
    render();
  }
});

// ---- reply or private note -------------------------------------------------------------------
// Two tabs over the reply box; arrows move between them, Alt+R and Alt+N from anywhere.

function composeMode() {
  const contact = state.contacts.get(state.selected);
  return contact?.frame.channel === "voice" ? "note" : state.compose;
}

function setCompose(mode, focus = true) {
  if (!(mode in COMPOSE) || (mode === "reply" && ui.modeReply.disabled)) return;
  state.compose = mode;
  if (mode === "note") closeReplies(false);
  renderSelected();
  if (focus && !ui.reply.disabled) ui.reply.focus();
}

function renderCompose() {
  const mode = composeMode();
  const words = COMPOSE[mode];
  for (const [tab, name] of [[ui.modeReply, "reply"], [ui.modeNote, "note"]]) {
    tab.setAttribute("aria-selected", String(mode === name));
    tab.tabIndex = mode === name ? 0 : -1;
  }
  ui.replyForm.classList.toggle("note-mode", mode === "note");
  ui.replyLabel.textContent = words.label;
  ui.reply.placeholder = words.placeholder;
  ui.send.textContent = words.send;
  ui.noteHint.hidden = mode !== "note";
  ui.repliesButton.hidden = mode === "note";
  renderWindow(mode);
}

ui.modeReply.addEventListener("click", () => setCompose("reply"));
ui.modeNote.addEventListener("click", () => setCompose("note"));
for (const tab of [ui.modeReply, ui.modeNote]) {
  tab.addEventListener("keydown", (event) => {
    if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
    event.preventDefault();
    const next = tab === ui.modeReply ? "note" : "reply";
    const target = event.key === "Home" ? "reply" : event.key === "End" ? "note" : next;
    setCompose(target, false);
    (composeMode() === "note" ? ui.modeNote : ui.modeReply).focus();
  });
}
document.addEventListener("keydown", (event) => {
  if (!event.altKey || event.ctrlKey || event.metaKey || ui.replyForm.hidden) return;
  const mode = { KeyN: "note", KeyR: "reply" }[event.code];
  if (!mode) return;
  event.preventDefault();
  setCompose(mode);
});

function selectContact(id) {
  if (id !== state.selected) closeReplies(false);
  state.selected = id;
  const contact = state.contacts.get(id);
  if (contact) contact.unread = 0;
  render();
}

// ---- saved replies ---------------------------------------------------------------------------
// The server fills each reply in for the contact (replies frame); "/" at the start of the reply
// box or the Replies button opens the list, those for the contact's type first. A value the
// customer lacks stays in the text as its {placeholder}: it is selected after inserting, and
// Send refuses until it is filled in.

const GAP = /\{(?:customer|agent|last_contact)\.[A-Za-z0-9_-]+\}/;
const REPLY_GROUPS = { type: null, any: "Any contact", other: "Other contact types" };
// One panel lists saved replies (inserted into the reply box, then edited) or a channel's
// approved message templates (sent as they are, once chosen): the same list, preview and gaps.
const PICKERS = {
  replies: { label: "Saved replies", search: "Search saved replies", action: "insert",
             loading: "Loading saved replies…", none: "No saved replies.",
             noMatch: "No saved reply matches." },
  templates: { label: "Message templates", search: "Search approved templates", action: "send",
               loading: "Loading templates…",
               none: "No approved templates for this channel (replies.yaml, templates).",
               noMatch: "No template matches." },
};
const picker = { open: false, active: 0, shown: [], kind: "replies" };

function onReplies(frame) {
  if (!frame.contact_id || !Array.isArray(frame.replies)) return;
  pickerLoaded("replies", frame.contact_id, frame.replies);
}

function onTemplates(frame) {
  if (!frame.contact_id || !Array.isArray(frame.templates)) return;
  pickerLoaded("templates", frame.contact_id, frame.templates);
}

function pickerLoaded(kind, contactId, items) {
  const first = !state[kind].has(contactId);
  state[kind].set(contactId, items);
  if (!picker.open || picker.kind !== kind || contactId !== state.selected) return;
  renderReplies();
  if (first) holdPanelHeight();
}

// The panel keeps the height it opened with, so the search box stays put while typing.
function holdPanelHeight() {
  ui.repliesPanel.style.height = "";
  ui.repliesPanel.style.height = `${ui.repliesPanel.offsetHeight}px`;
}

function openReplies(kind = "replies") {
  const contact = state.contacts.get(state.selected);
  if (!contact || contact.ended) return;
  if (kind === "templates" ? !contact.window?.templates : ui.reply.disabled) return;
  if (picker.open) closeReplies(false);
  sendFrame({ type: kind, contact_id: state.selected }); // the rules may have changed
  picker.open = true;
  picker.kind = kind;
  picker.active = 0;
  const words = PICKERS[kind];
  ui.repliesPanel.setAttribute("aria-label", words.label);
  ui.repliesPanel.classList.toggle("templates", kind === "templates");
  ui.repliesList.setAttribute("aria-label", words.label);
  ui.repliesFilter.setAttribute("aria-label", words.search);
  ui.repliesFilter.placeholder = words.search;
  ui.repliesHintAction.textContent = words.action;
  ui.repliesFilter.value = "";
  // Over the transcript only: the conversation's heading stays in sight.
  const room = ui.replyForm.getBoundingClientRect().top - ui.transcript.getBoundingClientRect().top;
  ui.repliesPanel.style.maxHeight = `${Math.max(220, Math.min(460, room - 4))}px`;
  ui.repliesPanel.hidden = false;
  pickerButton().setAttribute("aria-expanded", "true");
  renderReplies();
  holdPanelHeight();
  ui.repliesFilter.focus();
}

function closeReplies(refocus = true) {
  if (!picker.open) return;
  picker.open = false;
  ui.repliesPanel.hidden = true;
  ui.repliesButton.setAttribute("aria-expanded", "false");
  ui.templatesButton.setAttribute("aria-expanded", "false");
  ui.repliesFilter.removeAttribute("aria-activedescendant");
  if (refocus) (ui.reply.disabled ? pickerButton() : ui.reply).focus();
}

function pickerButton() {
  return picker.kind === "templates" ? ui.templatesButton : ui.repliesButton;
}

function matchingReplies() {
  const words = ui.repliesFilter.value.toLowerCase().split(/\s+/).filter(Boolean);
  const all = state[picker.kind].get(state.selected) || [];
  return all.filter((reply) => {
    const haystack = `${reply.title} ${reply.text} ${reply.id}`.toLowerCase();
    return words.every((word) => haystack.includes(word));
  });
}

function renderReplies() {
  const contact = state.contacts.get(state.selected);
  const loaded = state[picker.kind].has(state.selected);
  const words = PICKERS[picker.kind];
  const templates = picker.kind === "templates";
  picker.shown = matchingReplies();
  picker.active = Math.min(picker.active, Math.max(picker.shown.length - 1, 0));
  const items = [];
  let group = null;
  picker.shown.forEach((reply, index) => {
    if (!templates && reply.group !== group) {
      group = reply.group;
      const label = REPLY_GROUPS[group] ?? null;
      items.push(el("li", { class: "replies-group", role: "presentation",
                            text: label || `For ${typeLabel(contact?.frame.context)}` }));
    }
    const active = index === picker.active;
    const blocked = templates && reply.gaps?.length; // an approved text cannot be edited
    items.push(el("li", {
      id: `reply-option-${index}`, role: "option",
      class: `reply-option${blocked ? " unavailable" : ""}`,
      "aria-selected": active ? "true" : "false", "aria-disabled": blocked ? "true" : null,
      onmousedown: (event) => event.preventDefault(), // keep focus in the search box
      onclick: () => choose(reply),
      onmousemove: () => { if (picker.active !== index) { picker.active = index; markActive(); } },
    },
    el("span", { class: "reply-title" }, reply.title,
      reply.gaps?.length ? el("span", { class: "reply-gap-note",
                                         text: blocked ? `can't send: ${reply.gaps.map(gapName).join(", ")} unknown`
                                           : `needs ${reply.gaps.map(gapName).join(", ")}` }) : null),
    el("span", { class: "reply-text" }, ...withGapsMarked(reply.text))));
  });
  if (!items.length) {
    items.push(el("li", { class: "replies-empty", role: "presentation",
                          text: !loaded ? words.loading
                            : ui.repliesFilter.value ? words.noMatch : words.none }));
  }
  ui.repliesList.replaceChildren(...items);
  markActive();
}

function markActive() {
  for (const node of ui.repliesList.querySelectorAll("[role=option]")) {
    node.setAttribute("aria-selected", String(node.id === `reply-option-${picker.active}`));
  }
  const active = $(`reply-option-${picker.active}`);
  if (active) {
    ui.repliesFilter.setAttribute("aria-activedescendant", active.id);
    active.scrollIntoView({ block: "nearest" });
  } else {
    ui.repliesFilter.removeAttribute("aria-activedescendant");
  }
}

// The text with each gap in a <mark>, all through textContent (replies hold customer data).
function withGapsMarked(text) {
  return text.split(new RegExp(`(${GAP.source})`)).map((part, i) =>
    (i % 2 ? el("mark", { class: "gap", text: part }) : part));
}

function gapName(placeholder) {
  return placeholder.slice(1, -1).replace(/^customer\./, "customer's ").replaceAll("_", " ")
    .replace(".", " ");
}

function choose(item) {
  return picker.kind === "templates" ? sendTemplate(item) : insertReply(item);
}

// A template goes as approved, with the contact's values: one with a gap cannot be sent.
function sendTemplate(template) {
  const contact = state.contacts.get(state.selected);
  if (!contact || contact.ended) return;
  if (template.gaps?.length) {
    toast(`"${template.title}" can't be sent: it needs the ${template.gaps.map(gapName).join(", ")}, which we don't have for this customer, and an approved template can't be edited.`);
    return;
  }
  // `shown` is the console's own: the text a line sending again after a reload shows.
  const id = sendKept({ type: "template", contact_id: state.selected, template_id: template.id,
                        shown: template.text });
  contact.transcript.push(pendingLine(unacked.get(id)));
  closeReplies(false);
  render();
  ui.templatesButton.focus();
}

// Insert at the caret (replacing a selection, or the whole box when it is empty), then select
// the first gap, or put the caret after the text.
function insertReply(reply) {
  closeReplies(false);
  const box = ui.reply;
  const start = box.selectionStart ?? box.value.length;
  const end = box.selectionEnd ?? box.value.length;
  const before = box.value.slice(0, start);
  const after = box.value.slice(end);
  const joiner = before && !/\s$/.test(before) ? " " : "";
  const tail = after && !/^\s/.test(after) ? " " : "";
  box.value = `${before}${joiner}${reply.text}${tail}${after}`.slice(0, Number(box.maxLength) || 2000);
  state.fromReply = { id: reply.id, contactId: state.selected };
  const caret = before.length + joiner.length + reply.text.length;
  box.focus();
  if (!selectGap()) box.setSelectionRange(caret, caret);
}

function selectGap() {
  const found = GAP.exec(ui.reply.value);
  if (!found) return false;
  ui.reply.focus();
  ui.reply.setSelectionRange(found.index, found.index + found[0].length);
  return true;
}

ui.repliesButton.addEventListener("click", () => (picker.open ? closeReplies() : openReplies()));
ui.templatesButton.addEventListener("click", () => (
  picker.open && picker.kind === "templates" ? closeReplies() : openReplies("templates")));
ui.repliesFilter.addEventListener("input", () => { picker.active = 0; renderReplies(); });
ui.repliesFilter.addEventListener("keydown", (event) => {
  const last = picker.shown.length - 1;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    if (last < 0) return;
    const step = event.key === "ArrowDown" ? 1 : -1;
    picker.active = (picker.active + step + last + 1) % (last + 1);
    markActive();
  } else if (event.key === "Home" || event.key === "End") {
    if (last < 0 || ui.repliesFilter.value) return;
    event.preventDefault();
    picker.active = event.key === "Home" ? 0 : last;
    markActive();
  } else if (event.key === "Enter") {
    const reply = picker.shown[picker.active];
    if (!reply) return;
    event.preventDefault();
    choose(reply);
  } else if (event.key === "Escape") {
    event.preventDefault();
    closeReplies();
  } else if (event.key === "Backspace" && !ui.repliesFilter.value) {
    event.preventDefault(); // backspacing over the "/" closes, as in a chat app
    closeReplies();
  } else if (event.key === "/" && !ui.repliesFilter.value && picker.kind === "replies") {
    event.preventDefault(); // "//": the agent meant a slash
    closeReplies();
    ui.reply.setRangeText("/", 0, 0, "end");
  }
});
ui.repliesPanel.addEventListener("focusout", (event) => {
  if (picker.open && !ui.repliesPanel.contains(event.relatedTarget) &&
      event.relatedTarget !== pickerButton()) closeReplies(false);
});

// ---- the reply window ------------------------------------------------------------------------
// On channels with a reply window (the assigned frame's reply_window) an agent may write only so
// long after the customer's last message; past it only an approved template (templates frame)
// reaches them, and their answer opens the window again. Times are the server's: the frame's
// `now` gives this clock's offset.

function windowOf(raw) {
  if (!raw || !(Number(raw.seconds) > 0)) return null;
  return { seconds: Number(raw.seconds), lastAt: Number(raw.customer_last_at) || null,
           templates: Boolean(raw.templates), offset: (Number(raw.now) - Date.now() / 1000) || 0 };
}

function serverNow(win) {
  return Date.now() / 1000 + (win?.offset || 0);
}

function windowClosed(contact) {
  const win = contact?.window;
  if (!win || contact.ended) return false;
  if (contact.windowClosed) return true; // the server refused a text: outside_window
  return win.lastAt !== null && serverNow(win) - win.lastAt > win.seconds;
}

function ago(seconds) {
  const hours = Math.floor(seconds / 3600);
  if (hours >= 48) return `${Math.floor(hours / 24)} days ago`;
  if (hours >= 1) return `${hours} hour${hours === 1 ? "" : "s"} ago`;
  return "a while ago";
}

function closedText(contact) {
  const win = contact.window;
  const hours = Math.round(win.seconds / 3600);
  const age = serverNow(win) - win.lastAt;
  const last = !win.lastAt ? "The customer hasn't written"
    : `The customer last wrote ${age > win.seconds ? ago(age) : `more than ${hours} hours ago`}`;
  if (templateSent(contact)) {
    return `Template sent. You can write freely again as soon as the customer answers (the ${hours}-hour reply window opens with their message).`;
  }
  return win.templates
    ? `${last}: the ${hours}-hour reply window has closed, so a typed message can't reach them. Send an approved template; their answer opens the conversation again.`
    : `${last}: the ${hours}-hour reply window has closed. You can write again when they do.`;
}

function templateSent(contact) {
  const sent = [...contact.transcript].reverse().find((line) => line.from === "agent");
  return Boolean(sent?.template && !sent.failed && sent.delivery?.state !== "failed");
}

let windowShown = false; // whether the closed-window offer is on screen

// The last hour before the window closes, counted down beside the tabs.
function renderClosingSoon(contact, mode) {
  const win = contact?.window;
  const left = win?.lastAt ? win.lastAt + win.seconds - serverNow(win) : Infinity;
  const soon = mode === "reply" && !windowClosed(contact) && left > 0 && left <= 3600;
  ui.windowNote.hidden = !soon;
  if (soon) ui.windowNote.textContent = `Reply window closes in ${Math.max(1, Math.ceil(left / 60))} min`;
}

function renderWindow(mode) {
  const contact = state.contacts.get(state.selected);
  const closed = mode === "reply" && windowClosed(contact);
  windowShown = closed;
  renderClosingSoon(contact, mode);
  ui.windowClosed.hidden = !closed;
  ui.replyForm.classList.toggle("window-shut", closed);
  if (!closed) return;
  ui.windowClosedText.textContent = closedText(contact);
  ui.templatesButton.hidden = !contact.window.templates;
  ui.templatesButton.className = templateSent(contact) ? "secondary" : "primary";
  ui.reply.disabled = true;
  ui.send.disabled = true;
  ui.repliesButton.disabled = true;
  ui.reply.placeholder = "Typed replies are paused until the customer writes again.";
}

// ---- rendering -----------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function isKnown(id) {
  return state.offers.has(id) || state.contacts.has(id);
}

function firstSelectable() {
  return state.contacts.keys().next().value || state.offers.keys().next().value || null;
}

function typeLabel(ctx) {
  if (!ctx?.contact_type) return "Not classified";
  return ctx.contact_type_label || state.contactTypes.get(ctx.contact_type) || humanise(ctx.contact_type);
}

function humanise(code) {
  if (!code) return "";
  const text = String(code).replaceAll("_", " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function reasonLabel(code) {
  return REASONS[code] || humanise(code) || "Not given";
}

function contactTitle(frame) {
  return `${typeLabel(frame.context)} · ${CHANNELS[frame.channel] || humanise(frame.channel)}`;
}

function customerLabel(customer) {
  const address = customer?.address || "";
  if (address.startsWith("session:")) return "Anonymous web visitor";
  if (address.startsWith("id:")) return `Signed-in customer ${address.slice(3)}`;
  return address || "Unknown customer";
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, {
  day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
});

function when(seconds, format = timeFormat) {
  const n = Number(seconds);
  return Number.isFinite(n) && n > 0 ? format.format(new Date(n * 1000)) : "";
}

function render() {
  renderPresence();
  renderOffers();
  renderContacts();
  renderSelected();
  const waiting = state.offers.size;
  document.title = `${waiting ? `(${waiting}) ` : ""}Agent console · Switchboard`;
}

function renderPresence() {
  const available = state.presence === "available";
  ui.presenceToggle.setAttribute("aria-checked", String(available));
  ui.presenceToggle.dataset.state = state.presence;
  ui.presenceLabel.textContent = available ? "Available" : "Away";
  ui.presenceHint.textContent = available ? "You'll get offers that match your skills."
    : "You won't get new contacts.";
  const picking = !available || state.choosingReason;
  ui.reasonPicker.hidden = !picking || !state.reasons.length;
  ui.reasonCancel.hidden = !state.choosingReason;
  ui.reasonPicker.toggleAttribute("data-choosing", state.choosingReason);
  ui.reasonHeading.textContent = state.choosingReason ? "Why are you going away?" : "Why are you away?";
  const chosen = available ? null : state.reason;
  ui.reasons.replaceChildren(...state.reasons.map((reason, i) => el("button", {
    type: "button", role: "radio", class: "reason",
    "aria-checked": String(reason.id === chosen),
    tabindex: (chosen ? reason.id === chosen : i === 0) ? "0" : "-1",
    title: reason.limit_min ? `Up to ${reason.limit_min} min` : null,
    onclick: () => chooseReason(reason.id),
  }, reason.label)));
  renderStatusPill();
}

// The header's status: what the agent is doing (the reason when away) and for how long.
function renderStatusPill() {
  const label = state.presence === "available" ? "Available"
    : state.reasons.find((r) => r.id === state.reason)?.label || "Away";
  ui.statusPill.dataset.state = state.presence;
  ui.statusText.textContent = label;
  ui.statusTime.textContent = state.since ? elapsed(Date.now() - state.since) : "";
}

function elapsed(ms) {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

function renderOffers() {
  ui.offers.replaceChildren(...[...state.offers].map(([id, offer]) => {
    const frame = offer.frame;
    return el("li", {},
      el("button", {
        type: "button", class: "item offer", "aria-current": state.selected === id ? "true" : null,
        onclick: () => selectContact(id),
      },
      el("span", { class: "item-title", text: typeLabel(frame.context) }),
      el("span", { class: "item-meta" },
        el("span", { class: `channel ${frame.channel}`, text: CHANNELS[frame.channel] || frame.channel }),
        el("span", { text: frame.callback ? callbackLabel(frame.callback) : reasonLabel(frame.reason) })),
      el("span", { class: "item-meta countdown", "data-expires": offer.expiresAt || "" })));
  }));
  ui.offerCount.textContent = String(state.offers.size);
  ui.offersEmpty.hidden = state.offers.size > 0;
  tick();
}

function renderContacts() {
  ui.contacts.replaceChildren(...[...state.contacts].map(([id, contact]) => {
    const frame = contact.frame;
    const last = contact.transcript[contact.transcript.length - 1];
    return el("li", {},
      el("button", {
        type: "button", class: "item contact", "aria-current": state.selected === id ? "true" : null,
        onclick: () => selectContact(id),
      },
      el("span", { class: "item-title" }, typeLabel(frame.context),
        contact.unread ? el("span", { class: "badge", text: String(contact.unread),
                                      "aria-label": `${contact.unread} new` }) : null),
      el("span", { class: "item-meta" },
        el("span", { class: `channel ${frame.channel}`, text: CHANNELS[frame.channel] || frame.channel }),
        contact.ended ? el("span", { class: "ended", text: "Ended" }) : null),
      last ? el("span", { class: `item-snippet ${last.from}`,
                          text: `${SPEAKERS[last.from] || ""}: ${last.text || filesSummary(last.attachments)}` }) : null));
  }));
  ui.contactCount.textContent = String(state.contacts.size);
  ui.contactsEmpty.hidden = state.contacts.size > 0;
}

// Which contact the wrap-up and transfer forms were last filled for. It outlives a reconnect's
// re-sync (the contacts are sent again), so what the agent was choosing or typing stays.
let renderedFor = null;
// Which contact the two pickers' options are for: a ready frame (a reconnect, new rules) fills
// them afresh, and the next render puts the contact's own options back, the choice kept.
let pickersFor = null;

// A contact that left this agent for good (wrapped up, transferred, back to the queue): its
// forms start afresh should it come back.
function dropContact(id) {
  state.contacts.delete(id);
  if (renderedFor === id) renderedFor = null;
}

function renderSelected() {
  const id = state.selected;
  const offer = state.offers.get(id);
  const contact = state.contacts.get(id);
  const item = contact || offer;
  ui.placeholder.hidden = Boolean(item);
  ui.conversation.hidden = !item;
  ui.contextEmpty.hidden = Boolean(item);
  ui.contextBody.hidden = !item;
  if (!item) return;
  const frame = item.frame;
  const ctx = frame.context || {};
  ui.heading.textContent = typeLabel(ctx);
  ui.meta.textContent = [CHANNELS[frame.channel] || frame.channel, customerLabel(ctx.customer),
                         frame.queue ? `queue ${frame.queue}` : null,
                         ctx.callback ? callbackLabel(ctx.callback) : null].filter(Boolean).join(" · ");

  ui.offerActions.hidden = !offer;
  ui.accept.disabled = Boolean(offer?.pending);
  ui.decline.disabled = Boolean(offer?.pending);
  ui.accept.textContent = offer?.pending ? "Accepting…" : "Accept";

  ui.replyForm.hidden = !contact;
  ui.wrapForm.hidden = !contact;
  ui.transferForm.hidden = !contact || Boolean(contact.ended);
  ui.transferButton.disabled = Boolean(contact?.pending || contact?.transfer);
  ui.transferStatus.hidden = !contact?.transfer;
  ui.transferStatus.textContent = contact?.transfer || "";
  const canReply = contact && !contact.ended && frame.channel !== "voice";
  const canWrite = composeMode() === "note" ? contact && !contact.ended : canReply;
  ui.modeReply.disabled = frame.channel === "voice"; // a call: nothing to type to the caller
  ui.reply.disabled = !canWrite;
  ui.send.disabled = !canWrite;
  ui.repliesButton.disabled = !canReply;
  ui.attach.hidden = !contact?.frame.sends_files;
  ui.attach.disabled = !canReply || composeMode() === "note" || windowClosed(contact);
  if (!canReply) closeReplies(false);
  renderCompose();
  ui.finish.disabled = Boolean(contact?.pending);
  ui.finish.textContent = contact?.pending ? "Finishing…" : "Finish contact";
  ui.endedBanner.hidden = !(contact?.ended || (contact && frame.channel === "voice"));
  if (contact?.ended) {
    ui.endedBanner.textContent = contact.ended === "customer_left"
      ? "The customer left. Wrap up when you're ready."
      : `This contact ended (${humanise(contact.ended)}). Wrap up when you're ready.`;
  } else if (contact && ctx.callback?.state === "calling") {
    ui.endedBanner.textContent = `Calling the customer back at ${ctx.callback.number}: your phone rings once they answer.`;
  } else if (contact && frame.channel === "voice") {
    ui.endedBanner.textContent = "The call is connected to your phone. Wrap up here when it ends.";
  }
  if (contact && renderedFor !== id) {
    ui.wrapForm.reset();
    ui.transferForm.reset();
    renderedFor = id;
    pickersFor = null;
  }
  if (contact && pickersFor !== id) {
    fillContactTypes(ctx.contact_type);
    fillTransferTargets();
    pickersFor = id;
  }

  renderTranscript(contact ? contact.transcript : (ctx.transcript || []), ctx.transfer);
  renderContext(frame, ctx);
}

function renderTranscript(lines, transfer) {
  const atBottom = ui.transcript.scrollHeight - ui.transcript.scrollTop - ui.transcript.clientHeight < 40;
  const items = lines.map((line) => {
    if (line.from === "note") return noteLine(line);
    // Before a transfer reached this agent, the agent's lines were the colleague's.
    const colleague = line.from === "agent" && transfer && Number(line.at) <= Number(transfer.at);
    const who = colleague ? (transfer.from_agent_name || "Colleague")
      : SPEAKERS[line.from] || humanise(line.from);
    const failed = line.failed || line.delivery?.state === "failed";
    const sent = Array.isArray(line.attachments) && line.attachments.length ? line.attachments : null;
    return el("li", { class: `line ${line.from}${failed ? " failed" : ""}` },
      el("span", { class: "who" }, who,
        line.template ? el("span", { class: "template-tag", text: "Approved template" }) : null,
        el("time", { text: when(line.at) })),
      line.text || !sent ? el("span", { class: "text", text: line.text }) : null,
      sent ? attachmentList(sent, line.from === "agent" ? "you" : "the customer") : null,
      line.sendingFile ? el("span", { class: "attachment sending", text: `Sending ${line.sendingFile}…` }) : null,
      line.delivery ? deliveryMark(line)
        : line.failed ? el("span", { class: "failed-note", text: "Not delivered" }) : null);
  });
  if (!items.length) items.push(el("li", { class: "line system", text: "Nothing said yet." }));
  // Only append what is new, so screen readers announce just the new lines.
  const current = ui.transcript.children;
  const sameStart = current.length <= items.length && [...current].every(
    (node, i) => node.textContent === items[i].textContent);
  if (sameStart && ui.transcript.dataset.for === state.selected) {
    ui.transcript.append(...items.slice(current.length));
  } else {
    ui.transcript.replaceChildren(...items);
    ui.transcript.dataset.for = state.selected;
  }
  if (atBottom || !sameStart) ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

// ---- customers' files (files.js) -------------------------------------------------------------

const files = createFiles(TOKEN_KEY);

function attachmentList(attachments, from) {
  const contactId = state.selected;
  const held = state.contacts.has(contactId); // an offer's files open once it is accepted
  return el("div", { class: "attachments" }, ...attachments.map((file) =>
    !held ? el("span", { class: "attachment pending-accept", text: `${fileLabel(file)} (${file.content_type}): accept to open` })
      : files.view(contactId, file, from)));
}

// ---- files the agent sends (POST /api/contacts/{id}/files, through the outbox) ---------------

const MAX_FILE = 5 * 1024 * 1024; // the server's cap, checked here first to save the upload

ui.attach.addEventListener("click", () => ui.attachInput.click());
ui.attachInput.addEventListener("change", () => {
  for (const file of ui.attachInput.files || []) sendFile(file);
  ui.attachInput.value = "";
});

async function sendFile(file) {
  const contactId = state.selected;
  const contact = state.contacts.get(contactId);
  if (!contact || contact.ended) return;
  if (file.size > MAX_FILE) {
    toast(`“${file.name}” is over 5 MB: send a smaller file.`);
    return;
  }
  const id = newId();
  const line = { from: "agent", text: "", at: Date.now() / 1000, messageId: id,
                 sendingFile: file.name || "file", delivery: { state: "sending", reason: "" } };
  contact.transcript.push(line);
  render();
  try {
    const response = await fetch(`/api/contacts/${encodeURIComponent(contactId)}/files`, {
      method: "POST", body: file, cache: "no-store",
      headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`,
                 "Content-Type": file.type || "application/octet-stream", "X-Message-Id": id } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
    line.attachments = body.attachments;
    if (line.delivery.state === "sending") line.delivery = { state: body.state || "queued", reason: "" };
  } catch (error) {
    line.delivery = { state: "failed", reason: error.message };
    toast(`“${file.name}” was not sent: ${error.message}`);
  }
  delete line.sendingFile;
  render();
}

function forgetAttachments(contactId) {
  files.forget((id) => id === contactId);
}

// A private note in the transcript: styled apart, with who wrote it; never the customer's.
function noteLine(line) {
  const supervisor = line.role === "supervisor";
  const mine = !supervisor && line.author_id && line.author_id === state.agent?.id;
  const author = mine ? "You" : line.author_name || (supervisor ? "Supervisor" : "An agent");
  return el("li", { class: `line note${supervisor ? " whisper" : ""}${mine ? " mine" : ""}` },
    el("span", { class: "who" },
      el("span", { class: "note-label" }, el("span", { class: "lock", "aria-hidden": "true" }),
        supervisor ? "Supervisor note" : "Private note"),
      el("span", { text: `${author} · Only agents see this` }),
      el("time", { text: when(line.at) })),
    el("span", { class: "text", text: line.text }),
    line.sending ? el("span", { class: "delivery sending", "data-state": "sending", text: "Sending…" }) : null);
}

function earlierNotes(notes) {
  if (!Array.isArray(notes) || !notes.length) return null;
  return el("ul", { class: "earlier-notes", "aria-label": "Private notes" },
    ...notes.map((note) => el("li", { class: note.role === "supervisor" ? "whisper" : null },
      el("span", { class: "lock", "aria-hidden": "true" }),
      el("span", { class: "earlier-note-text", text: note.text }),
      el("span", { class: "earlier-note-by",
                   text: `${note.author_name || humanise(note.role)}${note.role === "supervisor" ? " (supervisor)" : ""}` }))));
}

function renderContext(frame, ctx) {
  ui.ctxType.textContent = typeLabel(ctx);
  ui.ctxConfidence.replaceChildren();
  const confidence = Number(ctx.confidence);
  if (ctx.contact_type && ctx.confidence != null && Number.isFinite(confidence)) {
    const percent = Math.round(confidence * 100);
    const level = percent >= 80 ? "high" : percent >= 55 ? "medium" : "low";
    ui.ctxConfidence.append(
      el("meter", { min: "0", max: "100", low: "55", high: "80", optimum: "100", value: String(percent),
                    "aria-label": "Classifier confidence" }),
      el("span", { class: `confidence-text ${level}`, text: `${percent}% confident` }));
  }
  ui.ctxReason.textContent = reasonLabel(frame.reason || ctx.reason);
  ui.ctxQueue.textContent = [frame.queue ? `Queue: ${frame.queue}` : null,
                             ctx.escalated_at ? `escalated ${when(ctx.escalated_at)}` : null]
    .filter(Boolean).join(" · ");

  const moved = ctx.transfer;
  ui.ctxTransferSection.hidden = !moved;
  if (moved) {
    const how = moved.mode === "warm" ? "warm transfer" : "cold transfer";
    ui.ctxTransfer.textContent = `From ${moved.from_agent_name || moved.from_agent} (${how})`;
    ui.ctxTransferNote.textContent = moved.note ? `“${moved.note}”` : "No note.";
  }

  ui.ctxCustomer.textContent = customerLabel(ctx.customer);
  const attributes = Object.entries(ctx.customer?.attributes || {});
  ui.ctxAttributes.replaceChildren(...attributes.flatMap(([key, value]) => [
    el("dt", { text: humanise(key) }), el("dd", { text: String(value) })]));

  const steps = ctx.self_service_steps || [];
  ui.ctxSteps.replaceChildren(...(steps.length ? steps.map((step) => el("li", {},
    el("span", { class: "step-title",
                 text: `${humanise(step.type)}: ${state.contactTypes.get(step.contact_type) || humanise(step.contact_type)}` }),
    el("span", { class: `outcome ${step.outcome || "none"}`,
                 text: step.outcome === "failed" ? "didn't help" : step.outcome === "resolved" ? "helped"
                   : humanise(step.outcome) || "no answer" }),
    el("time", { text: when(step.at) }),
    // What a flow already asked for: the agent must not ask again.
    ...Object.entries(step.collected || {}).map(([name, value]) =>
      el("span", { class: "collected", text: `${humanise(name)}: ${value}` })))) :
    [el("li", { class: "empty", text: "None" })]));

  const earlier = ctx.earlier_contacts || [];
  ui.ctxEarlier.replaceChildren(...(earlier.length ? earlier.map((c) => el("li", {},
    el("span", { class: "step-title" },
      el("span", { class: `channel ${c.channel}`, text: CHANNELS[c.channel] || c.channel }),
      ` ${state.contactTypes.get(c.contact_type) || humanise(c.contact_type) || "Not classified"}`),
    el("span", { class: "outcome", text: OUTCOMES[c.outcome] || humanise(c.outcome || c.status) }),
    el("time", { text: when(c.started_at, dateFormat) }),
    earlierNotes(c.notes))) :
    [el("li", { class: "empty", text: "None: this is their first contact" })]));
}

function fillContactTypes(current) {
  const label = current ? (state.contactTypes.get(current) || humanise(current)) : null;
  keepingChoice(ui.contactType, () => ui.contactType.replaceChildren(
    el("option", { value: "", text: label ? `${label} (as classified)` : "Not classified" }),
    ...[...state.contactTypes].filter(([id]) => id !== current).map(
      ([id, text]) => el("option", { value: id, text }))));
}

// Refill a picker, keeping what was chosen while it is still offered.
function keepingChoice(select, refill) {
  const chosen = select.value;
  refill();
  if ([...select.options].some((option) => option.value === chosen)) select.value = chosen;
}

function fillTransferTargets() {
  const group = (label, items) => el("optgroup", { label }, ...items);
  keepingChoice(ui.transferTarget, () => ui.transferTarget.replaceChildren(
    el("option", { value: "", text: "Choose a queue or a colleague" }),
    group("Queues", state.targets.queues.map((q) => el("option", { value: `queue:${q.name}`, text: q.label }))),
    group("Colleagues", state.targets.agents.map((a) => el("option", { value: `agent:${a.id}`, text: colleagueLabel(a) })))));
}

// Colleagues who share a name are told apart by their skills.
function colleagueLabel(agent) {
  const namesakes = state.targets.agents.filter((other) => other.name === agent.name).length;
  return namesakes > 1 && agent.skills?.length ? `${agent.name} (${agent.skills.join(", ")})` : agent.name;
}

// Offer countdowns, once a second, without re-rendering everything.
function tick() {
  const now = Date.now();
  for (const node of ui.offers.querySelectorAll(".countdown")) {
    const at = Number(node.dataset.expires);
    node.textContent = at ? (at > now ? `Expires in ${Math.ceil((at - now) / 1000)} s` : "Expiring…") : "";
  }
  const held = state.contacts.get(state.selected);
  if (held?.window && windowClosed(held) !== windowShown && composeMode() === "reply") renderSelected();
  else if (held?.window) renderClosingSoon(held, composeMode());
  const offer = state.offers.get(state.selected);
  ui.offerExpires.textContent = offer?.expiresAt
    ? (offer.expiresAt > now ? `${Math.ceil((offer.expiresAt - now) / 1000)} s left` : "Expiring…") : "";
}
setInterval(tick, 1000);
setInterval(renderStatusPill, 1000);

let toastTimer = null;
function toast(message, kind = "error") {
  ui.toast.textContent = message;
  ui.toast.dataset.kind = kind;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 6000);
}

function showLogin(message) {
  clearTimeout(retryTimer);
  ui.consoleView.hidden = true;
  ui.me.hidden = true;
  ui.loginView.hidden = false;
  ui.signIn.disabled = false;
  ui.loginError.textContent = message;
  ui.token.focus();
}

// ---- start ---------------------------------------------------------------------------------

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  ui.loginView.hidden = true; // signing straight back in after a reload
  connect(saved);
} else {
  ui.token.focus();
}
