// Switchboard ops dashboard: reads the report API with an ops token and draws plain SVG.
// No build step and nothing fetched from elsewhere: this file, ops.css and the API.

import { el, formatRate, formatScore, svg } from "/static/ops_draw.js";
import { createAgentsPanel } from "/static/ops_agents.js";
import { createFlow } from "/static/ops_flow.js";
import { createHeatmap } from "/static/ops_heatmap.js";

const TOKEN_KEY = "switchboard.ops.token";
const DAY_MS = 86400000;

const HEADLINE = [
  { key: "contacts", label: "Contacts", kind: "count", detail: "started in the window" },
  { key: "deflection_rate", label: "Deflection", kind: "rate", series: 1,
    detail: "resolved in self-service / contacts" },
  { key: "true_deflection_rate", label: "True deflection", kind: "rate", series: 2,
    detail: "minus customers who came back" },
  { key: "containment_rate", label: "Voice containment", kind: "rate", series: 3,
    detail: "calls that never reached a queue" },
  { key: "abandonment_rate", label: "Abandonment", kind: "rate", series: 4,
    detail: "left the queue before an agent" },
  { key: "service_level", label: "Service level", kind: "rate",
    detail: "accepted within {s} s" },
  { key: "false_deflections", label: "False deflections", kind: "count",
    detail: "came back within the repeat window" },
  { key: "escalated", label: "Escalated", kind: "count", detail: "entered an agent queue" },
  { key: "transferred", label: "Transferred", kind: "count",
    detail: "handed on by an agent" },
  { key: "callbacks_requested", label: "Callbacks", kind: "count",
    detail: "asked for while queued, {completed} completed" },
  { key: "csat", label: "CSAT", kind: "csat", detail: "mean answer, 1 to 5" },
  { key: "nps", label: "NPS", kind: "nps", detail: "promoters minus detractors, %" },
  { key: "survey_responses", label: "Survey responses", kind: "count",
    detail: "of {sent} surveys sent" },
];
const SERIES = HEADLINE.filter((m) => m.series);

const $ = (id) => document.getElementById(id);

// ---- formatting -------------------------------------------------------------------------

function formatSeconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 90) return `${Math.round(value)} s`;
  if (value < 5400) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function format(value, kind) {
  if (kind === "rate") return formatRate(value);
  if (kind === "csat" || kind === "nps") return formatScore(value, kind);
  if (kind === "seconds") return formatSeconds(value);
  if (value === null || value === undefined) return "–";
  if (kind === "minutes") return value.toFixed(1);
  if (kind === "gap") return `${value > 0 ? "+" : ""}${value.toFixed(2)}`;
  return String(value);
}

// ---- token and window ---------------------------------------------------------------------

function takeTokenFromFragment() {
  const match = location.hash.match(/token=([^&]+)/);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

const isoDay = (date) => date.toISOString().slice(0, 10);

function initialRange() {
  const query = new URLSearchParams(location.search);
  if (query.get("from") && query.get("to")) return { from: query.get("from"), to: query.get("to") };
  const today = new Date(isoDay(new Date()));
  return { from: isoDay(new Date(today - 6 * DAY_MS)), to: isoDay(new Date(+today + DAY_MS)) };
}

function showRange(range) {
  $("from").value = range.from.slice(0, 10);
  const end = new Date(range.to);
  const through = isNaN(end) ? new Date() : new Date(end - 1);
  $("through").value = isoDay(through);
}

function rangeFromForm() {
  const through = new Date($("through").value);
  return { from: $("from").value, to: isoDay(new Date(+through + DAY_MS)) };
}

// ---- API ----------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function fetchReport(name, range, token, split = false) {
  const params = reportParams(range, split);
  const path = `/api/reports/${name}?${params}`;
  return params.has("segment_by") ? fetchPrepared(path, token) : fetchJson(path, token);
}

// ---- customer segments: the whole dashboard for one, or the summary split by an attribute ----

const segment = { by: "", value: null };  // value null: split by `by` (when set)

// The page's query: the window and the segment choice.
function pageQuery(range) {
  const params = new URLSearchParams({ from: range.from, to: range.to });
  if (segment.by) params.set("segment_by", segment.by);
  if (segment.by && segment.value !== null) params.set("segment", segment.value);
  return params;
}

// A report's query: one segment's figures, or (split) one report per value.
function reportParams(range, split = false) {
  if (split) return new URLSearchParams({ ...Object.fromEntries(pageQuery(range)), segment_by: segment.by });
  return segment.value === null ? new URLSearchParams({ from: range.from, to: range.to })
    : pageQuery(range);
}

