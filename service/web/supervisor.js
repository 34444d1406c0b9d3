// Switchboard supervisor view: polls /api/supervisor every few seconds and draws the floor;
// a supervisor whispers to the agent on a held contact (POST /api/contacts/{id}/notes).
// No build step and nothing fetched from elsewhere: this file, supervisor.css and the API.

const TOKEN_KEY = "switchboard.supervisor.token";
const OPS_TOKEN_KEY = "switchboard.ops.token";  // signed in on /ops: that token reads this too
const SORT_KEY = "switchboard.supervisor.sort";
const EVERY_MS = 3000;
const STATES = [
  { key: "available", label: "Available" },
  { key: "busy", label: "Busy" },
  { key: "away", label: "Away" },
  { key: "offline", label: "Offline" },
];
const STATE_ORDER = Object.fromEntries(STATES.map((s, i) => [s.key, i]));
const COLUMNS = [
  { key: "name", label: "Agent", text: true },
  { key: "state", label: "State", text: true },
  { key: "in_state_s", label: "In state" },
  { key: "contacts", label: "Contacts", text: true },
  { key: "offers", label: "Offers" },
  { key: "skills", label: "Skills", text: true },
];

const $ = (id) => document.getElementById(id);
let timer = null;
let ticker = null;
let latest = null;
let fetchedAt = 0;
// The open whisper box outlives the redraws: its one form node is moved into each new table,
// so the text, the caret and the last answer stay; `contact` is the contact as last listed.
let whisper = null;  // { agentId, agentName, contact, form }
const sort = JSON.parse(localStorage.getItem(SORT_KEY) || "null") ||
  { agents: { key: "state", dir: 1 }, queues: "attention" };

// ---- formatting -------------------------------------------------------------------------

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

