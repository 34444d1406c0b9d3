// Switchboard contact search: one box for a phone, email, name or id, filters, a results
// table (arrow keys move, Enter opens) and the chosen contact's conversation and timeline.
// Deep link: /contacts#<contact id>. No build step: this file, contacts.css and the API.

import { createFiles, fileLabel } from "/static/files.js";

const TOKEN_KEY = "switchboard.contacts.token";
const OTHER_TOKEN_KEYS = ["switchboard.supervisor.token", "switchboard.ops.token"];
const PAGE = 50;
const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;
const HANDLING = {
  self_service: "Self-served", agent: "Agent", abandoned: "Abandoned", queued: "Waiting",
  dropped: "Dropped", open: "Open", escalated: "Escalated (any)",
};
const SPEAKERS = { customer: "Customer", bot: "Assistant", agent: "Agent", note: "Private note" };

const $ = (id) => document.getElementById(id);
const state = { rows: [], next: null, selected: null, query: null, choices: null, tab: "conversation" };

// ---- formatting -------------------------------------------------------------------------

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

function day(iso) {
  const date = new Date(iso);
  const sameYear = date.getFullYear() === new Date().getFullYear();
  return date.toLocaleDateString(undefined, sameYear ? { day: "numeric", month: "short" }
    : { day: "numeric", month: "short", year: "numeric" });
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
}

function customerName(customer) {
  if (customer.erased) return "Erased customer";
  const address = customer.address || "";
  // a number or an email says who it was; a chat session's id says nothing
  const readable = /^\+?[0-9 ]{7,}$/.test(address) || address.includes("@");
  return customer.name || (readable ? address : "Unknown customer");
}

function agentsOf(row) {
  return row.agents.map((a) => a.name || "an agent").join(", ");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== ""));
  return node;
}

function pill(handling) {
  return el("span", { class: "pill", "data-handling": handling, text: HANDLING[handling] || handling });
}

// ---- API ----------------------------------------------------------------------------------

class Unauthorized extends Error {}
class NotFound extends Error {}