function segmentFromQuery() {
  const query = new URLSearchParams(location.search);
  segment.by = query.get("segment_by") || "";
  segment.value = segment.by && query.has("segment") ? query.get("segment") : null;
}

function renderSegmentChoice(attributes) {
  const names = Object.keys(attributes.attributes);
  if (segment.by && !names.includes(segment.by)) names.push(segment.by);
  const by = $("segment-by");
  by.replaceChildren(el("option", { value: "", text: "All customers" }), ...names.map((name) =>
    el("option", { value: name, text: `by ${name.replace(/^customer\./, "")}` })));
  by.value = segment.by;
  const values = Object.keys(attributes.attributes[segment.by] || {});
  if (segment.value && !values.includes(segment.value)) values.push(segment.value);
  $("segment-value").replaceChildren(el("option", { value: "*", text: "compare all" }),
    ...values.map((v) => el("option", { value: v, text: v })),
    el("option", { value: "", text: "(not set)" }));
  $("segment-value").value = segment.value === null ? "*" : segment.value;
  $("segment-value-label").hidden = !segment.by;
}

function segmentFromForm() {
  segment.by = $("segment-by").value;
  const value = $("segment-value").value;
  segment.value = !segment.by || value === "*" ? null : value;
}

function renderSegments(split) {
  $("segments-panel").hidden = !split;
  if (!split) return;
  $("segments-by").textContent = `${split.segment_by}: every figure for the customers of each value`;
  table("segments", [
    { title: "Segment", kind: "text", get: (r) => r.value ?? "(not set)" },
    { title: "Contacts", field: "contacts", kind: "count" },
    { title: "Deflection", field: "deflection_rate", kind: "rate" },
    { title: "True deflection", field: "true_deflection_rate", kind: "rate" },
    { title: "Abandonment", field: "abandonment_rate", kind: "rate" },
    { title: "Service level", field: "service_level", kind: "rate" },
    { title: "CSAT", field: "csat", kind: "csat" },
    { title: "NPS", field: "nps", kind: "nps" },
    { title: "Survey response", field: "survey_response_rate", kind: "rate" },
  ], split.segments.map((s) => ({ key: s.value ?? "", value: s.value, ...s.totals })));
}

// Figures by an attribute asked for the first time take a while to prepare: the API answers
// 202 with its progress (days ready of the days to do) until they are ready.
const preparing = new Map();  // report path -> its latest progress
let loads = 0;  // the page's loads so far: an earlier one stops asking
class Superseded extends Error {}