export function formatRate(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 100)}%`;
}

export function formatContacts(contacts) {
  const parts = Object.entries(contacts).sort(([a], [b]) => a.localeCompare(b));
  return parts.length ? parts.map(([channel, n]) => `${channel} ${n}`).join(" · ") : "–";
}

export function customerLabel(contact) {
  return contact.customer_name || "Unknown customer";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

// ---- API ----------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function fetchView(token) {
  const response = await fetch("/api/supervisor", { headers: { Authorization: `Bearer ${token}` } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401 || response.status === 403) throw new Unauthorized(body.error);
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function postNote(contactId, text) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(`/api/contacts/${encodeURIComponent(contactId)}/notes`, {
    method: "POST", body: JSON.stringify({ text }),
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin("");
  try {
    latest = await fetchView(token);
    fetchedAt = Date.now();
    showFloor();
    render(latest);
    setStatus("");
  } catch (error) {
    if (error instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(`That token was not accepted: ${error.message}`);
    }
    setStatus(`Not updated: ${error.message}. Retrying…`, true);
  }
  timer = setTimeout(refresh, EVERY_MS);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showLogin(message) {
  clearTimeout(timer);
  clearInterval(ticker);
  ticker = null;
  $("login-view").hidden = false;
  $("floor").hidden = true;
  $("live").hidden = true;
  $("login-error").textContent = message;
  $("token").focus();
}

function showFloor() {
  $("login-view").hidden = true;
  $("floor").hidden = false;
  $("live").hidden = false;
  ticker = ticker || setInterval(tick, 1000);
}

// ---- drawing ------------------------------------------------------------------------------

function render(view) {
  $("as-of").textContent = `as of ${new Date(view.as_of).toLocaleTimeString()} · ` +
    `every ${EVERY_MS / 1000} s`;
  $("queues-window").textContent =
    `service level and abandoned over the last ${Math.round(view.window_s / 60)} min`;
  renderStates(view.agents_by_state, view.away_by_reason || []);
  renderQueues(view.queues);
  renderAgents(view.agents);
}

function renderStates(counts, awayByReason) {
  const given = awayByReason.some((r) => r.reason); // "No reason given 3" alone says nothing
  const breakdown = given ? awayByReason.map((r) => `${r.label} ${r.count}`).join(" · ") : "";
  $("states").replaceChildren(...STATES.map((s) => el("div", {
    class: "state-count", "data-state": s.key,
    title: s.key === "away" && breakdown ? `Away: ${breakdown}` : undefined,
  }, el("span", { class: "dot", "aria-hidden": "true" }),
  el("span", { class: "label", text: s.label }),
  el("strong", { class: "value", text: String(counts[s.key] ?? 0) }),
  s.key === "away" && breakdown
    ? el("span", { class: "breakdown", "data-field": "away_by_reason", text: breakdown }) : "")));
}

function queueOrder(a, b) {
  const key = sort.queues;
  if (key === "label") return a.label.localeCompare(b.label);
  if (key === "attention") {
    return (b.below_goal - a.below_goal) || ((b.longest_wait_s ?? -1) - (a.longest_wait_s ?? -1))
      || a.label.localeCompare(b.label);
  }
  if (key === "service_level") return (a.service_level ?? 2) - (b.service_level ?? 2);
  return (b[key] ?? -1) - (a[key] ?? -1);
}

function renderQueues(queues) {
  const tiles = Object.entries(queues).map(([key, q]) => ({ key, ...q })).sort(queueOrder);
  $("queues").replaceChildren(...tiles.map(queueTile));
}

function figure(field, label, value, extra = {}) {
  return el("div", { class: "figure", ...extra },
    el("span", { class: "figure-value", "data-field": field, text: value }),
    el("span", { class: "figure-label", text: label }));
}

function queueTile(q) {
  const judged = q.service_level !== null;
  const level = el("div", { class: "level" },
    el("span", { class: "level-value", "data-field": "service_level",
                 text: formatRate(q.service_level) }),
    el("span", { class: "level-target", "data-field": "target",
                 text: `goal ${formatRate(q.goal)} within ${q.target_s} s` }));
  const bar = el("div", { class: "bar", role: "img",
                          "aria-label": `service level ${formatRate(q.service_level)}` },
    el("span", { class: "fill", style: `width: ${judged ? Math.round(q.service_level * 100) : 0}%` }),
    el("span", { class: "goal", style: `left: ${Math.round(q.goal * 100)}%` }));
  return el("article", {
    class: `tile${q.below_goal ? " below-goal" : ""}${judged ? "" : " unjudged"}`,
    "data-key": q.key, "aria-label": q.label,
  }, el("header", {}, el("h3", { "data-field": "label", text: q.label }),
    q.below_goal ? el("span", { class: "flag", text: "below goal" }) : ""),
  level, bar,
  el("div", { class: "figures" },
    figure("waiting", "waiting", String(q.waiting)),
    figure("longest_wait", "longest", formatDuration(q.longest_wait_s),
           { class: `figure${q.longest_wait_s > q.target_s ? " late" : ""}`,
             title: "the longest wait of a contact waiting now" }),
    figure("abandoned", "abandoned", String(q.abandoned)),
    figure("accepted", "in target", `${q.accepted_within_target}/${q.accepted}`,
           { title: "accepted within the target / accepted, last hour" })));
}

function agentValue(agent, key) {
  if (key === "state") return STATE_ORDER[agent.state];
  if (key === "contacts") return Object.values(agent.contacts).reduce((a, b) => a + b, 0);
  if (key === "skills") return agent.skills.join(",");
  if (key === "in_state_s") return agent.in_state_s ?? -1;
  return agent[key];
}

function agentOrder(a, b) {
  const { key, dir } = sort.agents;
  const x = agentValue(a, key);
  const y = agentValue(b, key);
  const order = typeof x === "string" ? x.localeCompare(y) : x - y;
  return (order * dir) || a.name.localeCompare(b.name);
}

function inState(agent) {
  if (agent.in_state_s === null) return null;
  return agent.in_state_s + (Date.now() - fetchedAt) / 1000;
}

function renderAgents(agents) {
  const focused = focusedControl();  // before the whisper box moves into the new rows
  const head = el("tr", {}, ...COLUMNS.map((c) => {
    const active = sort.agents.key === c.key;
    const button = el("button", { type: "button", class: "sort-button", "data-sort": c.key,
                                  text: c.label });
    button.addEventListener("click", () => {
      sort.agents = { key: c.key, dir: active ? -sort.agents.dir : 1 };
      localStorage.setItem(SORT_KEY, JSON.stringify(sort));
      renderAgents(latest.agents);
    });
    return el("th", { class: c.text ? "text" : undefined, scope: "col", "data-col": c.key,
                      "aria-sort": active ? (sort.agents.dir > 0 ? "ascending" : "descending")
                        : "none" }, button);
  }));
  const rows = [...agents].sort(agentOrder).map((a) => el("tr", {
    "data-key": a.id, "data-state": a.state,
  }, el("td", { class: "text name", "data-field": "name", text: a.name }),
  el("td", { class: "text state-cell" }, el("span", { class: "pill", "data-field": "state",
                                           "data-state": a.state, text: a.state }),
    a.state === "busy" && a.presence === "away"
      ? el("span", { class: "note", "data-field": "presence", text: "not taking more" }) : "",
    a.state === "away" && a.reason ? awayReason(a) : ""),
  el("td", { "data-field": "in_state", "data-since": a.since,
             class: `time${a.over_limit ? " over-limit" : ""}`,
             text: formatDuration(inState(a)) }),
  heldCell(a),
  el("td", { "data-field": "offers", text: String(a.offers) }),
  el("td", { class: "text skills", "data-field": "skills", text: a.skills.join(", ") })));
  const empty = agents.length ? [] : [el("tr", {}, el("td", {
    colspan: String(COLUMNS.length), class: "text none",
    text: "No agents yet: add one with switchboard agents add NAME --skills …" }))];
  $("agents").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows, ...empty));
  if (whisper && !whisper.form.isConnected) whisper = null;  // its agent left the directory
  focused()?.focus({ preventScroll: true });
}

// Why an away agent is away, flagged when longer than the reason's limit.
function awayReason(agent) {
  const limit = agent.reason_limit_s ? `limit ${Math.round(agent.reason_limit_s / 60)} min` : "";
  return el("span", { class: "reason-line" },
    el("span", { class: "reason", "data-field": "reason", title: limit || undefined,
                 text: agent.reason_label || agent.reason }),
    agent.over_limit ? el("span", { class: "flag", "data-field": "over_limit",
                                    text: `over ${limit.replace("limit ", "")}` }) : "");
}

// A redraw replaces the table: the control that had the keyboard gets it back.
function focusedControl() {
  const active = document.activeElement;
  if (!active || !$("agents").contains(active)) return () => null;
  if (whisper && whisper.form.contains(active)) return () => (active.isConnected ? active : null);
  const contact = active.closest("li[data-contact]")?.dataset.contact;
  if (contact) {
    return () => document.querySelector(`#agents li[data-contact="${contact}"] .whisper-button`);
  }
  const column = active.dataset.sort;
  return () => (column ? document.querySelector(`#agents [data-sort="${column}"]`) : null);
}