async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) if (value) url.searchParams.set(name, value);
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` },
  });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401 || response.status === 403) throw new Unauthorized(body.error);
  if (response.status === 404) throw new NotFound(body.error);
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// What the one box holds: a contact id (whole or its start) or something about a customer.
export function understood(text) {
  const q = text.trim();
  if (!q) return {};
  if (UUID.test(q)) return { uuid: q.toLowerCase() };
  // the start of an id: hex with a digit and a letter ("face" or "Abbe" stay names)
  if (/^[0-9a-f-]{6,36}$/i.test(q) && /[0-9]/.test(q) && /[a-f]/i.test(q)) {
    return { contact_id: q };
  }
  return { customer: q };
}

function searchParams(box) {
  const days = Number($("window").value);
  const from = new Date(Date.now() - days * 86400_000).toISOString();
  return {
    ...box, from, channel: $("channel").value, contact_type: $("contact-type").value,
    outcome: $("outcome").value, limit: String(PAGE),
  };
}

async function search(event) {
  event?.preventDefault();
  const box = understood($("q").value);
  if (box.uuid) {  // a whole id: the contact itself, or else the customer with that id
    try {
      const found = await api(`/api/contacts/${box.uuid}`);
      showResults([found.contact], null, "");
      return showContact(found);
    } catch (error) {
      if (!(error instanceof NotFound)) return failed(error);
    }
    return runSearch({ customer: box.uuid });
  }
  return runSearch(box);
}

async function runSearch(box) {
  state.query = searchParams(box);
  setStatus("Searching…");
  try {
    const body = await api("/api/contacts", state.query);
    fillChoices(body.choices);
    showResults(body.contacts, body.next_before, matchedNote(box, body));
    setStatus("");
  } catch (error) {
    failed(error);
  }
}

function matchedNote(box, body) {
  if (box.customer && body.customers_matched === 0) return `no customer matches “${box.customer}”`;
  return "";
}

async function more() {
  if (!state.next) return;
  try {
    const body = await api("/api/contacts", { ...state.query, before: state.next });
    showResults([...state.rows, ...body.contacts], body.next_before, "");
  } catch (error) {
    failed(error);
  }
}

function failed(error) {
  if (error instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin(`That token was not accepted: ${error.message}`);
  }
  setStatus(error.message, true);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function fillChoices(choices) {
  if (!choices || state.choices) return;
  state.choices = choices;
  $("channel").append(...choices.channels.map((c) => el("option", { value: c, text: c })));
  $("contact-type").append(el("option", { value: "unclassified", text: "Unclassified" }),
    ...choices.contact_types.map((t) => el("option", { value: t.id, text: t.label })));
  $("outcome").append(...choices.outcomes.map((o) => el("option", { value: o, text: HANDLING[o] || o })));
}

// ---- results ------------------------------------------------------------------------------

function showResults(rows, next, note) {
  state.rows = rows;
  state.next = next;
  const head = el("thead", {}, el("tr", {},
    el("th", { class: "when", scope: "col", text: "Started" }),
    el("th", { scope: "col", text: "Customer · type" }),
    el("th", { class: "outcome", scope: "col", text: "Outcome" })));
  const body = el("tbody", {}, ...rows.map(resultRow));
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: "3", class: "none",
      text: note ? `Nothing found: ${note}.` : "No contacts match. Try a longer window or fewer filters." })));
  }
  $("results").replaceChildren(head, body);
  $("results-count").textContent = rows.length
    ? `${rows.length}${next ? "+" : ""} found, newest first` : "";
  $("more").hidden = !next;
  markSelected();
}

function resultRow(row) {
  const tr = el("tr", { "data-contact": row.contact_id, tabindex: "-1", "aria-selected": "false" },
    el("td", {}, el("span", { class: "date", text: day(row.started_at) }),
      el("span", { class: "time", text: clock(row.started_at) })),
    el("td", {}, el("span", { class: "who", text: customerName(row.customer) }),
      el("span", { class: "type" }, el("span", { class: "chan", text: row.channel || "?" }),
        [row.contact_type_label, agentsOf(row)].filter(Boolean).join(" · "))),
    el("td", {}, pill(row.handling),
      row.came_back ? el("span", { class: "flag-back", title: "came back within the repeat window", text: "↺" }) : null));
  tr.addEventListener("click", () => open(row.contact_id, tr));
  return tr;
}

function markSelected() {
  let focusable = null;
  for (const tr of $("results").querySelectorAll("tbody tr[data-contact]")) {
    const chosen = tr.dataset.contact === state.selected;
    tr.setAttribute("aria-selected", String(chosen));
    tr.tabIndex = -1;
    if (chosen) focusable = tr;
  }
  (focusable || $("results").querySelector("tbody tr[data-contact]"))?.setAttribute("tabindex", "0");
}

function onResultsKey(event) {
  const rows = [...$("results").querySelectorAll("tbody tr[data-contact]")];
  const at = rows.indexOf(document.activeElement);
  if (at < 0) return;
  const step = { ArrowDown: 1, ArrowUp: -1, Home: -rows.length, End: rows.length }[event.key];
  if (step !== undefined) {
    event.preventDefault();
    const next = rows[Math.max(0, Math.min(rows.length - 1, at + step))];
    next.focus();
    next.scrollIntoView({ block: "nearest" });
    open(next.dataset.contact, next, false);
  } else if (event.key === "Enter") {
    event.preventDefault();
    open(rows[at].dataset.contact, rows[at], true);
  }
}

// ---- one contact ----------------------------------------------------------------------------

let opening = 0;

async function open(contactId, row = null, moveFocus = false) {
  const mine = ++opening;
  try {
    const found = await api(`/api/contacts/${contactId}`);
    if (mine !== opening) return;  // another contact was asked for meanwhile
    showContact(found);
    if (row) row.focus({ preventScroll: true });
    if (moveFocus) $("detail").focus();
  } catch (error) {
    if (error instanceof NotFound) return setStatus(`No contact ${contactId}.`, true);
    failed(error);
  }
}

function showContact(found) {
  const contact = found.contact;
  state.selected = contact.contact_id;
  history.replaceState(null, "", `#${contact.contact_id}`);
  markSelected();
  $("detail-empty").hidden = true;
  const body = $("detail-body");
  body.hidden = false;
  forgetFiles(contact.contact_id);
  body.replaceChildren(detailHead(found), tabs(found));
  showTab(state.tab);
}