async function fetchPrepared(path, token) {
  const load = loads;
  try {
    for (;;) {
      const response = await fetch(path, {
        headers: { Authorization: `Bearer ${token}`, Prefer: "respond-async" } });
      if (response.status !== 202) return await readJson(response);
      if (load !== loads) throw new Superseded();
      preparing.set(path, await response.json());
      showPreparing();
      const wait = Number(response.headers.get("Retry-After")) || 1;
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
  } finally {
    preparing.delete(path);
    showPreparing();
  }
}

function showPreparing() {
  const all = [...preparing.values()];
  $("segment-progress").hidden = !all.length;
  if (!all.length) return;
  const least = all.reduce((a, b) => (a.days_done / a.days_to_do <= b.days_done / b.days_to_do ? a : b));
  $("segment-progress-text").textContent = `Preparing figures by ${least.segment_by.replace(/^customer\./, "")}: ` +
    `${least.days_done} of ${least.days_to_do} days`;
  $("segment-progress-bar").max = least.days_to_do;
  $("segment-progress-bar").value = least.days_done;
  $("segments-panel").hidden = true;  // what it shows is of the earlier choice
  setStatus("");
  showDashboard();
}

// The matrix as the API's CSV, saved under the name the API gives it.
async function downloadMatrix() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(`/api/reports/matrix.csv?${reportParams(currentRange)}`,
    { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    setStatus(`The CSV could not be made: HTTP ${response.status}`, true);
    return;
  }
  const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
  const link = el("a", { href: URL.createObjectURL(await response.blob()),
    download: name ? name[1] : "touchpoint-matrix.csv" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

let currentRange = null;
const heatmap = createHeatmap($("heatmap"), { download: downloadMatrix });
const flow = createFlow($("flow"));

async function fetchJson(path, token) {
  return readJson(await fetch(path, { headers: { Authorization: `Bearer ${token}` } }));
}

async function readJson(response) {
  if (response.status === 401 || response.status === 403) {
    throw new Unauthorized((await response.json()).error);
  }
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function load(range) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin("");
  setStatus("Loading…");
  currentRange = range;
  loads += 1;
  try {
    const [summary, matrix, journeys, trend, candidates] = await Promise.all(
      ["summary", "matrix", "journeys", "trend", "candidates"].map(
        (n) => fetchReport(n, range, token)));
    const splitting = segment.by && segment.value === null
      ? fetchReport("summary", range, token, true) : null;
    splitting?.catch(() => null);  // handled where it is awaited, below
    const attributes = await fetchJson(`/api/reports/attributes?${new URLSearchParams(range)}`, token);
    showDashboard();
    render(summary, matrix, journeys, trend, candidates);
    renderSegmentChoice(attributes);
    setStatus("");
    refreshQueues();
    loadExperiments(range, token);
    loadUnrecognised(range, token);
    loadAgents(range, token);
    loadSavedReplies(range, token);
    renderSegments(await splitting);  // the split may still be being prepared
  } catch (error) {
    if (error instanceof Superseded) return;
    if (error instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(`That token was not accepted: ${error.message}`);
    }
    showDashboard();
    setStatus(error.message, true);
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showLogin(message) {
  $("login-view").hidden = false;
  $("dashboard").hidden = true;
  $("window-form").hidden = true;
  $("login-error").textContent = message;
  $("token").focus();
}

function showDashboard() {
  $("login-view").hidden = true;
  $("dashboard").hidden = false;
  $("window-form").hidden = false;
}

// ---- the queues now (refreshed while the page is open) ----------------------------------------

const QUEUES_EVERY_MS = 10000;
let queuesTimer = null;

async function refreshQueues() {
  clearTimeout(queuesTimer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token || $("dashboard").hidden) return;
  try {
    renderQueues(await fetchJson("/api/queues", token));
  } catch (error) {
    $("queues-as-of").textContent = `not updated: ${error.message}`;
  }
  try {
    renderOutbox(await fetchJson("/api/outbox", token));
  } catch (error) {
    $("outbox-as-of").textContent = `not updated: ${error.message}`;
  }
  queuesTimer = setTimeout(refreshQueues, QUEUES_EVERY_MS);
}

// What waits to go out through Twilio and the chat, and what failed for good (/api/outbox).
function renderOutbox(outbox) {
  $("outbox-depth").textContent = format(outbox.depth, "count");
  $("outbox-retrying").textContent = format(outbox.retrying, "count");
  $("outbox-oldest").textContent = outbox.depth ? format(outbox.oldest_queued_s, "seconds") : "–";
  $("outbox-failed").textContent = format(outbox.last_24h.failed, "count");
  table("outbox-failures", [
    { title: "Failed at", get: (f) => new Date(f.at * 1000).toLocaleString(), kind: "text" },
    { title: "Channel", field: "channel", kind: "text" },
    { title: "What", get: (f) => (f.action === "connect" ? "connecting the agent" : "agent text"),
      kind: "text" },
    { title: "Code", get: (f) => f.code || "", kind: "text" },
    { title: "Why", field: "reason", kind: "text" },
  ], outbox.recent_failures.map((f) => ({ key: f.message_id, ...f })));
  $("outbox-as-of").textContent = `as of ${new Date(outbox.as_of).toLocaleTimeString()}, ` +
    `every ${QUEUES_EVERY_MS / 1000} s`;
}

function renderQueues(now) {
  const rows = Object.entries(now.queues).map(([key, q]) => ({ key, ...q }));
  table("queues", [
    { title: "Queue", field: "label", kind: "text" },
    { title: "Waiting", field: "waiting", kind: "count" },
    { title: "Longest wait", field: "longest_wait_s", kind: "seconds" },
  ], rows);
  $("agents-available").textContent = now.agents_available;
  $("queues-as-of").textContent = `as of ${new Date(now.as_of).toLocaleTimeString()}, ` +
    `every ${QUEUES_EVERY_MS / 1000} s`;
}

// ---- rendering ----------------------------------------------------------------------------

function render(summary, matrix, journeys, trend, candidates) {
  const labels = Object.fromEntries(matrix.rows.map((r) => [r.contact_type, r.label]));
  renderHeadline(summary);
  renderTrend(trend);
  renderReasons(summary.escalation_reasons);
  renderChannels(summary.by_channel);
  renderMatrix(matrix.rows);
  heatmap.show(matrix);
  flow.show(journeys, labels);
  renderCandidates(candidates);
  renderJourneys(journeys.journeys, labels);
  renderDropouts(journeys.dropouts, labels);
  renderDefinitions(summary);
}

function renderHeadline(summary) {
  const cards = HEADLINE.map((metric) => {
    const value = summary.totals[metric.key];
    const swatch = metric.series
      ? el("span", { class: "swatch", style: `background: var(--s${metric.series})` }) : "";
    return el("div", { class: "metric", "data-metric": metric.key },
      el("p", { class: "label" }, swatch, metric.label),
      el("p", { class: "value", "data-value": JSON.stringify(value), text: format(value, metric.kind) }),
      el("p", { class: "detail", text: metric.detail.replace("{s}", summary.service_level_s)
        .replace("{sent}", summary.totals.surveys_sent)
        .replace("{completed}", summary.totals.callbacks_completed) }));
  });
  $("headline").replaceChildren(...cards);
}

function tickLabel(start, bucket) {
  return bucket === "hour" ? start.slice(11, 16) : start.slice(5, 10);
}

function renderTrend(trend) {
  const points = trend.points;
  const [width, height, left, right, top, bottom] = [820, 260, 44, 12, 12, 28];
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const x = (i) => left + (points.length === 1 ? plotW / 2 : (i * plotW) / (points.length - 1));
  const y = (rate) => top + plotH * (1 - rate);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Headline rates per time bucket", "data-points": points.length });
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(tick), y2: y(tick) }),
      svg("text", { class: "tick", x: left - 6, y: y(tick) + 4, "text-anchor": "end",
        text: `${tick * 100}%` }));
  }
  const most = Math.max(1, ...points.map((p) => p.contacts));
  const barW = Math.max(2, Math.min(24, plotW / points.length - 2));
  points.forEach((p, i) => {
    const barH = (plotH * p.contacts) / most;
    chart.append(svg("rect", { class: "volume", x: x(i) - barW / 2, y: top + plotH - barH,
      width: barW, height: barH, fill: "#e6e9f0", "data-contacts": p.contacts },
      svg("title", { text: `${p.start}: ${p.contacts} contacts` })));
  });
  const every = Math.ceil(points.length / 10);
  points.forEach((p, i) => {
    if (i % every === 0) {
      chart.append(svg("text", { class: "tick", x: x(i), y: height - 8, "text-anchor": "middle",
        text: tickLabel(p.start, trend.bucket) }));
    }
  });
  for (const series of SERIES) chart.append(trendLine(points, series, x, y));
  $("trend-chart").replaceChildren(chart);
  $("trend-bucket").textContent = `per ${trend.bucket}; bars: contacts`;
  $("trend-legend").replaceChildren(...SERIES.map((s) => el("li", {},
    el("span", { style: `background: var(--s${s.series})` }), s.label)));
}

function trendLine(points, series, x, y) {
  const colour = `var(--s${series.series})`;
  const group = svg("g", { "data-series": series.key });
  let path = "";
  let pen = "M";
  points.forEach((p, i) => {
    const value = p[series.key];
    if (value === null) { pen = "M"; return; }
    path += `${pen}${x(i).toFixed(1)},${y(value).toFixed(1)} `;
    pen = "L";
    group.append(svg("circle", { cx: x(i), cy: y(value), r: 3.5, fill: colour, "data-value": value },
      svg("title", { text: `${series.label} ${p.start}: ${formatRate(value)}` })));
  });
  group.prepend(svg("path", { d: path.trim(), fill: "none", stroke: colour, "stroke-width": 2 }));
  return group;
}

function renderReasons(reasons) {
  const entries = Object.entries(reasons).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const [width, row, labelW] = [420, 28, 150];
  const height = Math.max(1, entries.length) * row + 8;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Escalations by reason", "data-bars": entries.length });
  if (!entries.length) {
    chart.append(svg("text", { class: "empty", x: 0, y: 20, text: "No escalations in this window." }));
  }
  const most = Math.max(1, ...entries.map(([, n]) => n));
  entries.forEach(([reason, count], i) => {
    const barW = ((width - labelW - 40) * count) / most;
    chart.append(
      svg("text", { class: "bar-label", x: 0, y: i * row + 19, text: reason }),
      svg("rect", { x: labelW, y: i * row + 6, width: Math.max(barW, 2), height: row - 10, rx: 3,
        fill: "var(--s4)", "data-reason": reason, "data-count": count }),
      svg("text", { class: "bar-count", x: labelW + barW + 6, y: i * row + 19, text: count }));
  });
  $("reasons-chart").replaceChildren(chart);
}

function table(id, columns, rows) {
  const head = el("thead", {}, el("tr", {}, ...columns.map((c) =>
    el("th", { class: c.kind === "text" ? "text" : "", scope: "col", text: c.title }))));
  const body = el("tbody", {}, ...rows.map((row) => el("tr", { "data-key": row.key ?? "" },
    ...columns.map((c) => {
      const value = c.get ? c.get(row) : row[c.field];
      const text = c.kind === "text" ? value : format(value, c.kind);
      return el("td", { class: `${c.kind === "text" ? "text" : ""} ${value === null ? "none" : ""}`,
        "data-field": c.field || c.title, text });
    }))));
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: columns.length, class: "text none",
      text: "Nothing in this window." })));
  }
  $(id).replaceChildren(head, body);
}