// ---- the contacts an agent holds, and the whisper box -----------------------------------

function heldCell(agent) {
  const held = [...agent.held];
  const open = whisper && whisper.agentId === agent.id ? whisper : null;
  if (open && !held.some((c) => c.contact_id === open.contact.contact_id)) {
    held.push({ ...open.contact, gone: true });  // ended while the box is open: kept till closed
  }
  if (!held.length) {
    return el("td", { class: "text held-cell", "data-field": "contacts",
                      text: formatContacts(agent.contacts) });
  }
  return el("td", { class: "text held-cell", "data-field": "contacts" },
    el("ul", { class: "held", "aria-label": `Contacts ${agent.name} holds` },
      ...held.map((c) => heldItem(agent, c, open))));
}

function heldItem(agent, contact, open) {
  const isOpen = open && open.contact.contact_id === contact.contact_id;
  if (isOpen && !contact.gone) open.contact = contact;
  const button = el("button", {
    type: "button", class: "whisper-button", "aria-expanded": String(Boolean(isOpen)),
    "aria-label": `Whisper to ${agent.name} about ${customerLabel(contact)}`, text: "Whisper",
  });
  button.addEventListener("click", () => (isOpen ? closeWhisper(true)
    : openWhisper(agent, contact)));
  const since = contact.accepted_at || contact.started_at;
  const item = el("li", { class: `held-contact${contact.gone ? " gone" : ""}`,
                          "data-contact": contact.contact_id },
    el("div", { class: "held-line" },
      el("span", { class: "channel", "data-channel": contact.channel, text: contact.channel }),
      el("span", { class: "who", title: customerLabel(contact), text: customerLabel(contact) }),
      el("span", { class: "type", title: contact.contact_type_label,
                   text: contact.contact_type_label }),
      contact.gone ? el("span", { class: "ended", text: "no longer live" })
        : el("span", { class: "for", "data-since": since, title: "with the agent for",
                       text: formatDuration(heldFor(since)) }),
      button));
  if (isOpen) item.append(open.form);
  return item;
}