function detailHead(found) {
  const c = found.contact;
  const facts = [
    ["Channel", el("span", { class: "chan", text: c.channel || "?" })],
    ["Type", c.contact_type_label],
    ["Outcome", el("span", {}, pill(c.handling), c.outcome ? ` ${c.outcome.replaceAll("_", " ")}` : "")],
    ["Started", `${day(c.started_at)} ${clock(c.started_at)}`],
    ["Duration", c.ended_at ? formatDuration(c.duration_s) : "still open"],
    ["Agent", agentsOf(c) || "–"],
  ];
  if (c.queue) facts.push(["Queue", found.queue_label || c.queue]);
  if (c.survey) facts.push([c.survey.kind.toUpperCase(), c.survey.score === null ? "no answer" : `${c.survey.score}${c.survey.kind === "csat" ? " / 5" : " / 10"}`]);
  const head = el("header", { class: "detail-head" },
    el("div", { class: "detail-title" },
      el("h2", { id: "contact-heading", text: customerName(c.customer) }),
      c.customer.erased ? el("span", { class: "erased-badge", text: "personal data erased" }) : null,
      c.customer.name && c.customer.address ? el("span", { class: "address", text: c.customer.address }) : null,
      el("span", { class: "ids", title: "contact id", text: c.contact_id })),
    el("dl", { class: "facts" }, ...facts.map(([label, value]) =>
      el("div", {}, el("dt", { text: label }), el("dd", {}, value)))));
  if (c.came_back) {
    head.append(el("p", { class: "came-back", text: "Came back: the customer got in touch again about the same thing within the repeat window (a false deflection)." }));
  }
  if (found.other_contacts.length) {
    head.append(el("nav", { class: "others", "aria-label": "The customer's other contacts" },
      el("span", { class: "label", text: `${found.other_contacts.length} other contact${found.other_contacts.length > 1 ? "s" : ""}:` }),
      ...found.other_contacts.map((o) => {
        const link = el("a", { href: `#${o.contact_id}`, "data-contact": o.contact_id,
                               title: `${o.contact_type_label} · ${HANDLING[o.handling] || o.handling}` },
          el("span", { text: day(o.started_at) }), el("span", { class: "chan", text: o.channel || "?" }),
          el("span", { text: o.contact_type_label }), pill(o.handling));
        return link;
      })));
  }
  return head;
}

function tabs(found) {
  const bar = el("div", { class: "tabs", role: "tablist", "aria-label": "Contact views" },
    tabButton("conversation", `Conversation (${found.conversation.filter((b) => b.from !== "system").length})`),
    tabButton("timeline", `Timeline (${found.timeline.length})`));
  bar.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      showTab(state.tab === "conversation" ? "timeline" : "conversation");
      $(`tab-${state.tab}`).focus();
    }
  });
  return el("div", {}, bar,
    el("div", { class: "tab-panel", id: "panel-conversation", role: "tabpanel", tabindex: "0",
                "aria-labelledby": "tab-conversation" }, conversation(found.conversation)),
    el("div", { class: "tab-panel", id: "panel-timeline", role: "tabpanel", tabindex: "0",
                "aria-labelledby": "tab-timeline" }, timeline(found.timeline)));
}

function tabButton(name, label) {
  const button = el("button", { type: "button", role: "tab", id: `tab-${name}`,
                                "aria-controls": `panel-${name}`, text: label });
  button.addEventListener("click", () => showTab(name));
  return button;
}

function showTab(name) {
  state.tab = name;
  for (const other of ["conversation", "timeline"]) {
    const chosen = other === name;
    $(`tab-${other}`)?.setAttribute("aria-selected", String(chosen));
    $(`tab-${other}`)?.setAttribute("tabindex", chosen ? "0" : "-1");
    const panel = $(`panel-${other}`);
    if (panel) panel.hidden = !chosen;
  }
}

function conversation(bubbles) {
  const list = el("ol", { class: "bubbles", "aria-label": "Conversation" });
  for (const b of bubbles) {
    if (b.from === "system") {
      list.append(el("li", { class: "line system", text: b.text }));
      continue;
    }
    const who = el("span", { class: "who" });
    if (b.private) who.append(el("span", { class: "lock", "aria-hidden": "true" }));
    who.append(b.private ? `Private · ${b.author || "note"}` : (b.author || SPEAKERS[b.from]));
    who.append(el("span", { text: clock(b.at) }));
    if (b.reconstructed) who.append(el("span", { class: "as-now", title: "This contact was logged before the bot's words were kept: this is the catalog's answer as the rules say it now.", text: "as the rules word it now" }));
    const text = b.erased ? el("span", { class: "erased", text: "(erased)" }) : b.text;
    const files = b.attachments && b.attachments.length
      ? attachmentList(b.attachments, b.from === "agent" ? "the agent" : "the customer") : null;
    const choices = b.choices && b.choices.length
      ? el("div", { class: "choices", "aria-label": "Choices offered" },
        ...b.choices.map((label) => el("span", { class: "choice", text: label })))
      : null;
    list.append(el("li", { class: `line ${b.from}`, "data-from": b.from, "data-private": b.private ? "true" : null },
      who, text || !files ? el("div", { class: "text" }, text) : null, files, choices));
  }
  if (!bubbles.length) list.append(el("li", { class: "line system", text: "Nothing was said." }));
  return list;
}