function renderChannels(byChannel) {
  table("channels", [
    { title: "Channel", field: "key", kind: "text" },
    { title: "Contacts", field: "contacts", kind: "count" },
    { title: "Deflection", field: "deflection_rate", kind: "rate" },
    { title: "True defl.", field: "true_deflection_rate", kind: "rate" },
    { title: "Containment", field: "containment_rate", kind: "rate" },
    { title: "Abandonment", field: "abandonment_rate", kind: "rate" },
    { title: "Service level", field: "service_level", kind: "rate" },
  ], Object.entries(byChannel).map(([key, figures]) => ({ key, ...figures })));
}

// The matrix's survey columns: each figure for self-service and for agents.
const SURVEY_SPLIT = [
  ["CSAT self-service", "csat", "csat", "self_service"], ["CSAT agent", "csat", "csat", "agent"],
  ["NPS self-service", "nps", "nps", "self_service"], ["NPS agent", "nps", "nps", "agent"],
  ["Survey response self-service", "survey_response_rate", "rate", "self_service"],
  ["Survey response agent", "survey_response_rate", "rate", "agent"],
];

function renderMatrix(rows) {
  table("matrix", [
    { title: "Contact type", field: "label", kind: "text" },
    { title: "Channel", field: "channel", kind: "text" },
    { title: "Contacts", field: "contacts", kind: "count" },
    { title: "Self-service offered", field: "self_service_offered", kind: "count" },
    { title: "Resolved in self-service", field: "self_service_resolved", kind: "count" },
    { title: "False deflections", field: "false_deflections", kind: "count" },
    { title: "Escalated", field: "escalated", kind: "count" },
    { title: "Abandoned", field: "abandoned", kind: "count" },
    { title: "True deflection", field: "true_deflection_rate", kind: "rate" },
    { title: "Median resolution", field: "median_resolution_s", kind: "seconds" },
    ...SURVEY_SPLIT.map(([title, field, kind, who]) => (
      { title, field: `${field}.${who}`, kind, get: (r) => r.by_handling[who][field] })),
  ], rows.map((r) => ({ key: `${r.contact_type}/${r.channel}`, ...r })));
}