function heldFor(since) {
  return since ? Math.max(0, (Date.now() - Date.parse(since)) / 1000) : null;
}

function openWhisper(agent, contact) {
  const input = el("input", {
    type: "text", class: "whisper-text", maxlength: "2000", autocomplete: "off",
    "aria-label": `Whisper to ${agent.name}`,
    placeholder: `A private note for ${agent.name}…`,
  });
  const send = el("button", { type: "submit", class: "primary small", text: "Send" });
  const close = el("button", { type: "button", class: "whisper-close", "aria-label":
                               "Close the whisper box", text: "×" });
  const status = el("p", { class: "whisper-status", role: "status", "aria-live": "polite",
                           text: `Only ${agent.name} sees this, never the customer. ` +
                             "Enter sends, Esc closes." });
  const form = el("form", { class: "whisper", "aria-label": `Whisper to ${agent.name}` },
    el("div", { class: "whisper-row" }, input, send, close), status);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendWhisper();
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      closeWhisper(true);
    }
  });
  close.addEventListener("click", () => closeWhisper(true));
  whisper = { agentId: agent.id, agentName: agent.name, contact, form };
  renderAgents(latest.agents);
  input.focus();
}

function closeWhisper(refocus) {
  if (!whisper) return;
  const contactId = whisper.contact.contact_id;
  whisper.form.remove();
  whisper = null;
  if (latest) renderAgents(latest.agents);
  if (refocus) {
    document.querySelector(`#agents li[data-contact="${contactId}"] .whisper-button`)?.focus();
  }
}

async function sendWhisper() {
  const open = whisper;
  const input = open.form.querySelector(".whisper-text");
  const send = open.form.querySelector('button[type="submit"]');
  const text = input.value.trim();
  if (!text || send.disabled) return;
  send.disabled = true;
  showWhisperStatus(open, "Sending…", "");
  try {
    await postNote(open.contact.contact_id, text);
    input.value = "";
    showWhisperStatus(open, `Sent to ${open.agentName}`, "ok");
  } catch (error) {
    showWhisperStatus(open, error.message, "error");
  } finally {
    send.disabled = false;
  }
}

function showWhisperStatus(open, text, kind) {
  const status = open.form.querySelector(".whisper-status");
  status.textContent = text;
  status.className = `whisper-status${kind ? ` ${kind}` : ""}`;
}

function tick() {  // time in state moves on between polls
  if (!latest) return;
  for (const cell of document.querySelectorAll('#agents td[data-field="in_state"]')) {
    const agent = latest.agents.find((a) => a.id === cell.parentElement.dataset.key);
    if (agent) cell.textContent = formatDuration(inState(agent));
  }
  for (const held of document.querySelectorAll("#agents .held-contact .for")) {
    held.textContent = formatDuration(heldFor(held.dataset.since));
  }
}

// ---- start --------------------------------------------------------------------------------

function takeToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  } else if (!sessionStorage.getItem(TOKEN_KEY) && sessionStorage.getItem(OPS_TOKEN_KEY)) {
    sessionStorage.setItem(TOKEN_KEY, sessionStorage.getItem(OPS_TOKEN_KEY));
  }
}

function start() {
  takeToken();
  $("queue-sort").value = sort.queues;
  $("queue-sort").addEventListener("change", () => {
    sort.queues = $("queue-sort").value;
    localStorage.setItem(SORT_KEY, JSON.stringify(sort));
    if (latest) renderQueues(latest.queues);
  });
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    latest = null;
    whisper = null;
    showLogin("");
  });
  refresh();
}

start();