// ---- customers' files (files.js) -------------------------------------------------------------

const customerFiles = createFiles(TOKEN_KEY);

function attachmentList(attachments, from) {
  const contactId = state.selected;
  return el("div", { class: "attachments" }, ...attachments.map((file) =>
    file.erased ? el("span", { class: "attachment gone", title: "Deleted by an erasure of the customer's data",
                               text: `${fileLabel(file)} (${file.content_type}): erased` })
      : customerFiles.view(contactId, file, from)));
}

// Another contact is shown: the files of the others are let go.
function forgetFiles(keep) {
  customerFiles.forget((id) => id !== keep);
}

function timeline(entries) {
  const list = el("ol", { class: "timeline", "aria-label": "Timeline" });
  let lastDay = null;
  for (const e of entries) {
    const today = day(e.at);
    if (today !== lastDay) {
      list.append(el("li", { class: "day", text: today }));
      lastDay = today;
    }
    const desc = el("span", { class: "desc" });
    if (e.private) desc.append(el("span", { class: "lock", "aria-label": "private" }));
    desc.append(e.description);
    const item = el("li", { class: `event${e.private ? " private" : ""}`, "data-kind": e.kind },
      el("span", { class: "at", text: clock(e.at) }),
      el("div", { class: "what" }, desc, el("span", { class: "kind", text: e.kind })));
    const words = Array.isArray(e.details.messages) ? e.details.messages.filter(Boolean).join(" ") : null;
    const said = e.details.text ?? e.details.note ?? words ?? e.details.hello;
    if (typeof said === "string" && said) item.append(el("span", { class: "snippet", text: `“${said}”` }));
    const details = Object.entries(e.details).filter(([, v]) => v !== "" && v !== null);
    if (details.length) {
      item.append(el("details", {}, el("summary", { text: "details" }),
        el("dl", {}, ...details.flatMap(([k, v]) => [el("dt", { text: k }),
          el("dd", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })]))));
    }
    list.append(item);
  }
  return list;
}

// ---- start ----------------------------------------------------------------------------------

function showLogin(message) {
  $("login-view").hidden = false;
  $("desk").hidden = true;
  $("links").hidden = true;
  $("login-error").textContent = message;
  $("token").focus();
}

function showDesk() {
  $("login-view").hidden = true;
  $("desk").hidden = false;
  $("links").hidden = false;
}

function takeToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
    return;
  }
  if (sessionStorage.getItem(TOKEN_KEY)) return;
  const other = OTHER_TOKEN_KEYS.map((k) => sessionStorage.getItem(k)).find(Boolean);
  if (other) sessionStorage.setItem(TOKEN_KEY, other);
}

function deepLinked() {
  const id = decodeURIComponent(location.hash.slice(1));
  return UUID.test(id) ? id.toLowerCase() : null;
}

async function begin() {
  showDesk();
  const linked = deepLinked();
  await runSearch({});
  if (linked && !$("login-view").hidden) return;
  if (linked) await open(linked);
}

function start() {
  takeToken();
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    begin();
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  $("search-form").addEventListener("submit", search);
  for (const id of ["window", "channel", "contact-type", "outcome"]) {
    $(id).addEventListener("change", () => search());
  }
  $("q").addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") {
      event.preventDefault();
      $("results").querySelector("tbody tr[data-contact]")?.focus();
    }
  });
  $("results").addEventListener("keydown", onResultsKey);
  $("more").addEventListener("click", more);
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && !["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName)) {
      event.preventDefault();
      $("q").focus();
    }
  });
  window.addEventListener("hashchange", () => {
    const id = deepLinked();
    if (id && id !== state.selected) open(id);
  });
  if (sessionStorage.getItem(TOKEN_KEY)) begin();
  else showLogin("");
}

start();