function renderCandidates(report) {
  table("candidates", [
    { title: "Rank", field: "rank", kind: "count" },
    { title: "Contact type", field: "label", kind: "text" },
    { title: "Agent handled", field: "agent_handled", kind: "count" },
    { title: "Agent minutes", field: "agent_minutes", kind: "minutes" },
    { title: "Self-service success", field: "success", kind: "rate" },
    { title: "False deflection", field: "false_deflection", kind: "rate" },
    { title: "CSAT gap", field: "csat_gap", kind: "gap" },
    { title: "Risk", field: "risk", kind: "rate" },
    { title: "Score", field: "score", kind: "minutes" },
  ], report.rows.map((r) => ({ key: r.contact_type, ...r })));
  report.rows.forEach((r) => {
    if (!r.success_estimated) return;
    const cell = $("candidates").querySelector(`tr[data-key="${r.contact_type}"] td[data-field="success"]`);
    cell.textContent += " (est.)";
    cell.title = "never offered self-service: the rate of all types";
  });
  $("candidates-formula").textContent = report.formula;
}

function renderJourneys(journeys, labels) {
  const items = journeys.map((j) => {
    const steps = el("span", { class: "steps" });
    j.steps.forEach((step, i) => {
      if (i) steps.append(el("span", { class: "arrow", "aria-hidden": "true", text: "→" }));
      steps.append(el("span", { class: "step", "data-handling": step.split(":")[1], text: step }));
    });
    return el("li", { "data-path": `${j.contact_type}|${j.path}` },
      el("div", {}, el("span", { class: "type", text: labels[j.contact_type] || j.contact_type }), steps),
      el("span", { class: "count", text: j.journeys }));
  });
  if (!items.length) items.push(el("li", { class: "empty-note", text: "No journeys in this window." }));
  $("journeys").replaceChildren(...items);
}

function renderDropouts(dropouts, labels) {
  table("dropouts", [
    { title: "Contact type", kind: "text", get: (r) => labels[r.contact_type] || r.contact_type },
    { title: "Channel", field: "channel", kind: "text" },
    { title: "Step", field: "step", kind: "text" },
    { title: "Exit", field: "exit", kind: "text" },
    { title: "Contacts", field: "contacts", kind: "count" },
  ], dropouts);
}

function renderDefinitions(summary) {
  $("metric-version").textContent = summary.metric_version;
  $("definitions").replaceChildren(...Object.entries(summary.definitions).flatMap(([name, text]) =>
    [el("dt", { text: name }), el("dd", { text })]));
  $("footnote").textContent = `Metric version ${summary.metric_version} · contacts that started `
    + `from ${summary.from} to ${summary.to} (exclusive) · as of ${summary.as_of}`;
}

// ---- experiments and the canary (/api/reports/experiments) ------------------------------------

async function loadExperiments(range, token) {
  try {
    renderExperiments(await fetchReport("experiments", range, token));
  } catch (error) {
    $("experiments").replaceChildren(el("p", { class: "empty-note",
      text: `Experiments not shown: ${error.message}` }));
  }
}

const ARM_COLUMNS = [
  { title: "Contacts", field: "contacts", kind: "count" },
  { title: "True deflection", field: "true_deflection_rate", interval: "true_deflection_interval",
    kind: "rate" },
  { title: "Escalation", field: "escalation_rate", interval: "escalation_interval", kind: "rate" },
  { title: "False deflection", field: "false_deflection_rate",
    interval: "false_deflection_interval", kind: "rate" },
  { title: "CSAT", field: "csat", interval: "csat_interval", kind: "csat" },
];

function formatInterval(bounds, kind) {
  if (!bounds) return "";
  const [low, high] = kind === "rate" ? bounds.map((b) => (b * 100).toFixed(1)) :
    bounds.map((b) => b.toFixed(2));
  return `${low}–${high}${kind === "rate" ? "%" : ""}`;
}

// A figure with its 95% interval drawn under it on a 0-100% (or 1-5) scale.
function figureCell(arm, column, key) {
  const value = arm[column.field];
  const cell = el("td", { "data-field": column.field, class: value === null ? "none" : "" },
    el("span", { class: "figure", text: format(value, column.kind) }));
  if (!column.interval) return cell;
  const bounds = arm[column.interval];
  cell.append(el("span", { class: "interval", "data-field": column.interval,
    text: formatInterval(bounds, column.kind) }));
  if (bounds) {
    const [low, high] = column.kind === "rate" ? [0, 1] : [1, 5];
    const x = (v) => 2 + 96 * Math.min(1, Math.max(0, (v - low) / (high - low)));
    cell.append(svg("svg", { class: "ci", viewBox: "0 0 100 8", "aria-hidden": "true",
      "data-arm": key },
      svg("line", { class: "ci-track", x1: 2, x2: 98, y1: 4, y2: 4 }),
      svg("line", { class: "ci-range", x1: x(bounds[0]), x2: x(bounds[1]), y1: 4, y2: 4 }),
      svg("circle", { class: "ci-point", cx: x(value), cy: 4, r: 2.6 })));
  }
  return cell;
}

function armTable(rows, caption, lastTitle = "Verdict") {
  const widths = [11, 11, 8, 14, 14, 14, 14, 14];
  const columns = el("colgroup", {}, ...widths.map((w) => el("col", { style: `width: ${w}%` })));
  const head = el("thead", {}, el("tr", {},
    el("th", { class: "text", scope: "col", text: "Arm" }),
    el("th", { class: "text", scope: "col", text: "Does" }),
    ...ARM_COLUMNS.map((c) => el("th", { scope: "col", text: c.title })),
    el("th", { class: "text", scope: "col", text: lastTitle })));
  const body = el("tbody", {}, ...rows.map(({ key, name, does, arm, verdict }) =>
    el("tr", { "data-key": key },
      el("td", { class: "text", "data-field": "arm" }, el("strong", { text: name })),
      el("td", { class: "text muted", "data-field": "treatment", text: does }),
      ...ARM_COLUMNS.map((c) => figureCell(arm, c, key)),
      el("td", { class: "text", "data-field": "verdict" }, verdict))));
  return el("div", { class: "scroll" },
    el("table", { class: "figures arms", "aria-label": caption }, columns, head, body));
}

// The canary's guardrails in a word: tripped, holding, or waiting for contacts.
function guardBadge(canary) {
  const tripped = canary.guardrails.some((g) => g.tripped);
  const judged = canary.guardrails.some((g) => g.judged);
  const word = tripped ? "tripped" : judged ? "holding" : "waiting for contacts";
  return el("span", { class: "verdict", "data-verdict": { tripped: "worse", holding: "better" }[word]
    || "not enough data yet", text: word });
}

function verdictBadge(judged) {
  if (!judged) return el("span", { class: "verdict control", text: "control" });
  return el("span", { class: "verdict", "data-verdict": judged.verdict, title: judged.reason,
    text: judged.verdict });
}

function renderExperiments(report) {
  const blocks = report.experiments.map((x) => el("div", { class: "experiment",
    "data-experiment": x.experiment },
    el("h3", {}, x.experiment, el("span", { class: "sub",
      text: ` · ${x.contact_type} · control ${x.control} · verdicts after ${x.min_contacts} ` +
        "contacts per arm" })),
    armTable(x.arms.map((a) => ({ key: `${x.experiment}/${a.arm}`, name: a.arm,
      does: a.treatment, arm: a, verdict: verdictBadge(a.verdict) })), x.experiment)));
  if (report.canary) blocks.push(canaryBlock(report.canary));
  if (!blocks.length) {
    blocks.push(el("p", { class: "empty-note", text: "No experiments in experiments.yaml and " +
      "no canary yet." }));
  }
  $("experiments").replaceChildren(...blocks);
  $("experiments-rule").textContent = report.definitions.verdict;
}

function canaryBlock(canary) {
  const state = canary.state.replace("_", " ");
  const since = new Date(canary.started_at).toLocaleString();
  const guards = canary.guardrails.map((g) => el("li", { "data-guardrail": g.guardrail,
    "data-state": g.tripped ? "tripped" : g.judged ? "holds" : "waiting" },
    el("code", { text: g.guardrail }), " ",
    g.tripped ? "tripped" : g.judged ? "holds" : `judged after ${canary.min_contacts} contacts`,
    g.change === null ? "" : ` (change ${g.change > 0 ? "+" : ""}${g.change.toFixed(3)})`));
  return el("div", { class: "experiment canary", "data-canary": canary.id,
    "data-state": canary.state },
    el("h3", {}, `Canary ${canary.id}`, el("span", { class: "state", text: state }),
      el("span", { class: "sub", text: ` · v${canary.version} on ` +
        `${Math.round(canary.share * 100)}% of new contacts since ${since}` })),
    canary.end_reason ? el("p", { class: "why", text: `Why: ${canary.end_reason}` }) : "",
    armTable(["canary", "stable"].map((name) => ({ key: `canary/${name}`, name,
      does: name === "canary" ? `v${canary.version}` : "rules in force",
      arm: canary.arms[name], verdict: name === "canary" ? guardBadge(canary)
        : el("span", { class: "verdict control", text: "reference" }) })),
    `Canary ${canary.id}`, "Guardrails"),
    el("ul", { class: "guardrails" }, ...guards));
}

// ---- unrecognised traffic (/api/reports/unrecognised) -----------------------------------------

const UNRECOGNISED_HOW = [["Refused", "refused"], ["Clarified", "clarified"],
  ["Escalated", "escalated"], ["Corrected", "corrected"]];

async function loadUnrecognised(range, token) {
  $("unrecognised-note").textContent = "Loading…";
  try {
    renderUnrecognised(await fetchReport("unrecognised", range, token));
  } catch (error) {
    $("unrecognised-note").textContent = `Unrecognised traffic not loaded: ${error.message}`;
  }
}

function renderUnrecognised(report) {
  const head = el("thead", {}, el("tr", {},
    el("th", { class: "text", scope: "col", text: "Cluster" }),
    ...["Messages", "Contacts", ...UNRECOGNISED_HOW.map(([title]) => title)].map(
      (title) => el("th", { scope: "col", text: title })),
    el("th", { class: "text", scope: "col", text: "Agents chose" }),
    el("th", { class: "text", scope: "col", text: "Customers said" })));
  const rows = report.clusters.map((c) => el("tr", { "data-key": c.id },
    el("td", { class: "text id", "data-field": "id", text: c.id }),
    el("td", { "data-field": "messages", text: format(c.messages, "count") }),
    el("td", { "data-field": "contacts", text: format(c.contacts, "count") }),
    ...UNRECOGNISED_HOW.map(([, how]) => el("td", {
      class: c.how[how] ? "" : "none", "data-field": how, text: format(c.how[how], "count") })),
    el("td", { class: `text ${c.agent_types.length ? "" : "none"}`, "data-field": "agent_types",
      text: c.agent_types.map((t) => `${t.label} (${t.contacts})`).join(", ") || "–" }),
    el("td", { class: "text examples", "data-field": "examples" },
      el("ul", {}, ...c.examples.map((text) => el("li", { text: `“${text}”` })),
        ...(c.distinct_texts > c.examples.length
          ? [el("li", { class: "more", text: `and ${c.distinct_texts - c.examples.length} more` })]
          : [])))));
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 9, class: "text none",
      text: "Nothing unrecognised in this window." })));
  }
  $("unrecognised").replaceChildren(head, el("tbody", {}, ...rows));
  const how = report.similarity;
  const shown = report.clusters_total > report.clusters.length
    ? ` · the ${report.clusters.length} largest of ${report.clusters_total} clusters` : "";
  $("unrecognised-note").replaceChildren(`${report.messages} messages${shown} · clustered by ` +
    `${how.method === "encoder" ? "sentence embeddings" : "n-gram TF-IDF"}, similarity ≥ ` +
    `${how.threshold} · turn a cluster into training examples: `,
  el("code", { text: "switchboard unrecognised adopt CLUSTER --type TYPE [--new]" }));
}

// ---- agents (/api/reports/agents; ops_agents.js) -------------------------------------------

let agentsPanel = null;

async function loadAgents(range, token) {
  agentsPanel ??= createAgentsPanel($("agents"));
  $("agents-note").textContent = "Loading…";
  try {
    agentsPanel.render(await fetchJson(`/api/reports/agents?${new URLSearchParams(range)}`, token));
    $("agents-note").textContent = "Each figure counts what happened in the window: offers when " +
      "made, contacts when wrapped up (CSAT: their answers). Click a heading to sort.";
  } catch (error) {
    $("agents-note").textContent = `Agents not loaded: ${error.message}`;
  }
}

// ---- saved replies (/api/reports/saved-replies) -------------------------------------------

async function loadSavedReplies(range, token) {
  $("saved-replies-note").textContent = "Loading…";
  try {
    renderSavedReplies(await fetchJson(`/api/reports/saved-replies?${new URLSearchParams(range)}`, token));
  } catch (error) {
    $("saved-replies-note").textContent = `Saved replies not loaded: ${error.message}`;
  }
}

function renderSavedReplies(report) {
  const head = el("thead", {}, el("tr", {},
    el("th", { class: "text", scope: "col", text: "Saved reply" }),
    ...["Times used", "Agents", "Edited before sending"].map(
      (title) => el("th", { scope: "col", text: title }))));
  const rows = report.replies.map((r) => el("tr", { "data-key": r.id },
    el("td", { class: "text", "data-field": "title" },
      r.title ?? "(no longer in replies.yaml)", " ", el("span", { class: "none", text: r.id })),
    el("td", { class: r.uses ? "" : "none", "data-field": "uses", text: format(r.uses, "count") }),
    el("td", { class: r.uses ? "" : "none", "data-field": "agents", text: format(r.agents, "count") }),
    el("td", { class: r.uses ? "" : "none", "data-field": "edited_share",
      text: format(r.edited_share, "rate") })));
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 4, class: "text none",
      text: "No saved replies (replies.yaml) and none sent in this window." })));
  }
  $("saved-replies").replaceChildren(head, el("tbody", {}, ...rows));
  $("saved-replies-note").textContent = "A message counts when an agent inserted the reply and " +
    "sent it; edited: its words differed from the reply as filled in for the customer. " +
    "Often used and seldom edited: a good candidate to answer in self-service.";
}

// ---- start --------------------------------------------------------------------------------

function start() {
  takeTokenFromFragment();
  segmentFromQuery();
  let range = initialRange();
  showRange(range);
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    load(range);
  });
  $("window-form").addEventListener("submit", (event) => {
    event.preventDefault();
    range = rangeFromForm();
    segmentFromForm();
    history.replaceState(null, "", `?${pageQuery(range)}`);
    load(range);
  });
  $("segment-by").addEventListener("change", () => {
    $("segment-value").value = "*";
    $("window-form").requestSubmit();
  });
  $("segment-value").addEventListener("change", () => $("window-form").requestSubmit());
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(queuesTimer);
    showLogin("");
  });
  load(range);
}

start();
